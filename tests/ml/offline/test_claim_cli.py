"""The claim measurement on a tiny weak pair, its statistics, and the CLI wiring."""

from __future__ import annotations

import json
import math

import pytest

from ml.io import read_jsonl, write_jsonl
from ml.judge import build_prompts
from ml.offline.claim import ClaimConfig, measure_claim, paired_difference, pearson, spearman


def test_pearson_and_spearman():
    r = pearson([1, 2, 3, 4, 5], [2, 4, 6, 8, 10])
    assert r["r"] == pytest.approx(1.0)
    r = pearson([1, 2, 3, 4, 5, 6, 7, 8], [1, 3, 2, 5, 4, 7, 6, 8])
    assert 0.8 < r["r"] < 1.0 and r["ci"][0] < r["r"] < r["ci"][1] and r["n"] == 8
    assert spearman([1, 10, 100, 1000], [1, 2, 3, 4])["r"] == pytest.approx(1.0)  # monotone, not linear
    assert math.isnan(pearson([1, 1, 1], [1, 2, 3])["r"])  # no variance: undefined, not an error


def test_paired_difference_pairs_by_prompt_and_sample():
    a = [{"index": 0, "gold": 1.0}, {"index": 1, "gold": 0.5}, {"index": 2, "gold": 0.0}]
    b = [{"index": 1, "gold": 0.0}, {"index": 0, "gold": 1.0}, {"index": 2, "gold": 0.5}]
    d = paired_difference(a, b)
    assert d["mean"] == pytest.approx(0.0) and (d["wins"], d["ties"], d["losses"]) == (1, 1, 1)


def test_claim_on_a_tiny_pair(tmp_path, tiny_pair_dirs):
    prompts = tmp_path / "prompts.jsonl"
    write_jsonl(prompts, build_prompts(6, seed=3))
    cfg = ClaimConfig(
        weak_base=tiny_pair_dirs["base"],
        weak_aligned=tiny_pair_dirs["aligned"],
        prompts=str(prompts),
        output_dir=str(tmp_path / "claim"),
        alphas=[0.0, 1.0],
        max_prompts=4,
        max_new_tokens=6,
        batch_size=4,
        device="cpu",
    )
    res = measure_claim(cfg)
    assert set(res["methods"]) == {"cd_alpha0", "cd_alpha1", "plain"}
    for m in res["methods"].values():
        assert m["n"] == 4 and 0.0 <= m["gold"]["mean"] <= 1.0 and "implicit_reward_sum" in m
        assert 0.0 <= m["truncated_rate"] <= 1.0  # every sample set says how many answers the cap cut
    # alpha = 0 maximises the log ratio: its implicit reward beats plain pi_post sampling on average
    assert (
        res["methods"]["cd_alpha0"]["implicit_reward_mean"]["mean"]
        > res["methods"]["plain"]["implicit_reward_mean"]["mean"]
    )
    assert res["gold_minus_plain"]["cd_alpha0"]["n"] == 4
    assert res["implicit_vs_gold"]["pearson_sum"]["n"] == 12
    assert (tmp_path / "claim" / "claim.md").read_text().startswith("CD vs plain")
    assert measure_claim(cfg) == res  # idempotent: a finished folder is returned as is
    assert len(read_jsonl(tmp_path / "claim" / "plain" / "samples.jsonl")) == 4


def test_claim_config_checks(tmp_path):
    with pytest.raises(ValueError, match="alphas"):
        ClaimConfig(weak_base="a", weak_aligned="b", prompts="p", output_dir="o", alphas=[1.5])


def test_cli_registers_models_and_judge(tmp_path, capsys):
    from ml.cli import build_parser, main

    parser = build_parser()
    args = parser.parse_args(["models", "install-offline", "--skip-install", "--models-dir", str(tmp_path)])
    assert args.skip_install and args.models_dir == str(tmp_path)
    assert main(["judge", "prompts", "--out", str(tmp_path / "p"), "--n", "40"]) == 0
    assert len(read_jsonl(tmp_path / "p" / "train.jsonl")) + len(read_jsonl(tmp_path / "p" / "heldout.jsonl")) == 40
    capsys.readouterr()
    prompt = build_prompts(1)[0]["prompt"]
    assert main(["judge", "check", "--prompt", prompt, "--response", "some answer words here"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert 0.0 <= out["score"] <= 1.0 and len(out["results"]) >= 1
    assert main(["models", "preset", "--size", "smoke", "--models-dir", str(tmp_path)]) == 2  # models missing
    assert "install-offline" in capsys.readouterr().err
