"""What a job's results hold, per kind, read one way: the pages and reports ask here instead of walking the JSON
for anything that looks like a metric.

Every result ml.execute returns carries ``results_version`` and ``kind``. Version 1 layouts:

    cong, train   {"methods": {method: {"label", "gold_mean", "gold_ci": [lo, hi], "valid_rate", "implicit_mean",
                   "win_rate_vs_weak_sft", "n", "model"}}, "config", "weak_aligned", "stages", "seconds"}
    evaluate      {"name", "gold_mean", "gold_ci", "valid_rate", "n", ["implicit_mean"], ...}  (ml.stages.evaluate)
    alpha_sweep   {"alphas": [{"alpha", "gold_mean", "gold_ci", "valid_rate", "n", ["implicit_mean"], ...}]}
    preflight     {"verdict", "message", ..., "sweep": {"pre", "plain_post", "cd": [{"alpha", "gold_mean", ...}]}}
    cd_generate, weak_align   the stage's summary (no method rows)

Results stored before versions existed (no ``results_version``) are read with the same layouts: they are what
the same code wrote.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ml.io import finite_number
from ml.pipeline_config import METHODS

RESULTS_VERSION = 1


@dataclass(frozen=True)
class MethodRow:
    method: str
    gold_mean: float | None
    gold_lo: float | None
    gold_hi: float | None
    valid_rate: float | None
    implicit_mean: float | None
    win_rate: float | None
    win_vs: str
    n: int | None
    pgr: float | None = None  # performance gap recovered (ml.pipeline_refs)
    truncated_rate: float | None = None  # share of its evaluation answers cut at max_new_tokens
    judge_win_rate: float | None = None  # the pairwise LLM judge's win rate against the reference (ml.judge.pairwise)
    judge_lc_win_rate: float | None = None  # ... length-controlled
    key: str = ""  # the pipeline's method name (cong, train); "" for the other kinds


@dataclass(frozen=True)
class SweepPoint:
    alpha: float
    gold: float | None
    implicit: float | None


def stamp(kind: str, result: dict[str, Any]) -> dict[str, Any]:
    """The result as stored: tagged with its layout's version and kind."""
    return {**result, "results_version": RESULTS_VERSION, "kind": kind}


def _row(method: str, m: dict[str, Any], *, win_key: str = "", key: str = "") -> MethodRow:
    ci = m.get("gold_ci")
    lo, hi = (ci[0], ci[1]) if isinstance(ci, list) and len(ci) == 2 else (None, None)
    n = m.get("n")
    return MethodRow(
        method=method,
        gold_mean=finite_number(m.get("gold_mean")),
        gold_lo=finite_number(lo),
        gold_hi=finite_number(hi),
        valid_rate=finite_number(m.get("valid_rate")),
        implicit_mean=finite_number(m.get("implicit_mean")),
        win_rate=finite_number(m.get(win_key)) if win_key else None,
        win_vs=win_key.removeprefix("win_rate_vs_") if win_key else "",
        n=n if isinstance(n, int) and not isinstance(n, bool) else None,
        pgr=finite_number(m.get("pgr")),
        truncated_rate=finite_number(m.get("truncated_rate")),
        judge_win_rate=finite_number(m.get("judge_win_rate")),
        judge_lc_win_rate=finite_number(m.get("judge_lc_win_rate")),
        key=key,
    )


def method_rows(kind: str, results: dict[str, Any] | None) -> list[MethodRow]:
    """One row per evaluated method (pipeline kinds), the evaluated model (evaluate) or alpha (alpha_sweep)."""
    r = results or {}
    if kind in ("cong", "train"):
        methods = r.get("methods") or {}
        # In the pipeline's method order, not the stored JSON's: PostgreSQL's jsonb does not keep key order, so
        # pages, exports and experiments would list the same results differently on each database.
        order = {name: i for i, name in enumerate(METHODS)}
        names = sorted(methods, key=lambda name: order.get(name, len(order)))
        return [
            _row(str(methods[name].get("label") or name), methods[name], win_key="win_rate_vs_weak_sft", key=name)
            for name in names
        ]
    if kind == "evaluate" and "gold_mean" in r:
        win = next((k for k in r if k.startswith("win_rate_vs_")), "")
        return [_row(str(r.get("name") or "model"), r, win_key=win)]
    if kind == "alpha_sweep":
        return [_row(f"alpha {float(a['alpha']):g}", a) for a in r.get("alphas") or []]
    return []


def sweep_points(kind: str, results: dict[str, Any] | None) -> list[SweepPoint]:
    """(alpha, gold, implicit) of a sweep, sorted by alpha: an alpha_sweep's alphas, a preflight's CD runs."""
    r = results or {}
    if kind == "alpha_sweep":
        rows = r.get("alphas") or []
    elif kind == "preflight":
        rows = (r.get("sweep") or {}).get("cd") or []
    else:
        return []
    pts = [
        SweepPoint(float(p["alpha"]), finite_number(p.get("gold_mean")), finite_number(p.get("implicit_mean")))
        for p in rows
        if finite_number(p.get("alpha")) is not None
    ]
    return sorted(pts, key=lambda p: p.alpha)


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def results_markdown(results: dict[str, Any]) -> str:
    """The pipeline's results.md: one table row per method (ml.pipeline writes it beside results.json)."""
    cfg = results["config"]
    lines = [
        f"# ConG results — gold `{cfg['gold']}`, alpha {cfg['alpha']}",
        "",
        "| Method | Gold mean | 95% CI | Valid | Implicit reward | Win vs WeakSFT | n |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for r in results["methods"].values():
        lo, hi = r["gold_ci"]
        lines.append(
            f"| {r['label']} | {_fmt(r['gold_mean'])} | [{_fmt(lo)}, {_fmt(hi)}] | {_fmt(r['valid_rate'], 2)} "
            f"| {_fmt(r['implicit_mean'])} | {_fmt(r['win_rate_vs_weak_sft'], 2)} | {r['n']} |"
        )
    lines += [
        "",
        "Implicit reward: log pi_post(y|x) - log pi_pre(y|x) summed over response tokens, under the weak "
        "pair. Win rate: paired by prompt and sample against WeakSFT, ties count half.",
        "",
    ]
    return "\n".join(lines)
