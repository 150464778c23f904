"""A model's context read from its folder (ml.modeling.context_length), and resolve's check that every stage's
token budget fits the context of each model it runs on (ml.budget): refused with the key path of the setting to
lower, exactly where the worker's own check would refuse every prompt."""

from __future__ import annotations

import json

import pytest

from ml.cd_config import CDConfig
from ml.contrastive import context_limit, prepare_rows
from ml.modeling import context_length, load_causal_lm
from ml.resolve import resolve
from ml.spec import SpecError
from ml.tiny import tiny_gpt2, word_tokenizer

WEAK = {"weak_base": ("wb", 16), "weak_aligned": ("wa", 16)}


def _errors(kind: str, params=None, contexts=None, **kw) -> dict[str, list[str]]:
    with pytest.raises(SpecError) as exc:
        resolve(kind, params, contexts=contexts, **kw)
    return exc.value.errors


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory):
    tok = word_tokenizer("the a cat sat".split())
    path = tmp_path_factory.mktemp("gpt2")
    tiny_gpt2(len(tok), n_layer=1, n_embd=8, n_head=1, n_positions=16).save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path, tok


# --- the reader -------------------------------------------------------------------------------------------------
def test_context_length_of_a_gpt2_folder_is_what_the_loaded_model_uses(gpt2_folder):
    path, _ = gpt2_folder
    assert json.loads((path / "config.json").read_text())["n_positions"] == 16
    assert context_length(path) == 16
    assert context_limit(load_causal_lm(path, device="cpu")) == 16  # the worker's limit: the same reading


def test_context_length_of_llama_and_gemma3_style_configs(tmp_path):
    from transformers import Gemma3Config, LlamaConfig

    LlamaConfig(max_position_embeddings=96, hidden_size=8, num_attention_heads=1).save_pretrained(tmp_path / "llama")
    assert context_length(tmp_path / "llama") == 96
    gemma = Gemma3Config()
    gemma.text_config.max_position_embeddings = 4096  # a multimodal config keeps it in its text_config
    gemma.save_pretrained(tmp_path / "gemma3")
    assert "max_position_embeddings" not in json.loads((tmp_path / "gemma3" / "config.json").read_text())
    assert context_length(tmp_path / "gemma3") == 4096


def test_context_length_is_none_when_unknown(tmp_path):
    assert context_length(tmp_path / "missing") is None
    (tmp_path / "config.json").write_text('{"model_type": "x", "n_positions": 0}')
    assert context_length(tmp_path) is None
    (tmp_path / "config.json").write_text("not json")
    assert context_length(tmp_path) is None


# --- the budgets at submit ---------------------------------------------------------------------------------------
def test_new_tokens_that_leave_no_room_for_a_prompt_are_refused_as_the_worker_would(gpt2_folder):
    _, tok = gpt2_folder
    errs = _errors("cd_generate", {"max_new_tokens": 16}, WEAK, alpha=0.4)
    assert list(errs) == ["params.max_new_tokens"]  # the knob the request gave
    assert errs["params.max_new_tokens"] == [
        "16 new tokens leave no room for a prompt in the context of weak_base 'wb' (16 positions); lower "
        "max_new_tokens to less than 16, by at least the length of the longest prompt"
    ]
    with pytest.raises(ValueError, match="exceeds the model's context of 16"):  # even the shortest prompt
        prepare_rows(tok, [""], CDConfig(max_new_tokens=16, use_chat_template=False), limit=16)
    spec = resolve("cd_generate", {"max_new_tokens": 15}, alpha=0.4, contexts=WEAK)
    assert spec["stages"]["cd_generate"]["max_new_tokens"] == 15
    assert len(prepare_rows(tok, [""], CDConfig(max_new_tokens=15, use_chat_template=False), limit=16)) == 1


def test_cut_prompts_count_max_prompt_tokens(gpt2_folder):
    _, tok = gpt2_folder
    params = {"cd_generate": {"max_new_tokens": 10, "max_prompt_tokens": 7}}
    errs = _errors("cd_generate", params, WEAK, alpha=0.4)
    assert errs == {
        "params.cd_generate.max_new_tokens": [
            "10 new + 7 prompt tokens (max_prompt_tokens) exceed the context of weak_base 'wb' (16 positions); "
            "lower max_new_tokens or max_prompt_tokens so that they add up to at most 16"
        ]
    }
    long = "the a cat sat the a cat sat"  # over 7 tokens: cut to 7, and 7 + 10 do not fit
    with pytest.raises(ValueError, match="exceeds the model's context of 16"):
        prepare_rows(tok, [long], CDConfig(max_new_tokens=10, max_prompt_tokens=7, use_chat_template=False), limit=16)
    resolve("cd_generate", {"cd_generate": {"max_new_tokens": 10, "max_prompt_tokens": 6}}, alpha=0.4, contexts=WEAK)


def test_a_default_over_the_context_is_keyed_by_the_stage_setting_to_change():
    # cd_generate's default max_new_tokens (256), and a dataset's recommendation: both are set per stage.
    errs = _errors("cd_generate", None, {"weak_base": ("wb", 256), "weak_aligned": ("wa", 256)}, alpha=0.4)
    assert list(errs) == ["params.cd_generate.max_new_tokens"] and "256 new tokens" in errs[next(iter(errs))][0]
    errs = _errors("cd_generate", None, WEAK, alpha=0.4, recommended={"max_new_tokens": 40})
    assert list(errs) == ["params.cd_generate.max_new_tokens"]


def test_the_smallest_context_decides_and_unknown_contexts_are_not_checked():
    errs = _errors("cd_generate", {"max_new_tokens": 20}, {"weak_base": ("wb", 64), "weak_aligned": ("wa", 16)})
    assert "weak_aligned 'wa' (16 positions)" in errs["params.max_new_tokens"][0]
    resolve("cd_generate", {"max_new_tokens": 4000}, contexts={"weak_base": ("wb", None), "weak_aligned": ("wa", None)})
    resolve("cd_generate", {"max_new_tokens": 4000})  # no contexts given (the migration's re-resolve): no check


def test_pipeline_budgets_follow_the_models_each_stage_runs_on():
    small_strong = {"weak_base": ("wb", 1024), "weak_aligned": ("wa", 1024), "strong": ("s", 256)}
    errs = _errors("cong", {"max_new_tokens": 32}, small_strong, methods=["cong_s"])
    # Training the strong model: sft's max_length (512 by default) must fit it.
    assert errs == {
        "params.sft.max_length": [
            "512 tokens exceed the context of strong 's' (256 positions); lower max_length to at most 256"
        ]
    }
    resolve("cong", {"max_new_tokens": 32, "sft": {"max_length": 256}}, methods=["cong_s"], contexts=small_strong)
    # The top-level max_new_tokens reaches CD (weak pair), self-sampling and evaluation (strong): keyed once, by
    # the knob, with a message per stage that does not fit.
    errs = _errors(
        "cong", {"max_new_tokens": 300, "sft": {"max_length": 256}, "dpo": {"max_length": 256}}, small_strong
    )
    assert list(errs) == ["params.max_new_tokens"] and len(errs["params.max_new_tokens"]) == 2
    assert all("strong 's' (256 positions)" in m for m in errs["params.max_new_tokens"])
    # weak_post's evaluation samples pi_post; strong_base's samples the strong model; no weak model generates.
    small_weak = {"weak_base": ("wb", 32), "weak_aligned": ("wa", 32), "strong": ("s", 1024)}
    errs = _errors("cong", {"max_new_tokens": 40}, small_weak, methods=["weak_post"])
    assert (
        list(errs) == ["params.max_new_tokens"]
        and "weak_aligned 'wa' (32 positions)" in errs["params.max_new_tokens"][0]
    )
    resolve("cong", {"max_new_tokens": 40}, methods=["strong_base"], contexts=small_weak)


def test_weak_align_preflight_and_evaluate_budgets():
    errs = _errors("weak_align", {"max_new_tokens": 64}, {"weak_base": ("wb", 64)})
    assert set(errs) == {"params.max_new_tokens", "params.weak_align.max_length"}
    errs = _errors("preflight", {"max_new_tokens": 64}, {"weak_base": ("wb", 64), "weak_aligned": ("wa", 64)})
    assert list(errs) == ["params.max_new_tokens"]
    errs = _errors("evaluate", {"evaluate": {"max_new_tokens": 64}}, {"strong": ("s", 64)})
    assert list(errs) == ["params.evaluate.max_new_tokens"]
    # alpha_sweep's evaluation scores the CD samples: only CD's budget counts.
    resolve("alpha_sweep", {"max_new_tokens": 15, "evaluate": {"max_new_tokens": 500}}, contexts=WEAK)


def test_the_job_cli_refuses_the_same_budgets(gpt2_folder, tmp_path, capsys):
    from ml.cli import main

    path, _ = gpt2_folder
    (tmp_path / "p.jsonl").write_text('{"prompt": "the cat"}\n')
    args = ["job", "cd_generate", "--weak-base", str(path), "--weak-aligned", str(path)]
    args += ["--prompts", str(tmp_path / "p.jsonl"), "--out", str(tmp_path / "out"), "--max-new-tokens", "16"]
    assert main(args) == 2
    assert (
        f"error: params.max_new_tokens: 16 new tokens leave no room for a prompt in the context of weak_base '{path}'"
        in (capsys.readouterr().out)
    )
    assert not (tmp_path / "out").exists()  # refused before anything ran
