"""The toy-world report: everything the paper compares, per world, over seeds.

Per world and seed (each piece cached under OUT/runs/<world>/seed<S>/, so a rerun resumes):
  build       weak base, weak aligned, strong base, prompts (ml.toyworld.build; cached in the data dir)
  sweep       on held-out prompts: pi_pre samples, plain pi_post samples and CD samples at each alpha;
              gold, validity, implicit reward; implicit-vs-gold Pearson on plain pi_post samples
  pipeline    ml.pipeline.run: strong base, WeakSFT, WSPO, AuxConf, ConG-S, ConG, pi_post on held-out
              prompts (the paper's recipe, with learning rates scaled for tiny models)
              and cong_filtered: ConG's DPO again with the implicit-reward pair filter (the pipeline's
              measured option, shown beside the paper's recipe, never instead of it), evaluated the same way
Then means and 95% intervals over seeds (Student-t; with one seed, the interval is over samples and
says so), DIR/report.json, DIR/REPORT.md and PNG plots.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ml.io import read_json, read_prompts, write_json
from ml.pipeline import DEFAULT_METHODS, METHODS
from ml.pipeline_config import REFERENCE_METHODS
from ml.pipeline_refs import pgr
from ml.reporter import Reporter, or_null
from ml.stats import fisher_z_mean_ci, mean_ci, paired_diff

from .build import build
from .diagnose import verdict, verdict_over_seeds

# REPORT.md and the plots are made in report_render (presentation only, apart from the measuring
# here); re-exported so ml.toyworld.report.markdown and .make_plots keep working.
from .report_render import make_plots, markdown
from .sweep import ABLATIONS
from .worlds import WORLDS, get_world

__all__ = [
    "EXTRA_METHODS",
    "STRONG_METHODS",
    "ReportConfig",
    "aggregate",
    "make_plots",
    "markdown",
    "report",
    "run_seed",
]

# The paper's methods and the measured options beside them, labelled as everywhere else (ml.pipeline).
STRONG_METHODS = (*DEFAULT_METHODS, *REFERENCE_METHODS)
EXTRA_METHODS = tuple(m for m in METHODS if m not in STRONG_METHODS)


@dataclass(kw_only=True)
class ReportConfig:
    out: str = field(metadata={"help": "Folder for report.json, REPORT.md, plots and per-run files."})
    seeds: int = field(default=3, metadata={"help": "Seeds 0..N-1 (each builds its own models)."})
    worlds: list[str] = field(default_factory=lambda: list(WORLDS), metadata={"help": "Worlds to run."})
    data_dir: str | None = field(
        default=None, metadata={"help": "Where builds are cached (default: env CONGWEB_DATA_DIR or ./var/data)."}
    )
    size: str = field(default="default", metadata={"help": "'default' or 'tiny' (tests only)."})
    alphas: list[float] = field(
        default_factory=lambda: [0.0, 0.2, 0.4, 0.6, 0.8, 1.0], metadata={"help": "CD alphas of the sweep."}
    )
    n_samples: int = field(default=3, metadata={"help": "Samples per held-out prompt in the sweep."})
    cd_alpha: float = field(default=0.4, metadata={"help": "CD alpha of ConG's training data (reference 0.4)."})
    filtered: bool = field(default=True, metadata={"help": "Also run ConG with the implicit-reward DPO filter."})
    strong: bool = field(default=True, metadata={"help": "Run the strong-model table (the pipeline)."})
    ablations: list[str] = field(
        default_factory=lambda: list(ABLATIONS),
        metadata={
            "help": "The CD sweep again with one setting changed, per name in ABLATIONS: how much of CD's effect is "
            "the log-ratio and how much its decoding settings, and how the two score modes compare."
        },
    )
    device: str | None = field(default=None, metadata={"help": "'cpu', 'cuda'; None = CUDA when present."})
    jobs: int = field(
        default=1,
        metadata={
            "help": "World/seed runs in parallel processes (one torch thread each). The toy models are too small "
            "for a second thread to help one run, so on a 2-core CPU jobs=2 nearly halves the wall time."
        },
    )

    def __post_init__(self) -> None:
        if self.seeds < 1:
            raise ValueError("seeds must be >= 1")
        if self.jobs < 1:
            raise ValueError("jobs must be >= 1")
        bad = [w for w in self.worlds if w not in WORLDS]
        if bad or not self.worlds:
            raise ValueError(f"unknown world(s) {bad}; choose from {', '.join(WORLDS)}")
        if any(not 0 <= a <= 1 for a in self.alphas):
            raise ValueError("alphas must lie in [0, 1]")
        if self.cd_alpha not in self.alphas:
            raise ValueError(f"cd_alpha {self.cd_alpha} must be one of the sweep's alphas {self.alphas}")
        if self.n_samples < 1:
            raise ValueError("n_samples must be >= 1")
        unknown = [a for a in self.ablations if a not in ABLATIONS]
        if unknown:
            raise ValueError(f"unknown ablation(s) {unknown}; choose from {', '.join(ABLATIONS)}")


# ------------------------------------------------------------------------------------------------
# One world, one seed


def _load_pair(m: dict[str, Any], device: str | None) -> tuple[Any, Any, Any]:
    """(pi_post, pi_pre, tokenizer): transformers objects."""
    from ml.modeling import load_causal_lm, load_tokenizer

    aligned = load_causal_lm(m["models"]["weak_aligned"], device=device)
    base = load_causal_lm(m["models"]["weak_base"], device=device)
    return aligned, base, load_tokenizer(m["models"]["weak_aligned"])


def _seed_dir(cfg: ReportConfig, world: str, seed: int) -> Path:
    """Where one world and seed's results are cached (seed.json, sweep.json, sweep_<ablation>.json, pipeline/)."""
    return Path(cfg.out) / "runs" / world / f"seed{seed}"


def _run_sweep(
    cfg: ReportConfig, m: dict[str, Any], pair: tuple[Any, Any, Any], seed: int, reporter: Reporter, **kw: Any
) -> dict[str, Any]:
    """The report's alpha sweep of the weak pair ``pair`` (_load_pair) on the world's held-out prompts; ``kw``:
    run_sweep's options (keep_rows, cd_overrides)."""
    from ml.gold import get_gold

    from .sweep import run_sweep

    aligned, base, tok = pair
    return run_sweep(
        aligned=aligned,
        base=base,
        tokenizer=tok,
        prompts=read_prompts(m["prompts"]["heldout"]),
        gold=get_gold(m["gold"]),
        alphas=cfg.alphas,
        n=cfg.n_samples,
        seed=seed,
        max_new_tokens=m["generation"]["max_new_tokens"],
        reporter=reporter,
        use_chat_template=False,
        **kw,
    )


def _sweep(cfg: ReportConfig, m: dict[str, Any], seed: int, run_dir: Path, reporter: Reporter) -> dict[str, Any]:
    from ml.io import write_jsonl

    path = run_dir / "sweep.json"
    if path.exists():
        cached: dict[str, Any] = read_json(path)
        return cached
    s = _run_sweep(cfg, m, _load_pair(m, cfg.device), seed, reporter, keep_rows=True)
    if s.get("stopped"):
        return s
    rows = s.pop("rows")
    # Kept for the implicit-vs-gold scatter plot: plain pi_post samples and CD at ConG's alpha.
    write_jsonl(
        run_dir / "sweep_samples.jsonl",
        [
            {"set": k, **{f: r[f] for f in ("prompt", "response", "gold", "valid", "implicit", "finish_reason")}}
            for k in ("pre", "plain_post", f"cd_{cfg.cd_alpha:g}")
            for r in rows[k]
        ],
    )
    write_json(path, s)
    return s


def _pipeline(cfg: ReportConfig, m: dict[str, Any], seed: int, run_dir: Path, reporter: Reporter) -> dict[str, Any]:
    from ml.pipeline import PipelineConfig, run

    recipe = get_world(m["world"]).recipe(m["size"])
    st = recipe.stages
    # Typed as Any-valued: each key is a different PipelineConfig field (its stage's settings mapping).
    stage_kw: dict[str, Any] = {k: dict(v) for k, v in st.items() if k != "dpo"}
    pc = PipelineConfig(
        weak_base=m["models"]["weak_base"],
        weak_aligned=m["models"]["weak_aligned"],
        strong=m["models"]["strong_base"],
        train_prompts=m["prompts"]["train"],
        eval_prompts=m["prompts"]["heldout"],
        gold=m["gold"],
        output_dir=str(run_dir / "pipeline"),
        alpha=cfg.cd_alpha,
        methods=[*STRONG_METHODS, *(EXTRA_METHODS if cfg.filtered else ())],
        seed=seed,
        max_new_tokens=m["generation"]["max_new_tokens"],
        use_chat_template=False,
        device=cfg.device,
        **stage_kw,
        dpo={**st.get("dpo", {}), "score_batch_size": 64},  # the filter's reward scoring; tiny models
    )
    return run(pc, reporter)


def _with_ablations(cfg: ReportConfig, world: str, seed: int, s: dict[str, Any], reporter: Reporter) -> dict[str, Any]:
    """run_seed's result with each configured ablation's sweep under "ablations" ({"stopped": True} if stopped):
    the CD sweep again with ABLATIONS[name]'s overrides, cached in sweep_<name>.json. The weak pair is loaded once,
    and only when some ablation is not cached yet."""
    abl: dict[str, Any] = {}
    loaded: tuple[dict[str, Any], tuple[Any, Any, Any]] | None = None
    for name in cfg.ablations:
        path = _seed_dir(cfg, world, seed) / f"sweep_{name}.json"
        if path.exists():
            abl[name] = read_json(path)
            continue
        if loaded is None:
            m = build(world, seed, cfg.data_dir, reporter=reporter, size=cfg.size, device=cfg.device)
            loaded = m, _load_pair(m, cfg.device)
        t0 = time.time()
        ab = _run_sweep(cfg, loaded[0], loaded[1], seed, reporter, cd_overrides=ABLATIONS[name][0])
        if ab.get("stopped"):
            return {"stopped": True}
        ab["seconds"] = round(time.time() - t0, 1)
        write_json(path, ab)
        abl[name] = ab
    return {**s, "ablations": abl}


def run_seed(cfg: ReportConfig, world: str, seed: int, reporter: Reporter | None = None) -> dict[str, Any]:
    """Build, sweep, pipeline and filtered ConG for one world and seed; cached in seed.json."""
    rep = or_null(reporter)
    run_dir = _seed_dir(cfg, world, seed)
    done_path = run_dir / "seed.json"
    if done_path.exists():
        cached: dict[str, Any] = read_json(done_path)
        return cached
    run_dir.mkdir(parents=True, exist_ok=True)
    t: dict[str, float] = {}
    t0 = time.time()
    m = build(world, seed, cfg.data_dir, reporter=rep, size=cfg.size, device=cfg.device)
    if m.get("stopped"):
        return m
    t["build"] = time.time() - t0
    t0 = time.time()
    sweep = _sweep(cfg, m, seed, run_dir, rep)
    if sweep.get("stopped"):
        return {"stopped": True}
    t["sweep"] = time.time() - t0
    out: dict[str, Any] = {"world": world, "seed": seed, "manifest": m["root"], "sweep": sweep, "strong": {}}
    if cfg.strong:
        t0 = time.time()
        res = _pipeline(cfg, m, seed, run_dir, rep)
        if res.get("stopped"):
            return {"stopped": True}
        for name, row in res["methods"].items():
            out["strong"][name] = {
                k: row.get(k)
                for k in (
                    "gold_mean",
                    "gold_ci",
                    "valid_rate",
                    "implicit_mean",
                    "n",
                    "win_rate_vs_weak_sft",
                    "pgr",
                    "truncated_rate",
                )
            }
        t["pipeline"] = time.time() - t0
        if "cong_filtered" in out["strong"]:
            done = read_json(run_dir / "pipeline" / "dpo_cong_filtered" / "DONE.json")
            out["strong"]["cong_filtered"]["n_pairs_kept"] = done.get("n_pairs")
            # Part of the pipeline's time; listed apart as before.
            t["cong_filtered"] = sum(
                res["stages"].get(k, {}).get("seconds", 0.0) for k in ("dpo_cong_filtered", "eval/cong_filtered")
            )
        out["cd_chosen_win_rate"] = _chosen_win_rate(m, run_dir)
    out["seconds"] = {k: round(v, 1) for k, v in t.items()}
    write_json(done_path, out)
    return out


def _chosen_win_rate(m: dict[str, Any], run_dir: Path) -> float | None:
    """Share of ConG's DPO pairs where the CD 'chosen' beats the strong model's own sample by gold."""
    from ml.gold import get_gold
    from ml.io import read_jsonl

    pipe = run_dir / "pipeline"
    cd, own = pipe / "cd_generate" / "samples.jsonl", pipe / "self_sample" / "samples.jsonl"
    if not (cd.exists() and own.exists()):
        return None
    g = get_gold(m["gold"])
    own_by = {(r["prompt"]): r["response"] for r in read_jsonl(own)}
    scores: list[float] = []
    for r in read_jsonl(cd):
        if r["prompt"] in own_by:
            a, b = g(r["prompt"], r["response"]), g(r["prompt"], own_by[r["prompt"]])
            scores.append(1.0 if a > b else 0.5 if a == b else 0.0)
    return sum(scores) / len(scores) if scores else None


# ------------------------------------------------------------------------------------------------
# Aggregation over seeds


def _over_seeds(values: list[float], fallback_ci: list[float] | None = None) -> tuple[float, list[float], str]:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if len(vals) >= 2:
        s = mean_ci(vals)
        return s.mean, [s.lo, s.hi], "seeds"
    if len(vals) == 1:
        return vals[0], list(fallback_ci or [vals[0], vals[0]]), "samples"
    return float("nan"), [float("nan"), float("nan")], "none"


def _agg(rows: list[dict[str, Any]]) -> dict[str, Any]:
    mean, ci, over = _over_seeds([r["gold_mean"] for r in rows], rows[0]["gold_ci"] if len(rows) == 1 else None)
    imp: list[float] = [r["implicit_mean"] for r in rows if r.get("implicit_mean") is not None]
    return {
        "gold_mean": mean,
        "gold_ci": ci,
        "ci_over": over,
        "valid_rate": sum(r["valid_rate"] for r in rows) / len(rows),
        "implicit_mean": sum(imp) / len(imp) if imp else None,
        "per_seed": [r["gold_mean"] for r in rows],
        # The mean over seeds of each seed's share of cut answers (None where no seed says).
        "truncated_rate": _mean_of(rows, "truncated_rate"),
    }


def _mean_of(rows: list[dict[str, Any]], key: str) -> float | None:
    vals = [r[key] for r in rows if r.get(key) is not None]
    return sum(vals) / len(vals) if vals else None


PAIRED_BASELINES = ("weak_sft", "cong_s")  # each strong method's gold is also reported minus these, paired by seed


def _paired(seeds: list[dict[str, Any]], methods: list[str]) -> dict[str, dict[str, Any]]:
    """Each method's gold minus each baseline's, seed by seed (one seed's methods share its weak pair, data and
    strong base, so the difference cancels what varies between seeds), with a t interval over the seeds."""
    gold = {k: {s["seed"]: s["strong"][k]["gold_mean"] for s in seeds} for k in methods}
    return {
        k: {f"minus_{b}": paired_diff(gold[k], gold[b]) for b in PAIRED_BASELINES if b in gold and b != k}
        for k in methods
    }


def aggregate(world: str, seeds: list[dict[str, Any]], cfg: ReportConfig) -> dict[str, Any]:
    wd = get_world(world)
    w: dict[str, Any] = {
        "description": wd.description,
        "seeds": [s["seed"] for s in seeds],
        # Labeler is not evaluator: weak alignment's pairs were labelled by the proxy, everything is scored by gold.
        "gold": wd.gold_name,
        "label_gold": wd.label_gold_name,
        "label_gold_description": wd.proxy_description,
    }
    w["pre"] = _agg([s["sweep"]["pre"] for s in seeds])
    w["plain_post"] = _agg([s["sweep"]["plain_post"] for s in seeds])
    w["alpha_sweep"] = []
    for i, a in enumerate(cfg.alphas):
        w["alpha_sweep"].append({"alpha": a, **_agg([s["sweep"]["cd"][i] for s in seeds])})
    for name in cfg.ablations:
        if all(name in s.get("ablations", {}) for s in seeds):
            w[f"alpha_sweep_{name}"] = [
                {"alpha": a, **_agg([s["ablations"][name]["cd"][i] for s in seeds])} for i, a in enumerate(cfg.alphas)
            ]
            # Paired by seed: each seed's ablated CD and its default CD share prompts, sampling seed and models.
            w[f"alpha_sweep_{name}_minus_default"] = [
                {
                    "alpha": a,
                    **paired_diff(
                        {s["seed"]: s["ablations"][name]["cd"][i]["gold_mean"] for s in seeds},
                        {s["seed"]: s["sweep"]["cd"][i]["gold_mean"] for s in seeds},
                    ),
                }
                for i, a in enumerate(cfg.alphas)
            ]
    rs = [s["sweep"]["implicit_gold_pearson"] for s in seeds]
    if len(seeds) > 1:  # over seeds, averaged as Fisher z (correlations are not averaged as they are)
        z = fisher_z_mean_ci([r for r in rs if r is not None])
        w["implicit_gold_pearson"], w["implicit_gold_pearson_ci"] = z.mean, [z.lo, z.hi]
    else:  # one seed: its own interval from its samples (ml.diagnose)
        w["implicit_gold_pearson"] = rs[0]
        w["implicit_gold_pearson_ci"] = seeds[0]["sweep"].get("implicit_gold_pearson_ci") or [rs[0], rs[0]]
    w["implicit_gold_pearson_per_seed"] = [s["sweep"]["implicit_gold_pearson"] for s in seeds]
    if seeds[0]["strong"]:
        w["strong"] = {
            k: _agg([s["strong"][k] for s in seeds])
            for k in (*STRONG_METHODS, *EXTRA_METHODS)
            if all(k in s["strong"] for s in seeds)
        }
        # PGR over seeds is the gap recovered by the mean gold (a ratio of means): a mean of per-seed ratios blows up
        # in a seed whose ceiling barely beats pi_post. The per-seed values stay beside it.
        for k, g in pgr(w["strong"]).items():
            w["strong"][k]["pgr_per_seed"] = [s["strong"][k].get("pgr") for s in seeds]
            w["strong"][k]["pgr"] = g
        w["paired"] = _paired(seeds, list(w["strong"]))
        cw: list[float] = [s["cd_chosen_win_rate"] for s in seeds if s.get("cd_chosen_win_rate") is not None]
        w["cong_dpo_chosen_win_rate"] = sum(cw) / len(cw) if cw else None
    else:
        w["strong"] = {}
    # The verdict the pre-flight diagnostic gives on the pooled sweep, and per seed.
    # Gains paired by seed (each seed's CD vs its own plain pi_post), Student-t over seeds.
    w["verdict"] = verdict_over_seeds([s["sweep"] for s in seeds], cfg.cd_alpha)
    w["verdict_per_seed"] = [verdict(s["sweep"], cfg.cd_alpha)["verdict"] for s in seeds]
    w["seconds_per_seed"] = [
        {**s.get("seconds", {}), **{f"ablation_{k}": v.get("seconds", 0.0) for k, v in s.get("ablations", {}).items()}}
        for s in seeds
    ]
    return w


def _run_unit(cfg: ReportConfig, world: str, seed: int) -> bool:
    """One world and seed in a worker process: run_seed and the ablations, cached on disk like the
    sequential path, which then reads them back. Returns False when stopped."""
    import torch

    torch.set_num_threads(1)
    s = run_seed(cfg, world, seed)
    if s.get("stopped"):
        return False
    return not _with_ablations(cfg, world, seed, s, or_null(None)).get("stopped")


def _run_parallel(cfg: ReportConfig, rep: Reporter) -> None:
    """Fill the per-seed caches with ``cfg.jobs`` processes (spawned: no forked torch state)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    units = [
        (w, s)
        for w in cfg.worlds
        for s in range(cfg.seeds)
        if not all(
            (_seed_dir(cfg, w, s) / f).exists() for f in ("seed.json", *(f"sweep_{a}.json" for a in cfg.ablations))
        )
    ]
    if not units:
        return
    rep.log(f"toyworld report: {len(units)} world/seed runs on {min(cfg.jobs, len(units))} processes")
    with ProcessPoolExecutor(max_workers=min(cfg.jobs, len(units)), mp_context=mp.get_context("spawn")) as pool:
        futures = {pool.submit(_run_unit, cfg, w, s): (w, s) for w, s in units}
        for n, fut in enumerate(as_completed(futures), start=1):
            fut.result()  # a failure in a worker surfaces here with its traceback
            rep.progress("toyworld/report", n, len(units))


def report(cfg: ReportConfig, reporter: Reporter | None = None, command: str = "") -> dict[str, Any]:
    rep = or_null(reporter)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    result: dict[str, Any] = {"config": asdict(cfg), "command": command, "worlds": {}}
    if cfg.jobs > 1:
        _run_parallel(cfg, rep)
    for world in cfg.worlds:
        seeds: list[dict[str, Any]] = []
        for seed in range(cfg.seeds):
            rep.log(f"toyworld report: {world} seed {seed}")
            s = run_seed(cfg, world, seed, rep)
            if s.get("stopped"):
                return {"stopped": True, "world": world, "seed": seed}
            s = _with_ablations(cfg, world, seed, s, rep)
            if s.get("stopped"):
                return {"stopped": True, "world": world, "seed": seed}
            seeds.append(s)
        result["worlds"][world] = aggregate(world, seeds, cfg)
    result["seconds"] = round(time.time() - t0, 1)
    # A rerun reuses each world/seed's cached result: its own wall time is short, so the time the reused runs
    # took when they were made (summed over them; with --jobs N they overlapped) is reported beside it.
    result["seconds_computed"] = round(
        sum(sum(s.values()) for w in result["worlds"].values() for s in w["seconds_per_seed"]), 1
    )
    write_json(out / "report.json", result)
    plots = make_plots(result, out)
    (out / "REPORT.md").write_text(markdown(result, plots), encoding="utf-8")
    rep.log(f"toyworld report: {out / 'REPORT.md'}")
    return result
