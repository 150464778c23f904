"""ml.results reads each kind's results layout one way (no walking the JSON for anything named gold_mean)."""

from __future__ import annotations

from ml.results import RESULTS_VERSION, method_rows, stamp, sweep_points


def test_pipeline_rows_come_from_methods_in_order_with_the_win_rate_vs_weak_sft():
    results = stamp(
        "cong",
        {
            "methods": {
                "weak_sft": {
                    "label": "WeakSFT",
                    "gold_mean": 0.1,
                    "gold_ci": [0.0, 0.2],
                    "valid_rate": 1.0,
                    "implicit_mean": None,
                    "win_rate_vs_weak_sft": 0.5,
                    "n": 8,
                },
                "cong": {
                    "label": "ConG",
                    "gold_mean": 0.3,
                    "gold_ci": [0.2, 0.4],
                    "valid_rate": 0.9,
                    "implicit_mean": 1.5,
                    "win_rate_vs_weak_sft": 0.7,
                    "n": 8,
                },
            },
            # a nested dict that also has a gold_mean is NOT a method (the old reader would have listed it)
            "config": {"evaluate": {"gold_mean": 9.9}},
        },
    )
    assert results["results_version"] == RESULTS_VERSION and results["kind"] == "cong"
    rows = method_rows("cong", results)
    assert [r.method for r in rows] == ["WeakSFT", "ConG"]
    assert [r.key for r in rows] == ["weak_sft", "cong"]
    # The pipeline's method order, whatever order the stored JSON kept (PostgreSQL's jsonb sorts keys its own way).
    backwards = {**results, "methods": dict(reversed(list(results["methods"].items())))}
    assert [r.key for r in method_rows("cong", backwards)] == ["weak_sft", "cong"]
    assert (rows[1].gold_lo, rows[1].gold_hi, rows[1].win_rate, rows[1].win_vs, rows[1].n) == (
        0.2,
        0.4,
        0.7,
        "weak_sft",
        8,
    )


def test_evaluate_sweep_and_preflight_layouts():
    ev = {"name": "m", "gold_mean": 0.5, "gold_ci": [0.4, 0.6], "n": 3, "valid_rate": float("nan")}
    assert method_rows("evaluate", ev)[0].method == "m" and method_rows("evaluate", ev)[0].valid_rate is None
    sweep = {"alphas": [{"alpha": 1.0, "gold_mean": 0.2, "implicit_mean": 3.0}, {"alpha": 0.0, "gold_mean": 0.4}]}
    assert [r.method for r in method_rows("alpha_sweep", sweep)] == ["alpha 1", "alpha 0"]
    assert [(p.alpha, p.gold, p.implicit) for p in sweep_points("alpha_sweep", sweep)] == [
        (0.0, 0.4, None),
        (1.0, 0.2, 3.0),
    ]
    pf = {"verdict": "raises", "sweep": {"cd": [{"alpha": 0.4, "gold_mean": 0.3, "implicit_mean": 2.0}]}}
    assert sweep_points("preflight", pf)[0].alpha == 0.4 and method_rows("preflight", pf) == []
    assert method_rows("cd_generate", {"n": 4}) == [] and sweep_points("cong", {}) == []


def test_numbers_that_are_not_finite_floats_read_as_missing():
    """Results are JSON from disk or a database: a bool, NaN, a string or an integer beyond float range (10**400
    once raised OverflowError here and broke the page) reads as None, a finite number as itself."""
    method = {"label": "ConG", "gold_ci": [float("nan"), 10**400], "valid_rate": True, "implicit_mean": "1.5"}
    (row,) = method_rows("cong", stamp("cong", {"methods": {"cong": {**method, "gold_mean": 10**400}}}))
    assert (row.gold_mean, row.gold_lo, row.gold_hi, row.valid_rate, row.implicit_mean) == (None,) * 5
    (row,) = method_rows("cong", stamp("cong", {"methods": {"cong": {**method, "gold_mean": 2}}}))
    assert row.gold_mean == 2.0 and isinstance(row.gold_mean, float)
