"""The report end to end on the tiny build (numbers meaningless; shape and files checked), and the
pre-flight verdict logic on hand-made sweeps."""

import json
import math
from pathlib import Path

import pytest

from ml.toyworld.diagnose import LOWERS, NO_GAIN, RAISES, preflight, verdict
from ml.toyworld.report import STRONG_METHODS, ReportConfig, report


def _sweep(plain, cd04, half=0.02, r=0.4, cd1=None):
    row = lambda g: {"gold_mean": g, "gold_ci": [g - half, g + half], "n": 600, "valid_rate": 1.0}
    return {
        "plain_post": row(plain),
        "cd": [
            {"alpha": 0.0, **row(cd04)},
            {"alpha": 0.4, **row(cd04)},
            {"alpha": 1.0, **row(plain if cd1 is None else cd1)},
        ],
        "implicit_gold_pearson": r,
    }


def test_verdicts():
    v = verdict(_sweep(-0.10, 0.05))
    assert v["verdict"] == RAISES and v["message"].startswith("CD raises gold reward here")
    v = verdict(_sweep(1.09, 0.96, r=-0.9))
    assert v["verdict"] == LOWERS and "shortcut" in v["message"] and "negative correlation" in v["message"]
    # Lower than plain pi_post, but no lower than CD at alpha 1: the decoding settings, not the log-ratio.
    v = verdict(_sweep(-0.20, -0.28, r=0.5, cd1=-0.28))
    assert v["verdict"] == LOWERS and "decoding settings" in v["message"] and "shortcut" not in v["message"]
    assert v["log_ratio_effect"] == pytest.approx(0.0)
    v = verdict(_sweep(0.23, 0.22, r=0.67))
    assert v["verdict"] == NO_GAIN and v["message"].startswith("CD does not raise gold reward here")
    assert v["gold_gain"] == pytest.approx(-0.01)
    with pytest.raises(ValueError, match="alpha"):
        verdict(_sweep(0, 0), decision_alpha=0.2)


def test_preflight_on_tiny_pair(tiny_review):
    from ml.io import read_prompts
    from ml.modeling import load_causal_lm, load_tokenizer

    m = tiny_review
    aligned = load_causal_lm(m["models"]["weak_aligned"], device="cpu")
    base = load_causal_lm(m["models"]["weak_base"], device="cpu")
    out = preflight(
        aligned,
        base,
        load_tokenizer(m["models"]["weak_aligned"]),
        read_prompts(m["prompts"]["heldout"], 6),
        "toy:review",
        alphas=(0.0,),
        n=2,
        max_new_tokens=12,
    )
    assert out["verdict"] in (RAISES, NO_GAIN, LOWERS)
    assert [c["alpha"] for c in out["sweep"]["cd"]] == [0.0, 0.4, 1.0]  # decision alpha and 1 added
    assert out["sweep"]["plain_post"]["n"] == 12


def test_report_tiny_end_to_end(tiny_review, tmp_path):
    data_dir = Path(tiny_review["root"]).parents[2]
    cfg = ReportConfig(
        out=str(tmp_path / "rep"),
        seeds=1,
        worlds=["review"],
        data_dir=str(data_dir),
        size="tiny",
        alphas=[0.0, 0.4, 1.0],
        n_samples=1,
    )
    res = report(cfg, command="test")
    on_disk = json.loads((tmp_path / "rep" / "report.json").read_text())
    w = on_disk["worlds"]["review"]
    assert [r["alpha"] for r in w["alpha_sweep"]] == [0.0, 0.4, 1.0]
    for name in ("no_repetition_penalty", "score_reference"):  # every ablation, with its paired difference
        assert [r["alpha"] for r in w[f"alpha_sweep_{name}"]] == [0.0, 0.4, 1.0]
        for row, diff, main in zip(w[f"alpha_sweep_{name}"], w[f"alpha_sweep_{name}_minus_default"], w["alpha_sweep"]):
            assert diff["mean"] == pytest.approx(row["gold_mean"] - main["gold_mean"])  # one seed: the difference
            assert diff["n"] == 1 and len(diff["ci"]) == 2
    for row in [*w["alpha_sweep"], w["plain_post"], w["pre"]]:
        assert {"gold_mean", "gold_ci", "implicit_mean", "valid_rate"} <= set(row)
        assert math.isfinite(row["gold_mean"])
    assert set(STRONG_METHODS) | {"cong_filtered"} == set(w["strong"])
    # Filtered ConG is the pipeline's method now: its DPO sits beside ConG's in the pipeline folder.
    seed_run = json.loads((tmp_path / "rep" / "runs" / "review" / "seed0" / "seed.json").read_text())
    assert seed_run["strong"]["cong_filtered"]["n_pairs_kept"] >= 1
    assert (tmp_path / "rep" / "runs" / "review" / "seed0" / "pipeline" / "dpo_cong_filtered" / "DONE.json").exists()
    assert {"best_of_n", "ceiling"} <= set(w["strong"])  # the reference methods are strong methods
    for row in w["strong"].values():
        assert {"gold_mean", "gold_ci", "valid_rate", "pgr", "truncated_rate"} <= set(row)
        assert 0.0 <= row["truncated_rate"] <= 1.0
    # PGR is the ratio of mean gains; tiny random models may put the ceiling below pi_post, where there is no gap.
    low, high = w["strong"]["weak_post"]["gold_mean"], w["strong"]["ceiling"]["gold_mean"]
    if high > low:
        assert w["strong"]["cong"]["pgr"] == pytest.approx((w["strong"]["cong"]["gold_mean"] - low) / (high - low))
        assert w["strong"]["ceiling"]["pgr"] == pytest.approx(1.0)
    else:
        assert all(row["pgr"] is None for row in w["strong"].values())
    assert len(w["strong"]["cong"]["pgr_per_seed"]) == 1
    assert isinstance(w["implicit_gold_pearson"], float)
    assert w["verdict"]["verdict"] in (RAISES, NO_GAIN, LOWERS)
    md = (tmp_path / "rep" / "REPORT.md").read_text()
    assert "## review" in md and "ConG-S" in md
    for png in ("review_alpha.png", "review_scatter.png", "review_strong.png"):
        assert (tmp_path / "rep" / png).stat().st_size > 1000
    assert res["worlds"]["review"]["strong"]["cong"]["gold_mean"] == w["strong"]["cong"]["gold_mean"]
    # Paired differences for every method (one seed: the difference itself, n=1); the baselines not against
    # themselves.
    assert w["paired"]["cong"]["minus_weak_sft"]["mean"] == pytest.approx(
        w["strong"]["cong"]["gold_mean"] - w["strong"]["weak_sft"]["gold_mean"]
    )
    assert "minus_weak_sft" not in w["paired"]["weak_sft"] and "minus_cong_s" not in w["paired"]["cong_s"]
    lo, hi = w["implicit_gold_pearson_ci"]  # one seed: the interval from its samples (Fisher z)
    assert math.isnan(lo) or lo <= w["implicit_gold_pearson"] <= hi
    # A cached rerun reports the time the reused runs took, not only its own short wall time.
    again = report(cfg, command="test")
    assert again["seconds_computed"] == res["seconds_computed"] > again["seconds"]
    assert again["worlds"]["review"]["strong"] == res["worlds"]["review"]["strong"]


def test_parallel_report_equals_the_sequential_one(tiny_review, tmp_path):
    """jobs=2 runs world/seed units in spawned processes; the numbers must be the same as in one process."""
    data_dir = Path(tiny_review["root"]).parents[2]
    kw = dict(
        seeds=1,
        worlds=["review"],
        data_dir=str(data_dir),
        size="tiny",
        alphas=[0.0, 0.4],
        n_samples=1,
        filtered=False,
        ablations=[],
    )
    seq = report(ReportConfig(out=str(tmp_path / "seq"), **kw))
    par = report(ReportConfig(out=str(tmp_path / "par"), jobs=2, **kw))
    assert (tmp_path / "par" / "runs" / "review" / "seed0" / "seed.json").exists()
    for key in ("alpha_sweep", "plain_post", "pre", "strong", "implicit_gold_pearson"):
        assert par["worlds"]["review"][key] == seq["worlds"]["review"][key], key
    with pytest.raises(ValueError, match="jobs"):
        ReportConfig(out=str(tmp_path / "x"), jobs=0)


def test_paired_differences_cancel_what_the_seeds_share():
    from ml.toyworld.report import _paired

    # Seed levels differ a lot; ConG beats WeakSFT by exactly 0.1 in each seed: paired, the interval is that.
    seeds = [
        {"seed": i, "strong": {"weak_sft": {"gold_mean": lvl}, "cong_s": {"gold_mean": lvl + 0.05},
                               "cong": {"gold_mean": lvl + 0.1}}}
        for i, lvl in enumerate([0.1, 0.9, 0.4])
    ]  # fmt: skip
    p = _paired(seeds, ["weak_sft", "cong_s", "cong"])
    assert p["cong"]["minus_weak_sft"]["mean"] == pytest.approx(0.1)
    assert p["cong"]["minus_weak_sft"]["ci"] == pytest.approx([0.1, 0.1]) and p["cong"]["minus_weak_sft"]["n"] == 3
    assert p["cong"]["minus_cong_s"]["mean"] == pytest.approx(0.05)
    assert set(p["weak_sft"]) == {"minus_cong_s"} and set(p["cong_s"]) == {"minus_weak_sft"}


def test_verdict_over_seeds_pairs_gains_by_seed():
    from ml.toyworld.diagnose import verdict_over_seeds

    # Seeds differ a lot in level but CD beats plain in each by ~0.15: paired, that is a clear gain.
    sweeps = [_sweep(p, p + g) for p, g in ((-0.6, 0.15), (-0.2, 0.16), (0.3, 0.14))]
    v = verdict_over_seeds(sweeps)
    assert v["verdict"] == RAISES and v["n_seeds"] == 3 and v["gold_gain"] == pytest.approx(0.15)
    v = verdict_over_seeds([_sweep(0.9, 0.75, r=-0.5), _sweep(0.95, 0.8, r=-0.4), _sweep(0.96, 0.83, r=-0.4)])
    assert v["verdict"] == LOWERS and "shortcut" in v["message"]
    assert verdict_over_seeds([_sweep(0.1, 0.3)])["verdict"] == RAISES  # one seed: per-sample interval
