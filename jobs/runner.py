"""Runs one Job inside a worker: claim it, map its config onto ml stage configs, run them with a
ProgressReporter, heartbeat while running, mirror generated pairs into the database, record the end.

Layout: every job writes under RUNS_DIR/<job_id>/<stage>/. ml stages are idempotent and resumable, so
a second attempt (after a worker died) skips finished stages and continues the one in progress; the
pair mirror is idempotent too (unique (job, prompt_index)), so nothing is stored twice.
"""

from __future__ import annotations

import logging
import traceback
from pathlib import Path

from django.conf import settings

from jobs import selectors, services
from jobs.models import Artifact, GeneratedPair, Job
from jobs.progress import ProgressReporter
from jobs.tracking import TrackingReporter
from jobs.worker_io import Heartbeat, PairMirror, job_gold
from ml.io import jsonable
from ml.reporter import Reporter

log = logging.getLogger(__name__)


def run_dir(job: Job) -> Path:
    return Path(settings.RUNS_DIR) / str(job.pk)


def run_spec(job: Job, rep: Reporter, mirrors: list[PairMirror], *, task_id: str = "", worker: str = "") -> dict:
    """Run the job's spec through ml (ml.execute: the same path as `python -m ml job`), mirroring every
    generation stage's rows as they appear, then record what it made. Generation stages go through the
    Coordinator: whole on this worker, or in shards spread over the live workers (jobs.sharding)."""
    from jobs.sharding import Coordinator
    from ml.execute import execute

    gold = job_gold(job)
    spec = selectors.job_spec(job=job)
    requested = (spec.get("execution") or {}).get("shards", "auto")
    coordinator = Coordinator(job, requested=requested, task_id=task_id, worker=worker, gold=gold)

    def on_generation(path: str, index_offset: int, side: str) -> None:
        samples = Path(path)
        mirrors.append(PairMirror(job.pk, samples, index_offset, gold=gold, worker=worker, side=side))
        coordinator.offsets[str(samples.parent)] = index_offset
        services.artifact_record(job_id=job.pk, stage=samples.parent.name, kind="samples", path=str(samples))

    out = run_dir(job)
    inputs = services.job_inputs(job.config, str(out))
    reviewed: dict = {}
    if inputs.pairs:  # pairs_from: its sources' pairs as reviewed, written once (a retry trains on the same rows)
        reviewed = services.pairs_training_file(job=job, path=inputs.pairs)
        rep.log(
            f"training on {reviewed['train_examples']} reviewed pairs of job(s) {', '.join(reviewed['review'])} "
            f"({inputs.pairs})"
        )
    result = execute(spec, inputs, rep, on_generation=on_generation, generation=coordinator)
    for m in mirrors:
        m.sync()
    result = {**result, **reviewed, **_gold_labels(job)}
    if result.get("stopped"):
        return result
    if job.kind == Job.Kind.EVALUATE and result.get("samples"):
        services.artifact_record(job_id=job.pk, stage="evaluate", kind="samples", path=result["samples"])
    if job.kind in (Job.Kind.CONG, Job.Kind.TRAIN):
        services.artifact_record(job_id=job.pk, stage="pipeline", kind="results", path=str(out / "results.json"))
        for m, row in (result.get("methods") or {}).items():
            if row.get("model"):
                services.artifact_record(job_id=job.pk, stage=m, kind="model", path=row["model"])
    if job.kind == Job.Kind.WEAK_ALIGN and result.get("model_dir"):
        services.artifact_record(job_id=job.pk, stage="weak_align", kind="model", path=result["model_dir"])
        result = {**result, **_register_aligned(job, rep, result["model_dir"])}
    return result


def _gold_labels(job: Job) -> dict[str, str]:
    """Which gold scored what, as the results say it (names, never paths: rm:<reward model name>): "gold" labelled
    (weak alignment's pairs, the pairs' scores), "eval_gold" scored the evaluations. Jobs from before job-level golds
    name their dataset's."""
    config = job.config or {}
    out = {f: str(config[f].get("label") or "") for f in ("gold", "eval_gold") if isinstance(config.get(f), dict)}
    if not out and (config.get("prompts") or {}).get("gold"):
        out["gold"] = str(config["prompts"]["gold"])
    return {k: v for k, v in out.items() if v}


def _register_aligned(job: Job, rep: Reporter, model_dir: str) -> dict:
    """Register pi_post as a weak ModelEntry (same family as pi_pre, owned by the job's owner) so a ConG job
    or preset can pick it. Idempotent across attempts (the name carries the job id). A folder outside
    MODEL_ROOTS is reported, not fatal: the job's own work is done and kept."""
    from django.core.exceptions import ValidationError

    from jobs.models import ModelEntry

    ref = job.config.get("weak_base") or {}
    base = ModelEntry.objects.filter(pk=ref["id"]).first() if ref.get("id") is not None else None
    name = f"{(ref.get('name') or 'weak')[:180]}-aligned-job{job.pk}"
    # Found by owner and folder, never by name alone: only the owner's own entry for this job's own
    # folder is this job's (a name could be anyone's; docs/SECURITY.md section 3). system=True: the
    # "-aligned-job<N>" names are reserved for exactly this registration.
    entry = ModelEntry.objects.filter(owner=job.owner, path=str(Path(model_dir).resolve())).order_by("pk").first()
    if entry is None:
        try:
            entry = services.model_register(
                name=name,
                path=model_dir,
                kind=ModelEntry.Kind.WEAK,
                family=base.family if base else "",
                owner=job.owner,
                system=True,
            )
        except ValidationError as exc:
            msg = "; ".join(exc.messages)
            rep.log(
                f"weak_align: pi_post not registered as a model ({msg}); add RUNS_DIR to MODEL_ROOTS "
                "or register the folder through the API"
            )
            return {"registered_model": None, "registered_model_error": msg}
    if base is not None and entry.aligned_from_id != base.pk:
        entry.aligned_from = base  # the weak pair, recorded for presets (never guessed from names)
        entry.save(update_fields=["aligned_from"])
    rep.log(f"weak_align: registered pi_post as model {entry.pk} {entry.name!r}")
    return {"registered_model": {"id": entry.pk, "name": entry.name, "path": entry.path}}


def _pair_counts(job: Job, rep: Reporter) -> dict[str, int]:
    """How many pairs the job stored and how many its gold could not score (counted from the rows, so a
    resumed attempt counts the first attempt's too); the unscored ones are said in the job's log."""
    pairs = GeneratedPair.objects.filter(job_id=job.pk)
    counts = {
        "stored": pairs.count(),
        "score_errors": pairs.exclude(score_error="").count(),
        # Both sides of a pair (jobs.worker_io.PairMirror): a plain pi_post sample, the strong model's own sample.
        "with_plain": pairs.filter(plain__isnull=False).count(),
        "with_rejected": pairs.filter(rejected__isnull=False).count(),
    }
    if counts["score_errors"]:
        first = pairs.exclude(score_error="").order_by("prompt_index").first()
        assert first is not None  # counted just above
        rep.log(
            f"{counts['score_errors']} of {counts['stored']} pairs could not be scored by the gold reward "
            f"(first, prompt {first.prompt_index}: {first.score_error}); they are kept with no gold score"
        )
    return counts


def run_job(*, job_id: int, task_id: str = "", worker: str = "") -> str:
    """The body of job_run_task. Returns what happened (for the worker log); state lives in the DB."""
    from celery.exceptions import SoftTimeLimitExceeded

    job = services.job_claim(job_id=job_id, task_id=task_id)
    if job is None:
        return "not claimed (finished, cancelled, or held by another worker)"
    beat = Heartbeat(f"job-{job.pk}", lambda: services.job_heartbeat(job_id=job.pk, task_id=task_id))
    beat.start()
    mirrors: list[PairMirror] = []

    def on_progress(stage: str, done: int, total: int) -> None:
        for m in mirrors:
            m.sync()

    # The job's MLflow run (jobs.tracking) hears every report too; tracking never fails the job.
    rep = TrackingReporter(job, ProgressReporter(job.pk, on_progress=on_progress))
    try:
        services.job_check_access(job=job)  # the owner may still use all it names (docs/SECURITY.md section 2)
        result = run_spec(job, rep, mirrors, task_id=task_id, worker=worker or services.worker_name())
        rep.close()
        for m in mirrors:
            m.sync()
        if mirrors:
            result = {**result, "pairs": _pair_counts(job, rep)}
        if result.get("stopped"):
            services.job_mark_cancelled(job_id=job.pk, results=jsonable(result), task_id=task_id)
            return "cancelled"
        services.job_finish(job_id=job.pk, results=jsonable(result), task_id=task_id)
        return "succeeded"
    except SoftTimeLimitExceeded:
        services.job_fail(
            job_id=job.pk,
            task_id=task_id,
            error=(
                f"stopped at the time limit ({getattr(settings, 'JOB_SOFT_TIME_LIMIT', '?')} s); finished stages are "
                "kept - retry to resume, or raise JOB_HARD_TIME_LIMIT"
            ),
        )
        return "failed"
    except Exception as exc:
        # Errors from ml are deterministic (bad data, bad settings): fail now with the message rather than
        # burn attempts. Attempts are for lost workers (kill, OOM, broker loss), counted by job_claim.
        try:
            rep.log("".join(traceback.format_exception(exc))[-5000:])
        except Exception:
            pass
        services.job_fail(job_id=job.pk, task_id=task_id, error=f"{type(exc).__name__}: {exc}")
        return "failed"
    finally:
        beat.stop()
        rep.end()  # after the job's end is recorded: the run gets its results, artifacts and status
        Artifact.objects.filter(job_id=job.pk, job__status=Job.Status.CANCELLED).update(partial=True)
