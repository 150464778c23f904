"""Runs one Job inside a worker: claim it, map its config onto ml stage configs, run them with a
ProgressReporter, heartbeat while running, mirror generated pairs into the database, record the end.

Layout: every job writes under RUNS_DIR/<job_id>/<stage>/. ml stages are idempotent and resumable, so
a second attempt (after a worker died) skips finished stages and continues the one in progress; the
pair mirror is idempotent too (unique (job, prompt_index)), so nothing is stored twice.
"""

from __future__ import annotations

import json
import logging
import threading
import traceback
from pathlib import Path
from typing import Any, Callable

from django.conf import settings
from django.db import connection

from jobs import services
from jobs.models import Artifact, GeneratedPair, Job
from jobs.progress import ProgressReporter

log = logging.getLogger(__name__)

# Generic params -> CD/sampling settings (CDConfig field names).
DECODING_KEYS = ("batch_size", "max_new_tokens", "seed", "relative_top", "temperature", "top_p",
                 "repetition_penalty", "do_sample")
# kind=train's method -> the pipeline method that trains it.
TRAIN_TO_PIPELINE = {"sft": "cong_s", "dpo": "cong", "wspo": "wspo", "weak_sft": "weak_sft", "auxconf": "auxconf"}


class Heartbeat(threading.Thread):
    """Refreshes job.heartbeat_at every JOB_HEARTBEAT_SECONDS from its own thread (and DB connection),
    so a long step in the stage never makes a healthy job look dead to the reaper."""

    def __init__(self, job_id: int, task_id: str) -> None:
        super().__init__(name=f"heartbeat-{job_id}", daemon=True)
        self.job_id, self.task_id = job_id, task_id
        self.interval = float(getattr(settings, "JOB_HEARTBEAT_SECONDS", 15))
        self._stop_event = threading.Event()

    def run(self) -> None:
        try:
            while not self._stop_event.wait(self.interval):
                try:
                    services.job_heartbeat(job_id=self.job_id, task_id=self.task_id)
                except Exception:  # a DB blip: try again next beat
                    log.exception("heartbeat failed for job %s", self.job_id)
        finally:
            connection.close()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=10)


class PairMirror:
    """Copies rows of a generation stage's samples.jsonl into GeneratedPair rows as they appear.

    It reads only complete lines past the last byte offset it saw; when the stage rewrites the file
    (it does once, sorted, at the end) the offset is past the new size and reading restarts at 0.
    """

    def __init__(self, job_id: int, path: Path, index_offset: int = 0, gold: str = "") -> None:
        self.job_id, self.path, self.index_offset = job_id, Path(path), index_offset
        self.offset = 0
        # Score each pair with the dataset's gold reward as it is mirrored, so reviewers can filter and
        # sort by it (generation rows carry only the implicit reward). Programmatic golds are cheap.
        self.gold = None
        if gold:
            from ml.gold import get_gold

            self.gold = get_gold(gold)

    def sync(self) -> int:
        if not self.path.exists():
            return 0
        size = self.path.stat().st_size
        if size < self.offset:
            self.offset = 0
        with self.path.open("rb") as fh:
            fh.seek(self.offset)
            data = fh.read()
        end = data.rfind(b"\n")
        if end < 0:
            return 0
        rows = []
        for line in data[:end].split(b"\n"):
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and "index" in row and row.get("sample", 0) == 0:
                rows.append(row)
        self.offset += end + 1
        return self._store(rows)

    def _store(self, rows: list[dict]) -> int:
        if not rows:
            return 0
        have = set(GeneratedPair.objects.filter(job_id=self.job_id).values_list("prompt_index", flat=True))
        new = 0
        for row in rows:
            if int(row["index"]) + self.index_offset in have:
                continue
            if self.gold is not None and "gold" not in row:
                row = {**row, "gold": self.gold(str(row.get("prompt", "")), str(row.get("response", "")))}
            _, created = services.pair_store(job_id=self.job_id, row=row, index_offset=self.index_offset)
            new += int(created)
        return new


def run_dir(job: Job) -> Path:
    return Path(settings.RUNS_DIR) / str(job.pk)


def _decoding(params: dict[str, Any], **extra: Any) -> dict[str, Any]:
    d = {k: params[k] for k in DECODING_KEYS if k in params}
    if params.get("greedy"):
        d["do_sample"] = False
    return {**d, **extra}


def _gold(job: Job) -> str:
    gold = (job.config.get("prompts") or {}).get("gold") or job.config.get("gold") or ""
    if not gold:
        raise ValueError("this job needs a gold reward: set the prompt dataset's gold (e.g. toy:review)")
    import ml.toyworld  # noqa: F401  (registers the toy world golds)

    return gold


# --- one function per kind ----------------------------------------------------------------------------
def _cd_generate(job: Job, rep: ProgressReporter, mirror_to: list[PairMirror], *, alpha: float | None = None,
                 out: Path | None = None, index_offset: int = 0) -> dict:
    from ml.stages.generate import CDGenerateConfig, cd_generate

    c, p = job.config, job.config.get("params") or {}
    out = out or run_dir(job) / "cd_generate"
    flat = {"aligned": c["weak_aligned"]["path"], "base": c["weak_base"]["path"], "prompts": c["prompts"]["path"],
            "output_dir": str(out), "max_prompts": p.get("max_prompts"),
            **_decoding(p, alpha=c["alpha"] if alpha is None else alpha), **(p.get("cd_generate") or {})}
    cfg = CDGenerateConfig.from_dict(flat)
    gold = (c.get("prompts") or {}).get("gold") or ""
    mirror = PairMirror(job.pk, out / "samples.jsonl", index_offset, gold=gold)
    mirror_to.append(mirror)
    services.artifact_record(job_id=job.pk, stage=out.name, kind="samples", path=str(out / "samples.jsonl"))
    summary = cd_generate(cfg, rep)
    mirror.sync()
    return summary


def run_cd_generate(job: Job, rep: ProgressReporter, mirrors: list[PairMirror]) -> dict:
    return _cd_generate(job, rep, mirrors)


def run_alpha_sweep(job: Job, rep: ProgressReporter, mirrors: list[PairMirror]) -> dict:
    from ml.stages.evaluate import EvaluateConfig, evaluate

    p = job.config.get("params") or {}
    alphas = p.get("alphas") or services.DEFAULT_SWEEP_ALPHAS
    gold = _gold(job)
    n = min(job.config["prompts"]["row_count"], p.get("max_prompts") or 10**9)
    rows = []
    for k, a in enumerate(alphas):
        tag = f"a{a:.2f}"
        s = _cd_generate(job, rep, mirrors, alpha=a, out=run_dir(job) / f"cd_generate_{tag}", index_offset=k * n)
        if s.get("stopped"):
            return {"stopped": True, "stage": f"cd_generate_{tag}", "alphas": rows}
        ev = EvaluateConfig(output_dir=str(run_dir(job) / f"evaluate_{tag}"), gold=gold, samples=s["samples"],
                            name=tag, **(p.get("evaluate") or {}))
        m = evaluate(ev, rep)
        if m.get("stopped"):
            return {"stopped": True, "stage": f"evaluate_{tag}", "alphas": rows}
        rows.append({"alpha": a, **{key: v for key, v in m.items() if not isinstance(v, (list, dict))}})
        rep.metric("sweep_gold_mean", m.get("gold_mean", float("nan")), k)
    return {"alphas": rows}


def _pipeline(job: Job, rep: ProgressReporter, mirrors: list[PairMirror], methods: list[str]) -> dict:
    from ml.pipeline import PipelineConfig, run

    c, p = job.config, job.config.get("params") or {}
    out = run_dir(job)
    data: dict[str, Any] = {
        "weak_base": c["weak_base"]["path"], "weak_aligned": c["weak_aligned"]["path"], "strong": c["strong"]["path"],
        "train_prompts": c["prompts"]["path"], "eval_prompts": (c.get("eval_prompts") or c["prompts"])["path"],
        "gold": _gold(job), "output_dir": str(out), "alpha": c.get("alpha", 0.4), "methods": methods,
        "max_prompts": p.get("max_prompts"), "max_eval_prompts": p.get("max_eval_prompts"),
    }
    for k in ("seed", "max_new_tokens"):
        if k in p:
            data[k] = p[k]
    data["generate"] = {**{k: v for k, v in _decoding(p).items() if k not in ("seed", "max_new_tokens")},
                        **(p.get("cd_generate") or {})}
    for stage in ("weak_align", "sft", "self_sample", "dpo", "wspo", "auxconf", "evaluate"):
        if p.get(stage):
            data[stage] = p[stage]
    cfg = PipelineConfig.from_dict(data)
    mirror = PairMirror(job.pk, out / "cd_generate" / "samples.jsonl", gold=data["gold"])
    mirrors.append(mirror)
    results = run(cfg, rep)
    mirror.sync()
    if not results.get("stopped"):
        services.artifact_record(job_id=job.pk, stage="pipeline", kind="results", path=str(out / "results.json"))
        for m, row in (results.get("methods") or {}).items():
            if row.get("model"):
                services.artifact_record(job_id=job.pk, stage=m, kind="model", path=row["model"])
    return results


def run_cong(job: Job, rep: ProgressReporter, mirrors: list[PairMirror]) -> dict:
    return _pipeline(job, rep, mirrors, list(job.config.get("methods") or services.DEFAULT_CONG_METHODS))


def run_train(job: Job, rep: ProgressReporter, mirrors: list[PairMirror]) -> dict:
    return _pipeline(job, rep, mirrors, [TRAIN_TO_PIPELINE[job.config["method"]]])


def run_evaluate(job: Job, rep: ProgressReporter, mirrors: list[PairMirror]) -> dict:
    from ml.stages.evaluate import EvaluateConfig, evaluate

    c, p = job.config, job.config.get("params") or {}
    out = run_dir(job) / "evaluate"
    kw = {k: p[k] for k in ("max_new_tokens", "seed", "batch_size", "temperature", "top_p", "do_sample") if k in p}
    cfg = EvaluateConfig(output_dir=str(out), gold=_gold(job), model=c["strong"]["path"], prompts=c["prompts"]["path"],
                         name=c["strong"]["name"], max_prompts=p.get("max_prompts"), **kw, **(p.get("evaluate") or {}))
    services.artifact_record(job_id=job.pk, stage="evaluate", kind="samples", path=str(out / "samples.jsonl"))
    return evaluate(cfg, rep)


def run_weak_align(job: Job, rep: ProgressReporter, mirrors: list[PairMirror]) -> dict:
    from ml.stages.weak_align import WeakAlignConfig, weak_align

    c, p = job.config, job.config.get("params") or {}
    out = run_dir(job) / "weak_align"
    kw: dict[str, Any] = {"model": c["weak_base"]["path"], "output_dir": str(out), "max_prompts": p.get("max_prompts")}
    if c["prompts"].get("kind") == "preferences":
        kw["data"] = c["prompts"]["path"]
    else:
        kw.update(prompts=c["prompts"]["path"], gold=_gold(job))
    for k in ("seed", "max_new_tokens", "k", "beta", "learning_rate"):
        if k in p:
            kw[k] = p[k]
    summary = weak_align(WeakAlignConfig(**{**kw, **(p.get("weak_align") or {})}), rep)
    if summary.get("model_dir"):
        services.artifact_record(job_id=job.pk, stage="weak_align", kind="model", path=summary["model_dir"])
    if summary.get("model_dir") and not summary.get("stopped"):
        summary = {**summary, **_register_aligned(job, rep, summary["model_dir"])}
    return summary


def _register_aligned(job: Job, rep: ProgressReporter, model_dir: str) -> dict:
    """Register pi_post as a weak ModelEntry (same family as pi_pre, owned by the job's owner) so a ConG job
    or preset can pick it. Idempotent across attempts (the name carries the job id). A folder outside
    MODEL_ROOTS is reported, not fatal: the job's own work is done and kept."""
    from django.core.exceptions import ValidationError

    from jobs.models import ModelEntry

    ref = job.config.get("weak_base") or {}
    base = ModelEntry.objects.filter(pk=ref.get("id")).first()
    name = f"{ref.get('name') or 'weak'}-aligned-job{job.pk}"
    entry = ModelEntry.objects.filter(name=name).first()
    if entry is None:
        try:
            entry = services.model_register(name=name, path=model_dir, kind=ModelEntry.Kind.WEAK,
                                            family=base.family if base else "", owner=job.owner)
        except ValidationError as exc:
            msg = "; ".join(exc.messages)
            rep.log(f"weak_align: pi_post not registered as a model ({msg}); add RUNS_DIR to MODEL_ROOTS "
                    "or register the folder through the API")
            return {"registered_model": None, "registered_model_error": msg}
    rep.log(f"weak_align: registered pi_post as model {entry.pk} {entry.name!r}")
    return {"registered_model": {"id": entry.pk, "name": entry.name, "path": entry.path}}


def run_preflight(job: Job, rep: ProgressReporter, mirrors: list[PairMirror]) -> dict:
    """ml.diagnose's pre-flight check on the job's weak pair and prompts (first 200 unless max_prompts says);
    the result, verdict code and plain-language message included, becomes job.results."""
    from ml.diagnose import preflight_dirs

    c, p = job.config, job.config.get("params") or {}
    kw: dict[str, Any] = {"n": p.get("n_samples", 2)}
    for k in ("max_new_tokens", "seed", "alphas"):
        if k in p:
            kw[k] = p[k]
    # Only CD's own settings: plain pi_post samples keep the reference sampling, so the comparison is fair.
    overrides = {**{k: p[k] for k in ("relative_top", "repetition_penalty") if k in p}, **(p.get("cd_generate") or {})}
    if overrides:
        kw["cd_overrides"] = overrides
    out = preflight_dirs(c["weak_aligned"]["path"], c["weak_base"]["path"], c["prompts"]["path"], _gold(job),
                         n_prompts=p.get("max_prompts") or 200, reporter=rep, **kw)
    if not out.get("stopped"):
        rep.log(f"pre-flight verdict: {out['verdict']}: {out['message']}")
    return out


KIND_RUNNERS: dict[str, Callable[[Job, ProgressReporter, list[PairMirror]], dict]] = {
    Job.Kind.CD_GENERATE: run_cd_generate,
    Job.Kind.ALPHA_SWEEP: run_alpha_sweep,
    Job.Kind.CONG: run_cong,
    Job.Kind.TRAIN: run_train,
    Job.Kind.EVALUATE: run_evaluate,
    Job.Kind.WEAK_ALIGN: run_weak_align,
    Job.Kind.PREFLIGHT: run_preflight,
}


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str, allow_nan=False)) if _finite(obj) else \
        json.loads(json.dumps(obj, default=str).replace("NaN", "null").replace("Infinity", "null"))


def _finite(obj: Any) -> bool:
    try:
        json.dumps(obj, default=str, allow_nan=False)
        return True
    except ValueError:
        return False


def run_job(*, job_id: int, task_id: str = "") -> str:
    """The body of job_run_task. Returns what happened (for the worker log); state lives in the DB."""
    from celery.exceptions import SoftTimeLimitExceeded

    job = services.job_claim(job_id=job_id, task_id=task_id)
    if job is None:
        return "not claimed (finished, cancelled, or held by another worker)"
    beat = Heartbeat(job.pk, task_id)
    beat.start()
    mirrors: list[PairMirror] = []

    def on_progress(stage: str, done: int, total: int) -> None:
        for m in mirrors:
            m.sync()

    rep = ProgressReporter(job.pk, on_progress=on_progress)
    try:
        result = KIND_RUNNERS[job.kind](job, rep, mirrors)
        rep.close()
        for m in mirrors:
            m.sync()
        if result.get("stopped"):
            services.job_mark_cancelled(job_id=job.pk, results=_jsonable(result), task_id=task_id)
            return "cancelled"
        services.job_finish(job_id=job.pk, results=_jsonable(result), task_id=task_id)
        return "succeeded"
    except SoftTimeLimitExceeded:
        services.job_fail(job_id=job.pk, task_id=task_id, error=(
            f"stopped at the time limit ({getattr(settings, 'JOB_SOFT_TIME_LIMIT', '?')} s); finished stages are "
            "kept - retry to resume, or raise JOB_HARD_TIME_LIMIT"))
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
        Artifact.objects.filter(job_id=job.pk, job__status=Job.Status.CANCELLED).update(partial=True)
