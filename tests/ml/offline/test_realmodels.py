"""Checks on the converted real models (skipped unless `python -m ml models install-offline` ran)."""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.realmodels, pytest.mark.slow]


def _greedy(folder, prompt: str, n: int = 16) -> str:
    from ml.contrastive import encode_prompt
    from ml.modeling import load_causal_lm, load_tokenizer

    tok, model = load_tokenizer(folder), load_causal_lm(folder, device="cpu", dtype="float32")
    ids = encode_prompt(tok, prompt, use_chat_template=True)
    with torch.inference_mode():
        out = model.generate(
            input_ids=torch.tensor([ids]), max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id
        )
    return tok.decode(out[0, len(ids) :], skip_special_tokens=True)


def test_converted_models_answer_and_differ_in_family(offline_models):
    from ml.modeling import load_tokenizer, vocab_fingerprint

    torch.set_num_threads(1)
    assert "Paris" in _greedy(offline_models["smollm2_135m_instruct"], "What is the capital of France?")
    assert "Paris" in _greedy(offline_models["gemma3_270m_base"], "What is the capital of France?")
    small, strong = (load_tokenizer(offline_models[k]) for k in ("smollm2_135m_instruct", "gemma3_270m_base"))
    assert vocab_fingerprint(small) != vocab_fingerprint(strong)  # cross-family: CD needs the weak pair only
    assert "<|im_start|>" in small.chat_template and "Question:" in strong.chat_template


def test_manifest_describes_both(offline_models):
    from ml.offline import read_manifest

    m = read_manifest()
    assert m is not None
    assert m["models"]["smollm2_135m_instruct"]["chat_template_source"] == "gguf"
    assert m["models"]["gemma3_270m_base"]["chat_template_source"] == "congweb-minimal"
    assert m["models"]["gemma3_270m_base"]["verify"]["n_params"] > 2e8
