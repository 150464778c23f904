from __future__ import annotations

import pytest

from ml.io import read_json
from ml.modeling import load_causal_lm
from ml.reporter import RecordingReporter
from ml.stages._train import encode_pair
from ml.stages.sft import SFTStageConfig, sft
from tests.ml._stage_fixtures import save_tiny, write_pairs


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("m") / "strong", seed=1)


def cfg(base, tmp_path, **kw):
    return SFTStageConfig(
        model=base,
        output_dir=str(tmp_path / "sft"),
        data=write_pairs(tmp_path / "d.jsonl"),
        max_steps=3,
        per_device_train_batch_size=2,
        learning_rate=1e-3,
        save_steps=1,
        **kw,
    )


def test_sft_trains_saves_and_is_idempotent(base, tmp_path):
    rep = RecordingReporter()
    out = sft(cfg(base, tmp_path), rep)
    assert out["steps"] == 3 and "stopped" not in out
    assert (tmp_path / "sft" / "DONE.json").exists()
    model = load_causal_lm(tmp_path / "sft" / "model", device="cpu")
    assert model.config.vocab_size > 0
    assert any(name == "sft/loss" for name, _, _ in rep.of("metric"))
    assert rep.of("progress")[-1] == ("sft", 3, 3)
    # A finished stage returns its summary without training again: no step, no report, the model untouched.
    rep2 = RecordingReporter()
    mtime = (tmp_path / "sft" / "model" / "config.json").stat().st_mtime_ns
    again = sft(cfg(base, tmp_path), rep2)
    assert again == read_json(tmp_path / "sft" / "DONE.json") == out
    assert rep2.of("progress") == [] and rep2.of("metric") == []
    assert (tmp_path / "sft" / "model" / "config.json").stat().st_mtime_ns == mtime


def test_sft_stop_then_resume(base, tmp_path):
    rep = RecordingReporter(stop_after=3)  # train_begin + 2 steps
    out = sft(cfg(base, tmp_path), rep)
    assert out.get("stopped") is True and out["steps"] < 3
    assert not (tmp_path / "sft" / "DONE.json").exists()
    assert list((tmp_path / "sft" / "checkpoints").glob("checkpoint-*"))
    out2 = sft(cfg(base, tmp_path))
    assert out2["steps"] == 3 and out2["resumed_from"]
    assert (tmp_path / "sft" / "DONE.json").exists()


def test_loss_only_on_response(base):
    from ml.modeling import load_tokenizer

    tok = load_tokenizer(base)
    p, r = encode_pair(tok, "tell me", "good a", use_chat_template=True)
    assert tok.convert_ids_to_tokens(p) == ["tell", "me"]
    assert tok.convert_ids_to_tokens(r) == ["good", "a", "<eos>"]


def test_bad_config_says_what_to_change(tmp_path):
    with pytest.raises(ValueError, match="data"):
        SFTStageConfig(model="x", output_dir=str(tmp_path))
    with pytest.raises(ValueError, match="lora_r"):
        SFTStageConfig(model="x", output_dir=str(tmp_path), data="d", lora_r=-1)


def test_sft_with_lora_writes_a_merged_plain_model(base, tmp_path):
    out = sft(cfg(base, tmp_path, lora_r=4, lora_target_modules="c_attn,c_fc"))
    assert out["steps"] == 3
    model_dir = tmp_path / "sft" / "model"
    assert not (model_dir / "adapter_config.json").exists()
    model = load_causal_lm(model_dir, device="cpu")
    assert not hasattr(model, "peft_config")
