from __future__ import annotations

import pytest
import yaml

from ml.io import read_json, read_jsonl
from ml.pipeline import DEFAULT_METHODS, METHODS, PipelineConfig, run
from ml.reporter import RecordingReporter
from tests.ml._stage_fixtures import tiny_config


def test_end_to_end_with_weak_alignment_writes_all_methods(tmp_path):
    rep = RecordingReporter()
    res = run(PipelineConfig.from_dict(tiny_config(tmp_path)), rep)
    assert set(res["methods"]) == set(DEFAULT_METHODS)  # the paper's methods; cong_filtered only on request
    for name, row in res["methods"].items():
        lo, hi = row["gold_ci"]
        assert lo <= row["gold_mean"] <= hi and row["n"] == 4, name
        assert row["implicit_mean"] is not None
        assert 0.0 <= row["win_rate_vs_weak_sft"] <= 1.0
    assert res["methods"]["weak_sft"]["win_rate_vs_weak_sft"] == 0.5
    out = tmp_path / "run"
    saved = read_json(out / "results.json")
    assert saved["methods"].keys() == res["methods"].keys() and saved["results_version"] == 1
    assert "| ConG |" in (out / "results.md").read_text()
    for stage in (
        "weak_align",
        "cd_generate",
        "sft_cong_s",
        "self_sample",
        "dpo_cong",
        "plain_generate",
        "sft_weak",
        "wspo",
        "auxconf",
        "eval/cong",
    ):
        assert (out / stage / "DONE.json").exists(), stage
        assert stage in res["stages"]
    # A rerun resumes from DONE markers: same numbers, nothing retrained.
    again = run(PipelineConfig.from_dict(tiny_config(tmp_path)))
    assert again["methods"] == res["methods"]


@pytest.mark.gpu
def test_every_stage_runs_on_cuda_in_bf16(tmp_path):
    """The GPU path end to end (bench/gpu_check.sh runs this on a lent GPU): every method's stages on
    CUDA with the dtype chosen automatically (bf16 where supported), results as on CPU in shape."""
    import torch

    from ml.modeling import pick_dtype

    assert pick_dtype(torch.device("cuda")) in (torch.bfloat16, torch.float16)
    res = run(PipelineConfig.from_dict(tiny_config(tmp_path, device="cuda")))
    assert set(res["methods"]) == set(DEFAULT_METHODS)
    for name, row in res["methods"].items():
        lo, hi = row["gold_ci"]
        assert lo <= row["gold_mean"] <= hi and row["n"] == 4 and row["implicit_mean"] is not None, name


def test_stop_then_resume_and_subset_of_methods(tmp_path, tiny_pair_dirs):
    cfg = tiny_config(
        tmp_path,
        weak_base=tiny_pair_dirs["base"],
        weak_aligned=tiny_pair_dirs["aligned"],
        methods=["cong_s", "weak_sft"],
    )
    stopped = run(PipelineConfig.from_dict(cfg), RecordingReporter(stop_after=1))
    assert stopped["stopped"] is True and stopped["stage"] == "cd_generate"
    assert not (tmp_path / "run" / "results.json").exists()
    res = run(PipelineConfig.from_dict(cfg))
    assert set(res["methods"]) == {"cong_s", "weak_sft"}
    assert not (tmp_path / "run" / "weak_align").exists()  # pi_post was given
    assert not (tmp_path / "run" / "wspo").exists()


def test_cong_filtered_is_an_extra_method_beside_cong(tmp_path, tiny_pair_dirs):
    assert "cong_filtered" in METHODS and "cong_filtered" not in DEFAULT_METHODS
    cfg = tiny_config(
        tmp_path,
        weak_base=tiny_pair_dirs["base"],
        weak_aligned=tiny_pair_dirs["aligned"],
        methods=["cong", "cong_filtered"],
    )
    res = run(PipelineConfig.from_dict(cfg))
    assert set(res["methods"]) == {"cong", "cong_filtered"}
    out = tmp_path / "run"
    saved = read_json(out / "results.json")["methods"]
    assert saved["cong_filtered"]["label"] == "ConG + implicit-reward filter"
    assert saved["cong_filtered"]["n"] == 4 and saved["cong_filtered"]["model"] != saved["cong"]["model"]
    plain, filtered = read_json(out / "dpo_cong" / "DONE.json"), read_json(out / "dpo_cong_filtered" / "DONE.json")
    # Same ConG-S model and the same (CD chosen, own rejected) pairs; only the filter differs.
    assert plain["filtered"] is False and filtered["filtered"] is True
    assert filtered["n_pairs_before_filter"] == plain["n_pairs_before_filter"]
    assert 1 <= filtered["n_pairs"] <= plain["n_pairs"]
    assert all(
        r["chosen_implicit"] > r["rejected_implicit"] for r in read_jsonl(out / "dpo_cong_filtered" / "pairs.jsonl")
    )
    assert (
        "dpo_cong_filtered" in res["stages"] and "| ConG + implicit-reward filter |" in (out / "results.md").read_text()
    )


def test_yaml_paths_are_relative_to_the_file(tmp_path):
    cfg = tiny_config(tmp_path)
    cfg["output_dir"] = "run"
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    loaded = PipelineConfig.from_yaml(tmp_path / "c.yaml")
    assert loaded.output_dir == str((tmp_path / "run").resolve())


def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown method"):
        PipelineConfig.from_dict(tiny_config(tmp_path, methods=["magic"]))
    with pytest.raises(ValueError, match="unknown pipeline setting"):
        PipelineConfig.from_dict(tiny_config(tmp_path, typo=1))
