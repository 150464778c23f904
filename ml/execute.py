"""Run a job's spec: the one path from a resolved spec (ml.resolve) to the stages, for the web worker and the CLI.

``execute(spec, inputs, reporter, on_generation=...)`` builds the kind's configs (ml.resolve.build) and runs them.
``on_generation(samples_path, index_offset, side)`` is called before each stage that writes a side of the generated
pairs (ml.io.PAIR_SIDES: the CD response, the plain pi_post sample, the strong model's own sample), so a caller
can follow the file as it grows (the web worker mirrors rows into its database). ``generation`` runs each
generation stage, whole (the default) or in shards (ml.shards; the web worker spreads shards over its workers).
The training stages run as the spec's execution says: in this process, or on ``gpus`` processes in the
``distributed`` mode (ml.distributed).
The result is the stage's (or pipeline's) summary dict, with ``{"stopped": True, ...}`` when the reporter asked to stop.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ml.distributed import DEFAULT_MODE, training_runner
from ml.io import PAIR_SIDES, SAMPLES
from ml.reporter import Reporter, or_null
from ml.resolve import JobInputs, build
from ml.results import stamp
from ml.shards import GenerationRunner, run_whole

OnGeneration = Callable[[str, int, str], None]


def _noop(path: str, offset: int, side: str) -> None:
    return None


def execute(
    spec: dict[str, Any],
    inputs: JobInputs,
    reporter: Reporter | None = None,
    *,
    on_generation: OnGeneration | None = None,
    generation: GenerationRunner | None = None,
) -> dict[str, Any]:
    """Run the spec; the result is stamped with its layout's version and kind (ml.results reads it)."""
    return stamp(
        spec["kind"], _run(spec, inputs, reporter, on_generation=on_generation, generation=generation or run_whole)
    )


def _run(
    spec: dict[str, Any],
    inputs: JobInputs,
    reporter: Reporter | None = None,
    *,
    on_generation: OnGeneration | None = None,
    generation: GenerationRunner = run_whole,
) -> dict[str, Any]:
    rep = or_null(reporter)
    hook = on_generation or _noop
    built = build(spec, inputs)
    kind = spec["kind"]
    execution = spec.get("execution") or {}
    training = training_runner(execution.get("gpus", 1), execution.get("distributed", DEFAULT_MODE))
    if "pipeline" in built:
        from ml.pipeline import CD_METHODS, run

        cfg = built["pipeline"]
        if CD_METHODS & set(cfg.methods):  # the CD samples make pairs; the other stages fill their other sides
            for stage, side in PAIR_SIDES.items():  # the pipeline's stage folders carry the stages' names
                hook(str(Path(cfg.output_dir) / stage / SAMPLES), 0, side)
        return run(cfg, rep, generation=generation, training=training)
    if kind == "cd_generate":
        return _cd_job(built["cd_generate"], rep, hook, generation)
    if kind == "alpha_sweep":
        return _sweep(built["alphas"], inputs, rep, hook, generation)
    if kind == "weak_align":
        from ml.model_card import write_model_cards
        from ml.stages.weak_align import weak_align

        out = training("weak_align", weak_align, built["weak_align"], rep)
        write_model_cards({"weak_align": built["weak_align"]})  # pi_post's README.md, once it is trained
        return out
    if kind == "evaluate":
        from ml.stages.evaluate import evaluate

        return generation("evaluate", evaluate, built["evaluate"], rep)
    if kind == "preflight":
        from ml.diagnose import preflight_dirs

        p = built["preflight"]
        out = preflight_dirs(
            inputs.weak_aligned,
            inputs.weak_base,
            inputs.prompts,
            inputs.gold,
            n_prompts=p.max_prompts,
            reporter=rep,
            n=p.n_samples,
            seed=p.seed,
            max_new_tokens=p.max_new_tokens,
            alphas=built["alphas"],
            decision_alpha=built["decision_alpha"],
            use_chat_template=p.use_chat_template,
            cd_overrides=built["cd_overrides"],
        )
        if not out.get("stopped"):
            rep.log(f"pre-flight verdict: {out['verdict']}: {out['message']}")
        return out
    raise ValueError(f"no runner for kind {kind!r}")


def _cd_job(cfg: Any, rep: Reporter, hook: OnGeneration, generation: GenerationRunner) -> dict[str, Any]:
    """The CD job: CD samples, then (unless ``plain`` is off) plain pi_post samples for the same prompts, the side
    each pair is reviewed against. The result is CD's summary, with the plain samples' under "plain"."""
    from ml.stages.generate import cd_generate, plain_generate

    hook(str(Path(cfg.output_dir) / SAMPLES), 0, PAIR_SIDES["cd_generate"])
    out = generation("cd_generate", cd_generate, cfg, rep)
    if out.get("stopped") or not cfg.plain:
        return dict(out)
    plain = cfg.plain_config(str(Path(cfg.output_dir).parent / "plain_generate"))
    hook(str(Path(plain.output_dir) / SAMPLES), 0, PAIR_SIDES["plain_generate"])
    p = generation("plain_generate", plain_generate, plain, rep)
    if p.get("stopped"):
        return {**p, "stage": "plain_generate"}
    return {**out, "plain": {k: v for k, v in p.items() if not isinstance(v, (list, dict))}}


def _sweep(
    runs: list[dict[str, Any]], inputs: JobInputs, rep: Reporter, hook: OnGeneration, generation: GenerationRunner
) -> dict[str, Any]:
    from ml.io import read_prompts
    from ml.stages.evaluate import evaluate
    from ml.stages.generate import cd_generate

    rows: list[dict[str, Any]] = []
    # Every alpha runs the same prompts (one max_prompts for all): count them once.
    n = len(read_prompts(inputs.prompts, runs[0]["cd_generate"].max_prompts)) if runs else 0
    for k, run in enumerate(runs):
        cd = run["cd_generate"]
        # Checked before each alpha too: a finished alpha returns at once (resumed), so a long list of quick
        # alphas would never reach the stage's own between-batch check.
        if rep.should_stop():
            return {"stopped": True, "stage": f"cd_generate_{run['tag']}", "alphas": rows}
        hook(str(Path(cd.output_dir) / SAMPLES), k * n, PAIR_SIDES["cd_generate"])  # alpha k: indexes k*n ...
        s = generation(f"cd_generate_{run['tag']}", cd_generate, cd, rep)
        if s.get("stopped"):
            return {"stopped": True, "stage": f"cd_generate_{run['tag']}", "alphas": rows}
        m = generation(f"evaluate_{run['tag']}", evaluate, run["evaluate"], rep)
        if m.get("stopped"):
            return {"stopped": True, "stage": f"evaluate_{run['tag']}", "alphas": rows}
        scalars = {key: v for key, v in m.items() if not isinstance(v, (list, dict))}
        # The CD samples' mean implicit reward (summed over tokens, as the pipeline's evaluations report it).
        rows.append(
            {
                "alpha": run["alpha"],
                **scalars,
                "gold_ci": m.get("gold_ci"),
                "implicit_mean": s.get("mean_implicit_reward"),
            }
        )
        rep.metric("sweep_gold_mean", m.get("gold_mean", float("nan")), k)
    return {"alphas": rows}
