"""Rendering a toy-world report: REPORT.md text and PNG plots, from the result dict ``report`` builds.

Kept apart from ml.toyworld.report (which runs and aggregates the measurements) because this part
only reads the finished result (the same shape as report.json) and needs no models; ``markdown``
and ``make_plots`` stay importable from ml.toyworld.report.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ml.pipeline import LABELS

from .sweep import ABLATIONS


def _f(x: Any, d: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:+.{d}f}" if isinstance(x, float) else str(x)


def _share(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def _ci(c: list[float]) -> str:
    return f"[{_f(c[0])}, {_f(c[1])}]"


def markdown(result: dict[str, Any], plots: dict[str, list[str]] | None = None) -> str:
    cfg = result["config"]
    lines = ["# Toy-world report", ""]
    if result.get("command"):
        lines += ["Made by:", "", f"    {result['command']}", ""]
    lines += [
        f"Seeds: {cfg['seeds']}; sweep: {cfg['n_samples']} samples per held-out prompt; ConG trains on CD at "
        f"alpha {cfg['cd_alpha']}. Intervals are 95% Student-t over seeds (with one seed: over samples). "
        "Gold rewards are the worlds' programmatic judges; implicit reward = sum over response tokens of "
        "log pi_post - log pi_pre.",
        "",
    ]
    for name, w in result["worlds"].items():
        lines += [f"## {name}", "", f"_{w['description']}_", ""]
        if w.get("label_gold"):
            lines += [
                f"Labeler is not evaluator: weak alignment's pairs were labelled by `{w['label_gold']}` "
                f"({w.get('label_gold_description', '')}); every score below is `{w['gold']}`.",
                "",
            ]
        lines += [
            "### Weak pair: alpha sweep on held-out prompts",
            "",
            "| Samples | Gold mean | 95% CI | Valid | Implicit reward | Cut |",
            "|---|---:|---|---:|---:|---:|",
        ]
        sets = [("pi_pre", w["pre"]), ("plain pi_post", w["plain_post"])]
        for label, row in [*sets, *((f"CD alpha={r['alpha']:g}", r) for r in w["alpha_sweep"])]:
            lines.append(
                f"| {label} | {_f(row['gold_mean'])} | {_ci(row['gold_ci'])} | {row['valid_rate']:.3f} | "
                f"{_f(row['implicit_mean'], 2)} | {_share(row.get('truncated_rate'))} |"
            )
        for abl, (_, what) in ABLATIONS.items():
            rows = w.get(f"alpha_sweep_{abl}")
            if not rows:
                continue
            diffs = w.get(f"alpha_sweep_{abl}_minus_default") or [{} for _ in rows]
            lines += [
                "",
                f"Ablation `{abl}`: {what} (same prompts, seeds and models; the difference is paired by seed):",
                "",
                "| Samples | Gold mean | 95% CI | Valid | Implicit reward | minus default [95% CI] |",
                "|---|---:|---|---:|---:|---|",
            ]
            for row, d in zip(rows, diffs, strict=True):
                diff = f"{_f(d.get('mean'))} {_ci(d['ci'])}" if d else "n/a"
                lines.append(
                    f"| CD alpha={row['alpha']:g}, {abl} | {_f(row['gold_mean'])} | "
                    f"{_ci(row['gold_ci'])} | {row['valid_rate']:.3f} | {_f(row['implicit_mean'], 2)} | {diff} |"
                )
        lines += [
            "",
            f"Implicit-vs-gold Pearson on plain pi_post samples: {_f(w['implicit_gold_pearson'], 2)} "
            f"{_ci(w['implicit_gold_pearson_ci'])} (Fisher z; per seed: "
            f"{', '.join(_f(x, 2) for x in w['implicit_gold_pearson_per_seed'])}).",
            "",
            f"Pre-flight verdict: **{w['verdict']['verdict']}** — {w['verdict']['message']} "
            f"(per seed: {', '.join(w['verdict_per_seed'])})",
            "",
        ]
        if w.get("strong"):
            lines += [
                "### Strong model on held-out prompts",
                "",
                "PGR = performance gap recovered, (method - pi_post) / (ceiling - pi_post) on the mean gold;"
                " Cut = share of its answers cut at the token cap.",
                "",
                "| Method | Gold mean | 95% CI | Valid | PGR | Cut | per seed |",
                "|---|---:|---|---:|---:|---:|---|",
            ]
            for k, row in w["strong"].items():
                lines.append(
                    f"| {LABELS.get(k, k)} | {_f(row['gold_mean'])} | {_ci(row['gold_ci'])} | "
                    f"{row['valid_rate']:.3f} | {_f(row.get('pgr'), 2)} | {_share(row.get('truncated_rate'))} | "
                    f"{', '.join(_f(x) for x in row['per_seed'])} |"
                )
            paired = w.get("paired") or {}
            cols = [b for b in ("weak_sft", "cong_s") if any(f"minus_{b}" in d for d in paired.values())]
            if cols and len(w.get("seeds", [])) > 1:
                lines += [
                    "",
                    "Paired by seed (each seed's methods share its weak pair, data and strong base): gold difference,"
                    " mean over seeds with a 95% t interval.",
                    "",
                    "| Method | " + " | ".join(f"minus {LABELS.get(b, b)}" for b in cols) + " |",
                    "|---|" + "---|" * len(cols),
                ]
                for k, d in paired.items():
                    cells = [
                        f"{_f(d[f'minus_{b}']['mean'])} {_ci(d[f'minus_{b}']['ci'])}" if f"minus_{b}" in d else "-"
                        for b in cols
                    ]
                    lines.append(f"| {LABELS.get(k, k)} | " + " | ".join(cells) + " |")
            if w.get("cong_dpo_chosen_win_rate") is not None:
                lines += [
                    "",
                    f"In ConG's DPO pairs the CD 'chosen' response beat the ConG-S model's own sample by "
                    f"gold in {w['cong_dpo_chosen_win_rate']:.0%} of pairs (ties half).",
                ]
            lines.append("")
        for p in (plots or {}).get(name, []):
            lines += [f"![{Path(p).stem}]({p})", ""]
        secs = w.get("seconds_per_seed") or []
        if secs:
            lines += [
                "Seconds per seed: " + "; ".join(", ".join(f"{k} {v:.0f}" for k, v in s.items()) for s in secs),
                "",
            ]
    computed = result.get("seconds_computed")
    lines += [
        f"Total wall time: {result.get('seconds', 0):.0f} s"
        + (f"; the world/seed runs took {computed:.0f} s when they were made (summed)." if computed else "."),
        "",
    ]
    return "\n".join(lines)


def make_plots(result: dict[str, Any], out: Path) -> dict[str, list[str]]:
    """PNG plots per world; returns {world: [relative paths]}. Skipped (empty) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {}
    from ml.io import read_jsonl

    made: dict[str, list[str]] = {}
    for name, w in result["worlds"].items():
        files: list[str] = []
        # 1. gold and implicit reward vs alpha
        fig, ax = plt.subplots(1, 2, figsize=(9, 3.4))
        xs = [r["alpha"] for r in w["alpha_sweep"]]
        for i, (key, title) in enumerate((("gold", "gold reward"), ("implicit", "implicit reward"))):
            if key == "gold":
                ys = [r["gold_mean"] for r in w["alpha_sweep"]]
                lo = [r["gold_ci"][0] for r in w["alpha_sweep"]]
                hi = [r["gold_ci"][1] for r in w["alpha_sweep"]]
                ax[i].fill_between(xs, lo, hi, alpha=0.2)
                ax[i].axhline(w["plain_post"]["gold_mean"], color="C1", ls="--", label="plain pi_post")
                ax[i].axhline(w["pre"]["gold_mean"], color="C2", ls=":", label="pi_pre")
            else:
                ys = [r["implicit_mean"] for r in w["alpha_sweep"]]
                ax[i].axhline(w["plain_post"]["implicit_mean"], color="C1", ls="--", label="plain pi_post")
                ax[i].axhline(w["pre"]["implicit_mean"], color="C2", ls=":", label="pi_pre")
            ax[i].plot(xs, ys, "o-", label="CD")
            ax[i].set_xlabel("alpha")
            ax[i].set_title(f"{name}: {title}")
            for j, abl in enumerate(ABLATIONS if key == "gold" else ()):
                if w.get(f"alpha_sweep_{abl}"):
                    ax[i].plot(
                        xs,
                        [r["gold_mean"] for r in w[f"alpha_sweep_{abl}"]],
                        "s--",
                        color=f"C{3 + j}",
                        label=f"CD, {abl}",
                    )
            ax[i].legend(fontsize=7)
        fig.tight_layout()
        files.append(_save(fig, out / f"{name}_alpha.png", out))
        plt.close(fig)
        # 2. implicit vs gold scatter (seed 0 samples)
        samples = Path(result["config"]["out"]) / "runs" / name / f"seed{w['seeds'][0]}" / "sweep_samples.jsonl"
        if samples.exists():
            rows = read_jsonl(samples)
            fig, ax = plt.subplots(figsize=(4.5, 3.6))
            for setname, color in (("plain_post", "C1"), (f"cd_{result['config']['cd_alpha']:g}", "C0")):
                pts = [(r["implicit"], r["gold"]) for r in rows if r["set"] == setname]
                if pts:
                    ax.scatter(
                        [p[0] for p in pts],
                        [p[1] for p in pts],
                        s=6,
                        alpha=0.4,
                        color=color,
                        label=setname.replace("_", " "),
                    )
            ax.set_xlabel("implicit reward (sum log pi_post/pi_pre)")
            ax.set_ylabel("gold reward")
            ax.set_title(f"{name}: implicit vs gold (seed {w['seeds'][0]})")
            ax.legend(fontsize=7)
            fig.tight_layout()
            files.append(_save(fig, out / f"{name}_scatter.png", out))
            plt.close(fig)
        # 3. strong-model bars
        if w.get("strong"):
            keys = list(w["strong"])
            fig, ax = plt.subplots(figsize=(8, 3.4))
            means = [w["strong"][k]["gold_mean"] for k in keys]
            err = [
                [m - w["strong"][k]["gold_ci"][0] for k, m in zip(keys, means)],
                [w["strong"][k]["gold_ci"][1] - m for k, m in zip(keys, means)],
            ]
            ax.bar(
                range(len(keys)),
                means,
                yerr=err,
                capsize=3,
                color=["C0" if k.startswith("cong") else "C7" for k in keys],
            )
            ax.set_xticks(range(len(keys)), [LABELS.get(k, k).split(" (")[0] for k in keys], rotation=20, fontsize=7)
            ax.set_ylabel("gold reward")
            ax.set_title(f"{name}: strong model on held-out prompts")
            ax.axhline(0, color="k", lw=0.5)
            fig.tight_layout()
            files.append(_save(fig, out / f"{name}_strong.png", out))
            plt.close(fig)
        made[name] = files
    return made


def _save(fig: Any, path: Path, root: Path) -> str:  # fig: a matplotlib Figure
    fig.savefig(path, dpi=110)
    return str(path.relative_to(root))
