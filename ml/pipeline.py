"""The whole ConG experiment in one call: weak alignment (optional), data generation, every requested
method's training, and evaluation of each method with the gold reward.

Stages run in this order, each under output_dir/<stage>/ (every stage is idempotent, so a rerun after a
crash or a stop skips what finished and resumes the one in progress):

    weak_align      pi_pre -> pi_post by DPO on gold-labelled pi_pre samples   (only if weak_aligned is unset)
    cd_generate     CD samples of (pi_post, pi_pre) on the training prompts     (cong_s, cong)
    plain_generate  plain pi_post samples on the same prompts                   (weak_sft, wspo, auxconf;
                    and beside CD unless plain=false: each pair's review side)
    sft_cong_s      SFT of the strong model on CD samples = ConG-S               (cong_s, cong)
    self_sample     ConG-S's own responses on the training prompts               (cong)
    dpo_cong        DPO: chosen = CD sample, rejected = own sample = ConG         (cong)
    dpo_cong_filtered  the same DPO keeping only pairs whose chosen has the higher
                    implicit reward (a measured option, never the paper's recipe) (cong_filtered)
    sft_weak        SFT of the strong model on plain samples = WeakSFT           (weak_sft)
    wspo            WSPO baseline on the plain samples                           (wspo)
    auxconf         AuxConf baseline on the plain samples                        (auxconf)
    eval/<method>   held-out prompts, gold reward, win rate vs WeakSFT           (every method)

Results: output_dir/results.json and output_dir/results.md (a table).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from ml.distributed import TrainingRunner, run_here
from ml.io import SAMPLES, read_json, write_json
from ml.model_card import write_model_cards
from ml.pipeline_config import (
    CD_METHODS,
    DEFAULT_METHODS,
    LABELS,
    METHODS,
    PAIRS_METHODS,
    PICKED_METHODS,
    PLAIN_METHODS,
    PipelineConfig,
)
from ml.pipeline_refs import pgr, reference_models
from ml.reporter import Reporter, or_null
from ml.results import RESULTS_VERSION, results_markdown
from ml.shards import GenerationRunner, run_whole

# The methods and the config live in ml.pipeline_config; callers find them here, where they always were.
__all__ = [
    "CD_METHODS",
    "DEFAULT_METHODS",
    "LABELS",
    "METHODS",
    "PAIRS_METHODS",
    "PICKED_METHODS",
    "PLAIN_METHODS",
    "PipelineConfig",
    "check",
    "run",
]


class _Stopped(Exception):
    def __init__(self, stage: str, summary: dict[str, Any]) -> None:
        super().__init__(stage)
        self.stage, self.summary = stage, summary


class _StageConfig(Protocol):
    output_dir: str


_Cfg = TypeVar("_Cfg", bound=_StageConfig)


class _Runner:
    def __init__(
        self,
        config: PipelineConfig,
        reporter: Reporter,
        dry: bool = False,
        generation: GenerationRunner | None = None,
        training: TrainingRunner | None = None,
    ) -> None:
        self.c = config
        self.r = reporter
        self.dry = dry
        self.generation = generation or run_whole
        self.training = training or run_here
        self.planned: dict[str, Any] = {}
        self.out = Path(config.output_dir)
        self.timings_path = self.out / "timings.json"
        self.timings: dict[str, Any] = read_json(self.timings_path) if not dry and self.timings_path.exists() else {}

    def dir(self, name: str) -> str:
        return str(self.out / name)

    def stage(
        self, name: str, fn: Callable[[_Cfg, Reporter], dict[str, Any]], cfg: _Cfg, *, generation: bool = False
    ) -> dict[str, Any]:
        """Run (or resume) one stage; a generation stage goes through the generation runner (whole or sharded), a
        training stage through the training runner (here, or launched on several processes: ml.distributed)."""
        from ml.io import stage_done

        self.planned[name] = cfg  # check() returns them; run() writes each trained model's card from them
        if self.dry:  # check(): every stage config was built (and validated); nothing runs
            return {"model_dir": str(Path(cfg.output_dir) / "model"), "samples": str(Path(cfg.output_dir) / SAMPLES)}
        cached = stage_done(cfg.output_dir) is not None
        if not cached:
            self.r.log(f"pipeline: stage {name}")
        t0 = time.time()
        summary = self.generation(name, fn, cfg, self.r) if generation else self.training(name, fn, cfg, self.r)
        if summary.get("stopped"):
            raise _Stopped(name, summary)
        if not cached or name not in self.timings:
            self.timings[name] = {"seconds": round(time.time() - t0, 3)}
            write_json(self.timings_path, self.timings)
        return summary

    def train_kw(self, overrides: dict[str, Any]) -> dict[str, Any]:
        kw: dict[str, Any] = {
            "seed": self.c.seed,
            "device": self.c.device,
            "use_chat_template": self.c.use_chat_template,
            "distributed": self.c.distributed,
        }
        if self.c.train_max_steps > 0:
            kw["max_steps"] = self.c.train_max_steps
        return {**kw, **overrides}

    def strong_kw(self, overrides: dict[str, Any]) -> dict[str, Any]:
        return self.train_kw({"lora_r": self.c.lora_r, **overrides})

    def decoding(self, **extra: Any) -> dict[str, Any]:
        return {
            "seed": self.c.seed,
            "max_new_tokens": self.c.max_new_tokens,
            "use_chat_template": self.c.use_chat_template,
            **self.c.generate,
            **extra,
        }


def check(config: PipelineConfig) -> dict[str, Any]:
    """Build every stage config the pipeline would run, without running or writing anything.

    The same code path as run(), so a setting that would fail a stage's validation fails here, before any
    compute is spent (the web app calls this at submit). Returns {stage name: its config}."""
    R = _Runner(config, or_null(None), dry=True)
    _execute(config, R)
    return R.planned


def run(
    config: PipelineConfig,
    reporter: Reporter | None = None,
    *,
    generation: GenerationRunner | None = None,
    training: TrainingRunner | None = None,
) -> dict[str, Any]:
    """Run (or resume) the pipeline; returns the results dict (also in output_dir/results.json), or
    {"stopped": True, "stage": ...} when the reporter asked to stop. ``generation`` runs the generation stages
    (ml.shards: whole by default), ``training`` the training stages (ml.distributed: in this process by default)."""
    c = config
    rep = or_null(reporter)
    R = _Runner(c, rep, generation=generation, training=training)
    R.out.mkdir(parents=True, exist_ok=True)
    write_json(R.out / "config.json", c.to_dict())
    t_start = time.time()
    try:
        weak_aligned, models, metrics = _execute(c, R)
    except _Stopped as stop:
        rep.log(f"pipeline: stopped during {stop.stage}; rerun to resume")
        return {"stopped": True, "stage": stop.stage, "summary": stop.summary}

    results = {
        "results_version": RESULTS_VERSION,  # the layout ml.results reads (results.json and the job's results)
        "config": c.to_dict(),
        "weak_aligned": weak_aligned,
        "methods": _with_pgr({m: _method_row(m, metrics[m], models[m], bool(c.judge)) for m in c.methods}),
        "stages": R.timings,
        "seconds": round(time.time() - t_start, 3),
    }
    write_json(R.out / "results.json", results)
    (R.out / "results.md").write_text(results_markdown(results), encoding="utf-8")
    write_model_cards(R.planned, results)  # a README.md in each model folder a stage trained (ml.model_card)
    rep.log(f"pipeline: results in {R.out / 'results.md'}")
    return results


def _execute(c: PipelineConfig, R: _Runner) -> tuple[str, dict[str, str], dict[str, dict[str, Any]]]:
    """The stages in order; returns (pi_post folder, model folder per method, evaluation per method)."""
    from ml.stages.auxconf import AuxConfConfig, auxconf
    from ml.stages.dpo import DPOStageConfig, dpo
    from ml.stages.evaluate import EvaluateConfig, evaluate
    from ml.stages.generate import CDGenerateConfig, PlainGenerateConfig, cd_generate, plain_generate
    from ml.stages.self_sample import SelfSampleConfig, self_sample
    from ml.stages.sft import SFTStageConfig, sft
    from ml.stages.weak_align import WeakAlignConfig, weak_align
    from ml.stages.wspo import WSPOConfig, wspo

    methods = set(c.methods)
    models: dict[str, str] = {}
    weak_aligned = c.weak_aligned
    if not weak_aligned:
        wa = WeakAlignConfig(
            **R.train_kw(
                {
                    "model": c.weak_base,
                    "output_dir": R.dir("weak_align"),
                    "prompts": c.train_prompts,
                    "gold": c.gold,
                    "max_prompts": c.max_prompts,
                    "max_new_tokens": c.max_new_tokens,
                    **c.weak_align,
                }
            )
        )
        weak_aligned = R.stage("weak_align", weak_align, wa)["model_dir"]
    common: dict[str, Any] = {"prompts": c.train_prompts, "max_prompts": c.max_prompts, "device": c.device}

    if c.pairs:  # reviewed pairs replace the weak pair's generation (a train job's pairs_from)
        models.update(_train_on_pairs(c, R, weak_aligned))
    cong = methods & CD_METHODS if not c.pairs else set()
    if cong:
        cd_cfg = CDGenerateConfig(
            aligned=weak_aligned,
            base=c.weak_base,
            output_dir=R.dir("cd_generate"),
            cd=R.decoding(alpha=c.alpha),  # type: ignore[arg-type]  # a dict of CDConfig fields: __post_init__ coerces it
            **common,
        )
        cd_samples = R.stage("cd_generate", cd_generate, cd_cfg, generation=True)["samples"]
    plain = ""
    if methods & PLAIN_METHODS or (cong and c.plain):
        # Plain pi_post on the training prompts: the baselines' data, and the side each CD pair is reviewed against;
        # made right after CD, so both sides of a pair are there before any training starts.
        pg = PlainGenerateConfig(
            model=weak_aligned,
            base=c.weak_base,
            output_dir=R.dir("plain_generate"),
            sampling=R.decoding(),  # type: ignore[arg-type]  # a dict of CDConfig fields: __post_init__ coerces it
            **common,
        )
        plain = R.stage("plain_generate", plain_generate, pg, generation=True)["samples"]

    if cong:
        s = SFTStageConfig(
            **R.strong_kw({"model": c.strong, "output_dir": R.dir("sft_cong_s"), "data": cd_samples, **c.sft})
        )
        models["cong_s"] = R.stage("sft_cong_s", sft, s)["model_dir"]
        if methods & {"cong", "cong_filtered"}:
            ss = SelfSampleConfig(
                **{
                    "model": models["cong_s"],
                    "prompts": c.train_prompts,
                    "output_dir": R.dir("self_sample"),
                    "max_prompts": c.max_prompts,
                    "max_new_tokens": c.max_new_tokens,
                    "seed": c.seed,
                    "device": c.device,
                    "use_chat_template": c.use_chat_template,
                    **c.self_sample,
                }
            )
            own = R.stage("self_sample", self_sample, ss, generation=True)["samples"]
            dpo_kw = {
                "model": models["cong_s"],
                "chosen_data": cd_samples,
                "rejected_data": own,
                "weak_aligned": weak_aligned,
                "weak_base": c.weak_base,
                **c.dpo,
            }
            if "cong" in methods:
                d = DPOStageConfig(**R.strong_kw({**dpo_kw, "output_dir": R.dir("dpo_cong")}))
                models["cong"] = R.stage("dpo_cong", dpo, d)["model_dir"]
            if "cong_filtered" in methods:
                # Same ConG-S model, same (CD chosen, own rejected) pairs; only the filter differs.
                d = DPOStageConfig(
                    **R.strong_kw(
                        {**dpo_kw, "output_dir": R.dir("dpo_cong_filtered"), "filter_by_implicit_reward": True}
                    )
                )
                models["cong_filtered"] = R.stage("dpo_cong_filtered", dpo, d)["model_dir"]

    if "weak_sft" in methods:
        s = SFTStageConfig(**R.strong_kw({"model": c.strong, "output_dir": R.dir("sft_weak"), "data": plain, **c.sft}))
        models["weak_sft"] = R.stage("sft_weak", sft, s)["model_dir"]
    if "wspo" in methods:
        data, field_name = _wspo_data(c, R, weak_aligned, plain)
        w = WSPOConfig(
            **R.strong_kw(
                {
                    "model": c.strong,
                    "output_dir": R.dir("wspo"),
                    "data": data,
                    "response_field": field_name,
                    "weak_aligned": weak_aligned,
                    "weak_base": c.weak_base,
                    **c.wspo,
                }
            )
        )
        models["wspo"] = R.stage("wspo", wspo, w)["model_dir"]
    if "auxconf" in methods:
        a = AuxConfConfig(
            **R.strong_kw({"model": c.strong, "output_dir": R.dir("auxconf"), "data": plain, **c.auxconf})
        )
        models["auxconf"] = R.stage("auxconf", auxconf, a)["model_dir"]
    if "weak_sft_1ep" in methods:
        s = SFTStageConfig(
            **R.strong_kw(
                {"model": c.strong, "output_dir": R.dir("sft_weak_1ep"), "data": plain, **c.sft, "num_train_epochs": 1}
            )
        )
        models["weak_sft_1ep"] = R.stage("sft_weak_1ep", sft, s)["model_dir"]
    models.update(reference_models(c, R, weak_aligned, common))  # best_of_n, ceiling (ml.pipeline_refs)
    models["strong_base"] = c.strong
    models["weak_post"] = weak_aligned

    # Evaluate WeakSFT first: the others' win rates are measured against its samples.
    order = sorted(c.methods, key=lambda m: (m != "weak_sft", METHODS.index(m)))
    reference = str(R.out / "eval" / "weak_sft" / SAMPLES) if "weak_sft" in methods else ""
    metrics: dict[str, dict[str, Any]] = {}
    for m in order:
        ev = EvaluateConfig(
            **{
                "output_dir": R.dir(f"eval/{m}"),
                "gold": c.eval_gold or c.gold,
                "model": models[m],
                "prompts": c.eval_prompts,
                "name": m,
                "max_prompts": c.max_eval_prompts,
                "max_new_tokens": c.max_new_tokens,
                "seed": c.seed,
                "device": c.device,
                "use_chat_template": c.use_chat_template,
                "weak_aligned": weak_aligned,
                "weak_base": c.weak_base,
                "reference": reference if m != "weak_sft" else "",
                "reference_name": "weak_sft",
                "judge": c.judge,  # used where there is a reference: every method but weak_sft
                **c.evaluate,
            }
        )
        metrics[m] = R.stage(f"eval/{m}", evaluate, ev, generation=True)
    return weak_aligned, models, metrics


def _train_on_pairs(c: PipelineConfig, R: _Runner, weak_aligned: str) -> dict[str, str]:
    """ConG's two steps on reviewed pairs: SFT of the strong model on the chosen side (ConG-S), then DPO on the
    pairs as they are (ConG), the same rows the job's export gives."""
    from ml.stages.dpo import DPOStageConfig, dpo
    from ml.stages.sft import SFTStageConfig, sft

    s = SFTStageConfig(
        **R.strong_kw(
            {"model": c.strong, "output_dir": R.dir("sft_cong_s"), "data": c.pairs, "response_field": "chosen", **c.sft}
        )
    )
    models = {"cong_s": R.stage("sft_cong_s", sft, s)["model_dir"]}
    if "cong" in c.methods:
        d = DPOStageConfig(
            **R.strong_kw(
                {
                    "model": models["cong_s"],
                    "output_dir": R.dir("dpo_cong"),
                    "data": c.pairs,
                    "weak_aligned": weak_aligned,
                    "weak_base": c.weak_base,
                    **c.dpo,
                }
            )
        )
        models["cong"] = R.stage("dpo_cong", dpo, d)["model_dir"]
    return models


def _wspo_data(c: PipelineConfig, R: _Runner, weak_aligned: str, plain: str) -> tuple[str, str]:
    """(file, response field) WSPO trains on: by default the chosen side of the weak preference data pi_post was
    aligned on (the reference's choice), found beside pi_post's folder when weak_align made it; else, or with
    wspo_data "plain", the plain pi_post samples (said in the log, so a run's choice is on record)."""
    prefs = Path(weak_aligned).parent / "preferences.jsonl"
    if c.wspo_data == "weak_chosen" and (prefs.exists() or (R.dry and not c.weak_aligned)):
        return str(prefs), "chosen"
    if c.wspo_data == "weak_chosen" and not R.dry:
        R.r.log(f"pipeline: wspo: no weak preference data beside pi_post ({prefs}); training on plain pi_post samples")
    return plain, "response"


def _with_pgr(rows: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    gaps = pgr(rows)  # None everywhere unless both weak_post and ceiling were evaluated
    return {m: {**r, "pgr": gaps[m]} for m, r in rows.items()}


def _method_row(name: str, m: dict[str, Any], model: str, judged: bool = False) -> dict[str, Any]:
    row: dict[str, Any] = {
        "label": LABELS[name],
        "gold_mean": m["gold_mean"],
        "gold_ci": m["gold_ci"],
        "valid_rate": m["valid_rate"],
        "implicit_mean": m.get("implicit_mean"),
        "n": m["n"],
        "truncated_rate": m.get("truncated_rate"),  # its evaluation answers cut at max_new_tokens
        "model": model,
    }
    row["win_rate_vs_weak_sft"] = 0.5 if name == "weak_sft" else m.get("win_rate_vs_weak_sft")
    if judged:  # the pairwise judge's verdicts against weak_sft (its own: 0.5, both orders on identical answers)
        for k in ("judge_win_rate", "judge_lc_win_rate"):
            row[k], row[f"{k[:-5]}_ci"] = (0.5, [0.5, 0.5]) if name == "weak_sft" else (m.get(k), m.get(f"{k[:-5]}_ci"))
    return row
