"""A model with a chat template sees a prompt as the same tokens in every stage (docs/ML.md, "Chat templates"):
CD generation, plain generation, the implicit-reward scoring, SFT/DPO data building and evaluation's sampling all
wrap the prompt as one user turn with the generation prompt, the ids of ml.cd_prompts.encode_prompt.

The stages run for real on tiny saved models whose tokenizer carries a template; the reference ids come from the
template rendered as text and tokenized here. Where a stage keeps only its output (generation, sampling), the
output is checked against what the model does from the reference ids, and the bare prompt is checked to give a
different answer, so a stage that skipped the template would fail."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ml.contrastive import CDConfig
from ml.io import read_jsonl, write_jsonl
from ml.reporter import RecordingReporter
from ml.scoring import encode_pairs, implicit_rewards_from_ids
from ml.stages._train import encode_pair, sample_responses
from ml.stages.generate import CDGenerateConfig, PlainGenerateConfig, cd_generate, plain_generate
from ml.stages.sft import SFTStageConfig, load_encoded_pairs

from ._stage_fixtures import save_tiny

TEMPLATE = (
    "{% for m in messages %}tell me about {{ m['content'] }}{% endfor %}"
    "{% if add_generation_prompt %} please{% endif %}"
)
PROMPT = "the cat"
TEMPLATED = "tell me about the cat please"  # TEMPLATE rendered for PROMPT, as text
DECODING = dict(do_sample=False, max_new_tokens=6, batch_size=2, use_chat_template=True)


@pytest.fixture(scope="module")
def chat_pair(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("chat_pair")
    out = {}
    for name, seed in (("aligned", 1), ("base", 0)):
        path = save_tiny(Path(root) / name, seed=seed)
        tok = AutoTokenizer.from_pretrained(path)
        tok.chat_template = TEMPLATE
        tok.save_pretrained(path)
        out[name] = path
    return out


@pytest.fixture(scope="module")
def loaded(chat_pair):
    tok = AutoTokenizer.from_pretrained(chat_pair["aligned"])
    assert tok.chat_template == TEMPLATE  # saved with the folder, as a real chat model's is
    models = {k: AutoModelForCausalLM.from_pretrained(v).eval() for k, v in chat_pair.items()}
    return tok, models


def _ids(tok, text: str) -> list[int]:
    return list(tok(text)["input_ids"])


def _greedy(model, tok, ids: list[int], n: int) -> list[int]:
    out = model.generate(
        torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long), max_new_tokens=n,
        do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
    )  # fmt: skip
    return out[0, len(ids) :].tolist()


def _prompts(tmp_path) -> str:
    path = tmp_path / "prompts.jsonl"
    write_jsonl(path, [{"prompt": PROMPT}])
    return str(path)


def test_the_reference_is_not_the_bare_prompt(loaded):
    tok, models = loaded
    templated, bare = _ids(tok, TEMPLATED), _ids(tok, PROMPT)
    assert templated != bare
    # What makes the stage checks below discriminating: the model answers the two differently.
    assert _greedy(models["aligned"], tok, templated, 6) != _greedy(models["aligned"], tok, bare, 6)


def test_cd_generation_scores_its_response_after_the_templated_prompt(chat_pair, loaded, tmp_path):
    tok, models = loaded
    cfg = CDGenerateConfig(
        aligned=chat_pair["aligned"],
        base=chat_pair["base"],
        prompts=_prompts(tmp_path),
        output_dir=str(tmp_path / "cd"),
        device="cpu",
        cd=CDConfig(**DECODING),
    )
    cd_generate(cfg, RecordingReporter())
    (row,) = read_jsonl(tmp_path / "cd" / "samples.jsonl")
    response = row["token_ids"]

    def reward(prompt_ids):
        return implicit_rewards_from_ids(aligned=models["aligned"], base=models["base"], pairs=[(prompt_ids, response)])

    assert row["implicit_reward_sum"] == pytest.approx(reward(_ids(tok, TEMPLATED))[0]["sum"], abs=1e-4)
    assert row["implicit_reward_sum"] != pytest.approx(reward(_ids(tok, PROMPT))[0]["sum"], abs=1e-4)


def test_plain_generation_samples_after_the_templated_prompt(chat_pair, loaded, tmp_path):
    tok, models = loaded
    cfg = PlainGenerateConfig(
        model=chat_pair["aligned"], prompts=_prompts(tmp_path), output_dir=str(tmp_path / "plain"), device="cpu",
        sampling=CDConfig(**DECODING, repetition_penalty=1.0),  # the reference below is generate's, with no penalty
    )  # fmt: skip
    plain_generate(cfg, RecordingReporter())
    (row,) = read_jsonl(tmp_path / "plain" / "samples.jsonl")
    expected = _greedy(models["aligned"], tok, _ids(tok, TEMPLATED), DECODING["max_new_tokens"])
    assert row["token_ids"] == expected[: len(row["token_ids"])] and row["token_ids"]


def test_evaluation_and_self_sampling_sample_after_the_templated_prompt(loaded):
    tok, models = loaded
    (texts,) = sample_responses(models["aligned"], tok, [PROMPT], n=1, do_sample=False, max_new_tokens=6)
    expected = _greedy(models["aligned"], tok, _ids(tok, TEMPLATED), 6)
    assert texts[0] == tok.decode(expected, skip_special_tokens=True).strip()


def test_sft_and_dpo_data_start_with_the_templated_prompt(chat_pair, loaded, tmp_path):
    tok, _ = loaded
    data = tmp_path / "pairs.jsonl"
    write_jsonl(data, [{"prompt": PROMPT, "response": "good a"}])
    cfg = SFTStageConfig(model=chat_pair["aligned"], data=str(data), output_dir=str(tmp_path / "sft"), device="cpu")
    _, _, encoded, _ = load_encoded_pairs(cfg, "sft", RecordingReporter())
    assert [p for p, _ in encoded] == [_ids(tok, TEMPLATED)]
    # DPO (and weak_align, WSPO) encode each side with the same function as SFT's data.
    chosen_prompt, _ = encode_pair(tok, PROMPT, "good a", use_chat_template=True, max_length=512)
    assert chosen_prompt == _ids(tok, TEMPLATED)
    # Scoring (the DPO filter, evaluation's implicit reward): the same prompt ids before the response.
    ((scored_prompt, _),) = encode_pairs(tok, [PROMPT], ["good a"], use_chat_template=True)
    assert scored_prompt == _ids(tok, TEMPLATED)
