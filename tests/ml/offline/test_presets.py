"""Preset construction (no models needed) and the YAML round trip through PipelineConfig."""

from __future__ import annotations

import pytest

from ml.offline.presets import PAIRS, SIZES, ensure_prompts, real_preset, write_preset_yaml
from ml.pipeline_config import REFERENCE_METHODS


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("pair", PAIRS)
def test_every_preset_builds(tmp_path, size, pair):
    cfg = real_preset(size, tmp_path, pair=pair, check_models=False)
    assert cfg.gold == "if:judge" and cfg.use_chat_template
    assert cfg.weak_base.endswith("offline/smollm2_135m_instruct")
    assert cfg.strong.endswith("gemma3_270m_base" if pair == "cross" else "smollm2_135m_instruct")
    assert {"weak_sft", "wspo", "cong_s", "cong"} <= set(cfg.methods)
    assert cfg.weak_aligned == ""  # pi_post is made by weak_align
    if size != "smoke":  # the reference methods, so that every row has a performance gap recovered
        assert set(REFERENCE_METHODS) <= set(cfg.methods)
    if size == "cpu":
        assert cfg.lora_r > 0 and cfg.max_prompts == 64 and cfg.max_new_tokens == 64
    if size == "gpu":
        assert cfg.lora_r == 0 and cfg.max_prompts is None and cfg.generate["batch_size"] == 64
    if size == "smoke":
        assert cfg.train_max_steps > 0 and cfg.max_prompts <= 8


def test_prompt_files_are_written_once(tmp_path):
    p1 = ensure_prompts(tmp_path)
    before = open(p1["train"], "rb").read()
    p2 = ensure_prompts(tmp_path)
    assert p1 == p2 and open(p2["train"], "rb").read() == before
    assert sum(1 for _ in open(p1["train"])) > 300 and sum(1 for _ in open(p1["heldout"])) > 60


def test_overrides_merge_stage_dicts(tmp_path):
    cfg = real_preset("cpu", tmp_path, check_models=False, sft={"learning_rate": 3e-4}, max_prompts=10)
    assert cfg.sft["learning_rate"] == 3e-4 and cfg.sft["per_device_train_batch_size"] == 4
    assert cfg.max_prompts == 10


def test_yaml_round_trip(tmp_path):
    from ml.pipeline import PipelineConfig

    cfg = real_preset("smoke", tmp_path, check_models=False)
    path = write_preset_yaml(cfg, tmp_path / "smoke.yaml")
    assert PipelineConfig.from_yaml(path).to_dict() == cfg.to_dict()


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="size"):
        real_preset("huge", tmp_path, check_models=False)
    with pytest.raises(ValueError, match="pair"):
        real_preset("cpu", tmp_path, pair="other", check_models=False)
    with pytest.raises(ValueError, match="install-offline"):
        real_preset("cpu", tmp_path)  # models not installed there


def test_cli_caps_prompts_without_changing_the_size(tmp_path):
    """`models run --size gpu --max-prompts 64 --max-eval-prompts 32`: bench/gpu_check.sh's short run at
    full size (same models, lengths and hyperparameters, fewer prompts)."""
    import argparse

    from ml.offline.cli import _build_preset, _preset_args
    from ml.offline.presets import WEAK, model_path

    ap = argparse.ArgumentParser()
    _preset_args(ap)
    argv = ["--size", "gpu", "--pair", "self", "--models-dir", str(tmp_path)]
    with pytest.raises(ValueError, match="install-offline"):
        _build_preset(ap.parse_args(argv))  # models missing: the error says how to get them
    model_path(WEAK, tmp_path).mkdir(parents=True)
    (model_path(WEAK, tmp_path) / "config.json").write_text("{}")
    full = _build_preset(ap.parse_args(argv))
    short = _build_preset(ap.parse_args(argv + ["--max-prompts", "64", "--max-eval-prompts", "32"]))
    assert (full.max_prompts, full.max_eval_prompts) == (None, None)
    assert (short.max_prompts, short.max_eval_prompts) == (64, 32)
    caps = ("max_prompts", "max_eval_prompts")
    rest = lambda cfg: {k: v for k, v in cfg.to_dict().items() if k not in caps}  # noqa: E731
    assert rest(short) == rest(full) and short.max_new_tokens == 256 and short.lora_r == 0
