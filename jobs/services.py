"""Business rules: every write to the jobs app goes through a function here (HackSoft style).

Functions take keyword-only typed arguments and are named ``<entity>_<action>``. Invalid input raises
django.core.exceptions.ValidationError keyed by field (the API answers 400 with those messages) and
leaves nothing half-created: each function validates everything first and writes inside one
transaction. Job state changes are conditional UPDATEs with a row-count check, so two workers (or a
redelivered task) can never both move the same job.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import uuid
from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Max, Q
from django.utils import timezone

from jobs.models import Artifact, Dataset, GeneratedPair, Job, JobEvent, ModelEntry
from jobs.validation import resolve_model_path, validate_jsonl

log = logging.getLogger(__name__)

S = Job.Status

# --- what a job may ask for ------------------------------------------------------------------------
TRAIN_METHODS = ("sft", "dpo", "wspo", "weak_sft", "auxconf")
# cong_filtered: ConG's DPO on only the pairs whose CD "chosen" has the higher implicit reward (an option
# measured beside ConG, never instead of it).
CONG_METHODS = ("cong", "cong_s", "weak_sft", "wspo", "auxconf", "strong_base", "weak_post", "cong_filtered")
DEFAULT_CONG_METHODS = ["cong_s", "cong"]
DEFAULT_SWEEP_ALPHAS = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]

# Which model/dataset fields each kind needs (weak pair = weak_base + weak_aligned).
KIND_NEEDS: dict[str, tuple[str, ...]] = {
    Job.Kind.CONG: ("weak_base", "weak_aligned", "strong", "prompts"),
    Job.Kind.CD_GENERATE: ("weak_base", "weak_aligned", "prompts"),
    Job.Kind.ALPHA_SWEEP: ("weak_base", "weak_aligned", "prompts"),
    Job.Kind.WEAK_ALIGN: ("weak_base", "prompts"),
    Job.Kind.TRAIN: ("strong", "prompts"),
    Job.Kind.EVALUATE: ("strong", "prompts"),
    # Does CD raise gold reward for this weak pair? (ml.diagnose; held-out prompts with a gold reward)
    Job.Kind.PREFLIGHT: ("weak_base", "weak_aligned", "prompts"),
}
# Methods that learn from the weak pair (need weak_base + weak_aligned as well as the strong model).
WEAK_PAIR_METHODS = ("dpo", "wspo", "weak_sft", "auxconf", "sft")

# Generic params (validated here); the runner maps them onto the stage configs. A key named after a
# stage (e.g. "sft": {...}) holds raw overrides for that stage's config dataclass.
INT_PARAMS = {"max_prompts": 1, "batch_size": 1, "max_new_tokens": 1, "seed": 0, "k": 2, "epochs": 1,
              "max_eval_prompts": 1, "n_samples": 1}
FLOAT_PARAMS = {"relative_top": (0.0, 1.0), "temperature": (0.0, None), "top_p": (0.0, 1.0),
                "repetition_penalty": (0.0, None), "learning_rate": (0.0, None), "beta": (0.0, None)}
BOOL_PARAMS = ("do_sample", "greedy", "plain")
STAGE_OVERRIDE_KEYS = ("weak_align", "cd_generate", "sft", "dpo", "wspo", "weak_sft", "auxconf", "cong_s",
                       "cong", "evaluate", "self_sample")


def _err(field: str, msg: str) -> ValidationError:
    return ValidationError({field: [msg]})


def _is_number(x: Any) -> bool:
    if not isinstance(x, (int, float)) or isinstance(x, bool):
        return False
    try:
        return math.isfinite(float(x))
    except OverflowError:  # a JSON integer beyond float range (e.g. 10**400) is not a usable number
        return False


def _check_alpha(value: Any, field: str = "alpha") -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise _err(field, f"alpha must be a number between 0 and 1, got {value!r}") from None
    if not _is_number(value):
        raise _err(field, f"alpha must be a number between 0 and 1, got {value!r}")
    if not 0.0 <= float(value) <= 1.0:
        raise _err(field, f"alpha must be between 0 and 1 (1 = plain sampling, 0 = pure log ratio), got {value}")
    return float(value)


# --- models ------------------------------------------------------------------------------------------
def _fingerprint(path: Path) -> str:
    from ml.modeling import load_tokenizer, vocab_fingerprint

    try:
        return vocab_fingerprint(load_tokenizer(path))
    except Exception as exc:  # a folder without a usable tokenizer cannot serve in a weak pair
        raise _err("path", f"could not load the tokenizer in {path}: {exc}") from None


def model_register(*, name: str, path: str, kind: str = ModelEntry.Kind.ANY, family: str = "",
                   owner=None) -> ModelEntry:
    """Register an HF folder under MODEL_ROOTS; its tokenizer's vocab fingerprint is stored."""
    name = (name or "").strip()
    if not name:
        raise _err("name", "give the model a name")
    if kind not in ModelEntry.Kind.values:
        raise _err("kind", f"kind must be one of {', '.join(ModelEntry.Kind.values)}")
    if ModelEntry.objects.filter(name=name).exists():
        raise _err("name", f"a model named {name!r} already exists; pick another name")
    resolved = resolve_model_path(path)
    fp = _fingerprint(resolved)
    try:
        with transaction.atomic():
            return ModelEntry.objects.create(name=name, path=str(resolved), kind=kind, family=family or "",
                                             vocab_fingerprint=fp, owner=owner)
    except IntegrityError:
        raise _err("name", f"a model named {name!r} already exists; pick another name") from None


# --- datasets ----------------------------------------------------------------------------------------
def datasets_dir() -> Path:
    d = Path(settings.VAR_DIR) / "datasets"
    d.mkdir(parents=True, exist_ok=True)
    return d


def dataset_create(*, name: str, kind: str = Dataset.Kind.PROMPTS, chunks: Iterable[bytes],
                   gold: str = "", owner=None) -> Dataset:
    """Validate an uploaded JSONL (see jobs.validation) and store it under VAR_DIR/datasets/."""
    name = (name or "").strip()
    if not name:
        raise _err("name", "give the dataset a name")
    if kind not in Dataset.Kind.values:
        raise _err("kind", f"kind must be one of {', '.join(Dataset.Kind.values)}")
    gold = (gold or "").strip()
    if gold:
        _check_gold(gold)
    data, rows = validate_jsonl(chunks, kind=kind)
    # Write the file first under a unique name; the row points at it. If the row fails, remove the file.
    path = datasets_dir() / f"{uuid.uuid4().hex}.jsonl"
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    try:
        with transaction.atomic():
            return Dataset.objects.create(name=name, kind=kind, path=str(path), row_count=rows, gold=gold,
                                          owner=owner)
    except Exception:
        path.unlink(missing_ok=True)
        raise


def _check_gold(gold: str) -> None:
    try:
        import ml.toyworld  # noqa: F401  (registers the toy golds)
        from ml.gold import get_gold

        get_gold(gold)
    except (KeyError, ValueError) as exc:
        raise _err("gold", f"unknown gold reward {gold!r}: {exc}") from None
    except ImportError:  # the registry is not importable here: accept, the runner will check
        pass


# --- jobs: creation ----------------------------------------------------------------------------------
def _visible(qs, user):
    if user is not None and user.is_staff:
        return qs
    return qs.filter(Q(owner__isnull=True) | Q(owner=user))


def _pick_model(user, ident: Any, field: str) -> ModelEntry:
    if ident in (None, ""):
        raise _err(field, "this job kind needs this model; give its id")
    try:
        pk = int(ident)
    except (TypeError, ValueError):
        raise _err(field, f"model id must be an integer, got {ident!r}") from None
    m = _visible(ModelEntry.objects.all(), user).filter(pk=pk).first()
    if m is None:
        raise _err(field, f"no model with id {pk}")
    if not (Path(m.path) / "config.json").is_file():
        raise _err(field, f"model {m.name!r} is no longer on disk at {m.path}")
    return m


def _pick_dataset(user, ident: Any, field: str = "prompts") -> Dataset:
    if ident in (None, ""):
        raise _err(field, "this job kind needs a prompt dataset; give its id")
    try:
        pk = int(ident)
    except (TypeError, ValueError):
        raise _err(field, f"dataset id must be an integer, got {ident!r}") from None
    d = _visible(Dataset.objects.all(), user).filter(pk=pk).first()
    if d is None:
        raise _err(field, f"no dataset with id {pk}")
    if d.row_count < 1 or not Path(d.path).is_file():
        raise _err(field, f"dataset {d.name!r} is empty; upload prompts first")
    return d


def _check_params(params: Any, kind: str) -> dict[str, Any]:
    if params in (None, ""):
        return {}
    if not isinstance(params, dict):
        raise _err("params", "params must be a JSON object, e.g. {\"max_prompts\": 100}")
    out: dict[str, Any] = {}
    for key, value in params.items():
        if key in INT_PARAMS:
            if not isinstance(value, int) or isinstance(value, bool) or value < INT_PARAMS[key]:
                raise _err("params", f"{key} must be an integer >= {INT_PARAMS[key]}, got {value!r}")
        elif key in FLOAT_PARAMS:
            lo, hi = FLOAT_PARAMS[key]
            if not _is_number(value) or value <= lo or (hi is not None and value > hi):
                bound = f"in ({lo}, {hi}]" if hi is not None else f"> {lo}"
                raise _err("params", f"{key} must be a number {bound}, got {value!r}")
        elif key in BOOL_PARAMS:
            if not isinstance(value, bool):
                raise _err("params", f"{key} must be true or false, got {value!r}")
        elif key == "alphas":
            if not isinstance(value, list) or not value:
                raise _err("params", "alphas must be a non-empty list of numbers in [0, 1]")
            value = [_check_alpha(a, "params") for a in value]
        elif key in STAGE_OVERRIDE_KEYS:
            if not isinstance(value, dict):
                raise _err("params", f"{key} overrides must be an object of that stage's settings")
        else:
            known = sorted([*INT_PARAMS, *FLOAT_PARAMS, *BOOL_PARAMS, "alphas", *STAGE_OVERRIDE_KEYS])
            raise _err("params", f"unknown parameter {key!r}; known: {', '.join(known)}")
        out[key] = value
    return out


def merge_params(defaults: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """A dataset's recommended params under the job's own: per-stage override dicts merge key by key,
    and a setting the job gives for all stages (e.g. batch_size) beats a default given for one stage."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in defaults.items()}
    for stage_defaults in (v for v in out.values() if isinstance(v, dict)):
        for k, v in params.items():
            if not isinstance(v, dict):
                stage_defaults.pop(k, None)
    for k, v in params.items():
        out[k] = {**out[k], **v} if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _toyworld_defaults(manifest: dict[str, Any]) -> dict[str, Any]:
    """The settings a toy world was built for: its models' context fits its generation length, and its
    sub-million-parameter models need larger learning rates than the paper's (see the world recipes)."""
    out: dict[str, Any] = {}
    gen = manifest.get("generation") or {}
    if gen.get("max_new_tokens"):
        out["max_new_tokens"] = int(gen["max_new_tokens"])
    try:
        from ml.toyworld.worlds import get_world

        stages = get_world(manifest["world"]).recipe(manifest.get("size", "default")).stages
    except (ImportError, KeyError, ValueError):
        return out
    for name, overrides in stages.items():
        key = "cd_generate" if name == "generate" else name
        if key in STAGE_OVERRIDE_KEYS:
            out[key] = dict(overrides)
    return out


def _model_ref(m: ModelEntry) -> dict[str, Any]:
    return {"id": m.pk, "name": m.name, "path": m.path, "vocab_fingerprint": m.vocab_fingerprint}


def job_create(*, user, kind: str, weak_base: Any = None, weak_aligned: Any = None, strong: Any = None,
               prompts: Any = None, alpha: Any = None, method: str | None = None,
               methods: list[str] | None = None, params: dict[str, Any] | None = None,
               eval_prompts: Any = None, max_attempts: int | None = None) -> Job:
    """Validate a job request, store the Job with its full config, and send it to a worker on commit."""
    errors: dict[str, list[str]] = {}

    def collect(fn, *a, **kw):
        try:
            return fn(*a, **kw)
        except ValidationError as exc:
            for k, v in exc.message_dict.items():
                errors.setdefault(k, []).extend(v)
            return None

    if kind not in Job.Kind.values:
        raise _err("kind", f"unknown job kind {kind!r}; use one of {', '.join(Job.Kind.values)}")
    needs = list(KIND_NEEDS[kind])
    if kind == Job.Kind.TRAIN:
        if method not in TRAIN_METHODS:
            errors["method"] = [f"method must be one of {', '.join(TRAIN_METHODS)} for a train job, got {method!r}"]
        elif method in WEAK_PAIR_METHODS:
            needs = ["weak_base", "weak_aligned", *needs]
    elif method not in (None, ""):
        errors["method"] = ["method is only used by kind=train; for kind=cong use methods"]
    if kind == Job.Kind.CONG:
        methods = list(DEFAULT_CONG_METHODS) if methods in (None, []) else methods
        if not isinstance(methods, list) or any(m not in CONG_METHODS for m in methods):
            errors["methods"] = [f"methods must be a list drawn from {', '.join(CONG_METHODS)}, got {methods!r}"]
        else:
            methods = list(dict.fromkeys(methods))
    elif methods not in (None, []):
        errors["methods"] = ["methods is only used by kind=cong"]
    else:
        methods = None

    picked: dict[str, Any] = {}
    for f, ident in (("weak_base", weak_base), ("weak_aligned", weak_aligned), ("strong", strong)):
        if f in needs:
            picked[f] = collect(_pick_model, user, ident, f)
    ds = collect(_pick_dataset, user, prompts, "prompts") if "prompts" in needs else None
    if kind in (Job.Kind.CONG, Job.Kind.CD_GENERATE, Job.Kind.TRAIN) or alpha not in (None, ""):
        alpha_v = collect(_check_alpha, 0.4 if alpha in (None, "") else alpha)
    else:
        alpha_v = None
    params_v = collect(_check_params, params, kind)
    if ds is not None and params_v is not None and ds.defaults:
        params_v = merge_params(ds.defaults, params_v)

    wb, wa = picked.get("weak_base"), picked.get("weak_aligned")
    if wb is not None and wa is not None and wb.vocab_fingerprint != wa.vocab_fingerprint:
        errors.setdefault("weak_aligned", []).append(
            f"weak models {wb.name!r} and {wa.name!r} do not share a vocabulary (tokenizer fingerprints "
            f"{wb.vocab_fingerprint or '?'} vs {wa.vocab_fingerprint or '?'}); contrastive decoding needs "
            "a weak pair from the same family")
    eval_ds = None
    if kind in (Job.Kind.CONG, Job.Kind.TRAIN):
        if eval_prompts not in (None, ""):
            eval_ds = collect(_pick_dataset, user, eval_prompts, "eval_prompts")
        elif ds is not None and ds.name.endswith("-train"):
            # Toy worlds register <tag>-train and <tag>-heldout: evaluate on the held-out split.
            eval_ds = _visible(Dataset.objects.all(), user).filter(name=ds.name[:-len("-train")] + "-heldout").first()
    elif eval_prompts not in (None, ""):
        errors["eval_prompts"] = ["eval_prompts is only used by kind=cong and kind=train"]
    needs_gold = (Job.Kind.WEAK_ALIGN, Job.Kind.EVALUATE, Job.Kind.ALPHA_SWEEP, Job.Kind.CONG, Job.Kind.TRAIN,
                  Job.Kind.PREFLIGHT)
    if ds is not None and kind in needs_gold and not ds.gold and ds.kind != Dataset.Kind.PREFERENCES:
        errors.setdefault("prompts", []).append(
            f"dataset {ds.name!r} has no gold reward; {kind} needs one to score responses (e.g. toy:review)")
    if errors:
        raise ValidationError(errors)

    config: dict[str, Any] = {"kind": kind, "alpha": alpha_v, "method": method or None, "methods": methods,
                              "params": params_v or {}}
    for f, m in picked.items():
        config[f] = _model_ref(m)
    if ds is not None:
        config["prompts"] = {"id": ds.pk, "name": ds.name, "path": ds.path, "kind": ds.kind, "gold": ds.gold,
                             "row_count": ds.row_count}
    if eval_ds is not None:
        config["eval_prompts"] = {"id": eval_ds.pk, "name": eval_ds.name, "path": eval_ds.path,
                                  "row_count": eval_ds.row_count}
    attempts = max_attempts or getattr(settings, "JOB_MAX_ATTEMPTS", 3)
    with transaction.atomic():
        job = Job.objects.create(owner=user, kind=kind, config=config, max_attempts=attempts)
        event_append(job_id=job.pk, type=JobEvent.Type.STATUS, data={"status": S.QUEUED, "message": "job queued"})
        job_id = job.pk
        transaction.on_commit(lambda: _send(job_id))
    return job


def _send(job_id: int) -> None:
    """Hand the job to a worker. A broker outage must not undo the (committed) job: it stays queued,
    and `reap_stale_jobs --resend-queued` (or a retry) sends it again; claims make duplicates harmless."""
    from jobs.tasks import job_run_task

    try:
        job_run_task.apply_async((job_id,), retry=True,
                                 retry_policy={"max_retries": 3, "interval_start": 0, "interval_step": 0.5})
    except Exception as exc:
        log.error("could not send job %s to the broker: %s", job_id, exc)
        try:
            event_append(job_id=job_id, type=JobEvent.Type.LOG,
                         data={"message": f"could not reach the broker ({exc}); the job stays queued and "
                                          "will be sent again by the reaper"})
        except Exception:
            log.exception("could not record the send failure for job %s", job_id)


# --- events ------------------------------------------------------------------------------------------
def event_append(*, job_id: int, type: str, data: dict[str, Any]) -> JobEvent:
    """Append an event with the next seq for this job; safe under concurrent writers.

    The job row is locked (select_for_update; SQLite's IMMEDIATE transactions serialise writers) while
    the next seq is computed; a unique (job, seq) constraint backs it up and a clash is retried.
    """
    for attempt in range(5):
        try:
            with transaction.atomic():
                Job.objects.select_for_update().filter(pk=job_id).values_list("pk", flat=True).first()
                last = JobEvent.objects.filter(job_id=job_id).aggregate(m=Max("seq"))["m"] or 0
                return JobEvent.objects.create(job_id=job_id, seq=last + 1, type=type, data=data)
        except IntegrityError:
            if attempt == 4:
                raise
    raise AssertionError("unreachable")


def _status_event(job_id: int, status: str, message: str, **extra: Any) -> None:
    try:
        from jobs.progress import notify

        ev = event_append(job_id=job_id, type=JobEvent.Type.STATUS, data={"status": status, "message": message, **extra})
        notify(job_id, ev)
    except Exception:  # an event is a record of the change, never a reason to undo it
        log.exception("could not record status event for job %s", job_id)


# --- jobs: lifecycle ----------------------------------------------------------------------------------
def job_cancel(*, job: Job, user=None) -> Job:
    """queued -> cancelled at once; running -> cancelling (the worker stops cooperatively)."""
    now = timezone.now()
    if Job.objects.filter(pk=job.pk, status=S.QUEUED).update(status=S.CANCELLED, cancel_requested=True,
                                                              finished=now, error="cancelled before it started"):
        _status_event(job.pk, S.CANCELLED, "cancelled before it started")
    elif Job.objects.filter(pk=job.pk, status=S.RUNNING).update(status=S.CANCELLING, cancel_requested=True):
        _status_event(job.pk, S.CANCELLING, "cancel requested; the worker stops after its current batch")
    else:
        job.refresh_from_db()
        if job.status == S.CANCELLING:
            return job
        raise _err("status", f"job already finished ({job.status}); nothing to cancel")
    job.refresh_from_db()
    return job


def job_retry(*, job: Job, user=None) -> Job:
    """Put a failed or cancelled job back in the queue with a fresh attempt budget."""
    with transaction.atomic():
        n = Job.objects.filter(pk=job.pk, status__in=[S.FAILED, S.CANCELLED]).update(
            status=S.QUEUED, attempts=0, error="", cancel_requested=False, finished=None, partial=False,
            heartbeat_at=None, task_id="", worker="")
        if not n:
            job.refresh_from_db()
            raise _err("status", f"only failed or cancelled jobs can be retried; this one is {job.status}")
        event_append(job_id=job.pk, type=JobEvent.Type.STATUS, data={"status": S.QUEUED, "message": "retry requested"})
        transaction.on_commit(lambda: _send(job.pk))
    job.refresh_from_db()
    return job


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def job_claim(*, job_id: int, task_id: str = "") -> Job | None:
    """Take a job for this worker, or None when someone else holds it or it is finished.

    Claimable: queued; or running/cancelling when its holder is provably gone - its heartbeat is stale,
    or this very task message was redelivered (same task id) because the process running it died.
    Each claim counts an attempt; past max_attempts the job fails with the last error.
    """
    now = timezone.now()
    stale = now - timedelta(seconds=getattr(settings, "JOB_STALE_AFTER_SECONDS", 120))
    gone = Q(heartbeat_at__lt=stale) | Q(heartbeat_at__isnull=True)
    if task_id:
        gone |= Q(task_id=task_id)
    claimable = Q(status=S.QUEUED) | (Q(status__in=[S.RUNNING, S.CANCELLING]) & gone)
    with transaction.atomic():
        job = Job.objects.select_for_update().filter(pk=job_id).first()
        if job is None or not Job.objects.filter(claimable, pk=job_id).exists():
            return None
        was = job.status
        if was in (S.RUNNING, S.CANCELLING):
            lost = f"worker {job.worker or '?'} was lost during attempt {job.attempts}"
            job.error = lost
            if job.cancel_requested:
                # It was being cancelled when its worker died: finish the cancel instead of rerunning.
                Job.objects.filter(pk=job_id, status=was).update(status=S.CANCELLED, finished=now, partial=True)
                transaction.on_commit(lambda: _status_event(job_id, S.CANCELLED, "cancelled (worker lost while stopping)"))
                return None
        attempts = job.attempts + 1
        if attempts > job.max_attempts:
            msg = f"gave up after {job.attempts} attempts; last error: {job.error or 'worker lost'}"
            n = Job.objects.filter(pk=job_id, status=was).update(status=S.FAILED, error=msg, finished=now)
            if n:
                transaction.on_commit(lambda: _status_event(job_id, S.FAILED, msg))
            return None
        n = Job.objects.filter(claimable, pk=job_id, status=was).update(
            status=S.RUNNING, attempts=attempts, heartbeat_at=now, started=job.started or now,
            task_id=task_id, worker=worker_name(), error=job.error)
        if n != 1:
            return None
    msg = f"attempt {attempts} of {job.max_attempts} started on {worker_name()}"
    if was != S.QUEUED:
        msg += f" (after: {job.error})"
    _status_event(job_id, S.RUNNING, msg, attempt=attempts, worker=worker_name(), pid=os.getpid())
    return Job.objects.get(pk=job_id)


def job_heartbeat(*, job_id: int, task_id: str = "") -> bool:
    """Refresh the heartbeat; False when the job is no longer ours (reaped, finished)."""
    qs = Job.objects.filter(pk=job_id, status__in=[S.RUNNING, S.CANCELLING])
    if task_id:
        qs = qs.filter(task_id=task_id)
    return bool(qs.update(heartbeat_at=timezone.now()))


def job_set_progress(*, job_id: int, stage: str, progress: float) -> None:
    Job.objects.filter(pk=job_id).update(stage=stage, progress=max(0.0, min(1.0, progress)))


def job_finish(*, job_id: int, results: dict[str, Any] | None = None, task_id: str = "") -> bool:
    """running/cancelling -> succeeded, storing results."""
    now = timezone.now()
    qs = Job.objects.filter(pk=job_id, status__in=[S.RUNNING, S.CANCELLING])
    if task_id:
        qs = qs.filter(task_id=task_id)
    n = qs.update(status=S.SUCCEEDED, results=results, finished=now, progress=1.0, error="", partial=False)
    if n:
        _status_event(job_id, S.SUCCEEDED, "job succeeded")
    return bool(n)


def job_fail(*, job_id: int, error: str, task_id: str = "") -> bool:
    now = timezone.now()
    qs = Job.objects.filter(pk=job_id, status__in=[S.RUNNING, S.CANCELLING, S.QUEUED])
    if task_id:
        qs = qs.filter(Q(task_id=task_id) | Q(status=S.QUEUED))
    n = qs.update(status=S.FAILED, error=error[:5000], finished=now)
    if n:
        _status_event(job_id, S.FAILED, error[:2000])
    return bool(n)


def job_mark_cancelled(*, job_id: int, results: dict[str, Any] | None = None, task_id: str = "") -> bool:
    """The worker honoured a cancel: keep what was written, mark it partial."""
    now = timezone.now()
    with transaction.atomic():
        n = Job.objects.filter(pk=job_id, status__in=[S.RUNNING, S.CANCELLING]).update(
            status=S.CANCELLED, finished=now, partial=True, results=results)
        Artifact.objects.filter(job_id=job_id).update(partial=True)
    if n:
        _status_event(job_id, S.CANCELLED, "cancelled; partial results kept")
    return bool(n)


def cancel_requested(*, job_id: int) -> bool:
    return bool(Job.objects.filter(pk=job_id).values_list("cancel_requested", flat=True).first())


def jobs_reap_stale(*, send: bool = True) -> list[tuple[int, str]]:
    """Running jobs whose heartbeat stopped: requeue them (and re-send the task) or fail them.

    A worker killed with -9, or cut off from the broker, leaves its job 'running' with an old
    heartbeat; without this, it would stay so until the broker's visibility timeout (hours).
    """
    stale = timezone.now() - timedelta(seconds=getattr(settings, "JOB_STALE_AFTER_SECONDS", 120))
    done: list[tuple[int, str]] = []
    candidates = Job.objects.filter(status__in=[S.RUNNING, S.CANCELLING]).filter(
        Q(heartbeat_at__lt=stale) | Q(heartbeat_at__isnull=True)).values_list("pk", "attempts", "max_attempts",
                                                                               "worker", "cancel_requested")
    for pk, attempts, max_attempts, worker, cancel in list(candidates):
        lost = f"worker {worker or '?'} stopped sending heartbeats during attempt {attempts}"
        still = Q(pk=pk, status__in=[S.RUNNING, S.CANCELLING]) & (Q(heartbeat_at__lt=stale) | Q(heartbeat_at__isnull=True))
        if cancel:
            if Job.objects.filter(still).update(status=S.CANCELLED, finished=timezone.now(), partial=True, error=lost):
                _status_event(pk, S.CANCELLED, f"cancelled ({lost})")
                done.append((pk, "cancelled"))
        elif attempts >= max_attempts:
            msg = f"gave up after {attempts} attempts; last error: {lost}"
            if Job.objects.filter(still).update(status=S.FAILED, finished=timezone.now(), error=msg):
                _status_event(pk, S.FAILED, msg)
                done.append((pk, "failed"))
        elif Job.objects.filter(still).update(status=S.QUEUED, error=lost, task_id="", worker=""):
            _status_event(pk, S.QUEUED, f"requeued: {lost}")
            if send:
                _send(pk)
            done.append((pk, "requeued"))
    return done


# --- artifacts and pairs ------------------------------------------------------------------------------
def artifact_record(*, job_id: int, stage: str, kind: str, path: str, partial: bool = False) -> Artifact:
    art, _ = Artifact.objects.update_or_create(job_id=job_id, stage=stage, kind=kind,
                                               defaults={"path": str(path), "partial": partial})
    return art


def pair_store(*, job_id: int, row: dict[str, Any], index_offset: int = 0) -> tuple[GeneratedPair, bool]:
    """Mirror one generated row (samples.jsonl) as a GeneratedPair; never duplicates."""
    reward = row.get("implicit_reward_mean", row.get("implicit_reward"))
    return GeneratedPair.objects.get_or_create(
        job_id=job_id, prompt_index=int(row["index"]) + index_offset,
        defaults={"prompt": str(row.get("prompt", "")), "chosen": str(row.get("response", "")),
                  "rejected": row.get("rejected"), "plain": row.get("plain"),
                  "implicit_reward": float(reward) if _is_number(reward) else None,
                  "gold_reward": float(row["gold"]) if _is_number(row.get("gold")) else None,
                  "alpha": float(row["alpha"]) if _is_number(row.get("alpha")) else None})


def pair_review(*, pair: GeneratedPair, user, action: str, edited_text: str = "") -> GeneratedPair:
    """approve / reject / edit one generated pair (edit keeps the text used in exports)."""
    actions = {"approve": GeneratedPair.Review.APPROVED, "reject": GeneratedPair.Review.REJECTED,
               "edit": GeneratedPair.Review.EDITED}
    if action not in actions:
        raise _err("action", f"action must be one of {', '.join(actions)}")
    if action == "edit" and not (edited_text or "").strip():
        raise _err("edited_text", "an edit needs the new response text")
    pair.review_status = actions[action]
    pair.edited_text = edited_text if action == "edit" else pair.edited_text
    pair.reviewer = user
    pair.reviewed_at = timezone.now()
    pair.save(update_fields=["review_status", "edited_text", "reviewer", "reviewed_at"])
    return pair


def pairs_export(*, job: Job) -> Iterable[str]:
    """TRL preference JSONL: prompt/chosen/rejected; rejected-by-review pairs skipped, edits applied.

    Pairs without a rejected response (plain CD generation) export prompt/completion-style
    prompt/chosen rows with rejected set to the plain sample when there is one.
    """
    for p in GeneratedPair.objects.filter(job=job).exclude(review_status=GeneratedPair.Review.REJECTED) \
            .order_by("prompt_index").iterator():
        chosen = p.edited_text if p.review_status == GeneratedPair.Review.EDITED and p.edited_text else p.chosen
        rejected = p.rejected if p.rejected is not None else p.plain
        row = {"prompt": p.prompt, "chosen": chosen}
        if rejected is not None:
            row["rejected"] = rejected
        yield json.dumps(row, ensure_ascii=False) + "\n"


# --- the toy world ------------------------------------------------------------------------------------
def _manifest_get(manifest: dict[str, Any], *keys: str) -> Any:
    for k in keys:
        cur: Any = manifest
        for part in k.split("."):
            cur = cur.get(part) if isinstance(cur, dict) else None
        if cur:
            return cur
    return None


def toyworld_register(*, manifest: dict[str, Any]) -> dict[str, Any]:
    """Register a built toy world's models and prompt sets as shared entries (owner None), idempotently."""
    world = manifest.get("world", "toy")
    seed = manifest.get("seed", 0)
    size = manifest.get("size", "default")
    gold = manifest.get("gold") or f"toy:{world}"
    tag = f"toy-{world}-s{seed}" + ("" if size in ("default", None) else f"-{size}")
    out: dict[str, Any] = {"models": {}, "datasets": {}}
    for role, kind in (("weak_base", "weak"), ("weak_aligned", "weak"), ("strong_base", "strong")):
        path = _manifest_get(manifest, f"models.{role}", role, f"{role}_path")
        if not path:
            continue
        name = f"{tag}-{role.replace('_', '-')}"
        entry = ModelEntry.objects.filter(name=name).first()
        if entry is None:
            entry = model_register(name=name, path=str(path), kind=kind, family=f"toy-{world}", owner=None)
        out["models"][role] = entry
    defaults = _toyworld_defaults(manifest)
    for split in ("train", "heldout"):
        path = _manifest_get(manifest, f"prompts.{split}", f"{split}_prompts", f"prompts_{split}")
        if not path:
            continue
        out["datasets"][split] = _shared_prompts(name=f"{tag}-{split}", path=path, gold=gold, defaults=defaults)
    return out


def _shared_prompts(*, name: str, path: str | Path, gold: str, defaults: dict[str, Any]) -> Dataset:
    """A shared (owner-less) prompt dataset from a file, created once; its recommended params follow the
    latest registration (a rebuilt world or another preset size)."""
    ds = Dataset.objects.filter(name=name, owner__isnull=True).first()
    if ds is None:
        with open(path, "rb") as fh:
            ds = dataset_create(name=name, kind=Dataset.Kind.PROMPTS, chunks=iter(lambda: fh.read(1 << 16), b""),
                                gold=gold, owner=None)
    if ds.defaults != defaults:
        ds.defaults = defaults
        ds.save(update_fields=["defaults"])
    return ds


# --- the real offline models (ml.offline) -------------------------------------------------------------
# Registered names: the manifest key with dashes (smollm2_135m_instruct -> smollm2-135m-instruct).
OFFLINE_TRAIN, OFFLINE_HELDOUT = "if-judge-train", "if-judge-heldout"
OFFLINE_GOLD = "if:judge"
# The PipelineConfig stage dicts that train the strong model (they get the preset's lora_r, as
# ml.pipeline's strong_kw does) and every training stage (they get train_max_steps as max_steps).
_STRONG_STAGES = ("sft", "dpo", "wspo", "auxconf")
_TRAIN_STAGES = ("weak_align", *_STRONG_STAGES)


def offline_model_name(key: str) -> str:
    return key.replace("_", "-")


def offline_params(config) -> dict[str, Any]:
    """A real-model preset (ml.offline.presets.real_preset's PipelineConfig) as web job params: what the
    runner maps back onto the same stage configs (jobs.runner._pipeline / run_weak_align)."""
    out: dict[str, Any] = {"max_new_tokens": int(config.max_new_tokens)}
    for key in ("max_prompts", "max_eval_prompts"):
        if getattr(config, key) is not None:
            out[key] = int(getattr(config, key))
    stages = {"cd_generate": dict(config.generate)}
    for name in ("weak_align", "sft", "self_sample", "dpo", "wspo", "auxconf", "evaluate"):
        stages[name] = dict(getattr(config, name))
    # The pipeline gives strong-model stages lora_r and every training stage train_max_steps; the web
    # params have no top-level key for either, so they travel inside each stage's dict.
    for name in _STRONG_STAGES:
        if config.lora_r > 0:
            stages[name].setdefault("lora_r", int(config.lora_r))
    if config.train_max_steps > 0:
        for name in _TRAIN_STAGES:
            stages[name].setdefault("max_steps", int(config.train_max_steps))
    out.update({k: v for k, v in stages.items() if v})
    return out


def offline_register(*, manifest: dict[str, Any], size: str = "cpu") -> dict[str, Any]:
    """Register the installed offline models (ml.offline manifest) and the judge's prompt splits as shared
    entries (owner None), idempotently. The datasets carry the ``size`` preset's settings as defaults, so
    a job on them runs like ``python -m ml models run --size <size>`` unless its own params say otherwise."""
    from ml.offline.presets import SIZES, ensure_prompts, real_preset

    if size not in SIZES:
        raise _err("size", f"size must be one of {', '.join(SIZES)}, got {size!r}")
    root = manifest.get("root")
    if not root or not manifest.get("models"):
        raise _err("manifest", "the offline manifest lists no models; run `python manage.py install_offline_models`")
    models_dir = Path(root).parent  # the manifest lives in <models_dir>/offline/
    out: dict[str, Any] = {"models": {}, "datasets": {}, "size": size}
    for key, m in sorted(manifest["models"].items()):
        name = offline_model_name(key)
        kind = m.get("role") if m.get("role") in ModelEntry.Kind.values else ModelEntry.Kind.ANY
        entry = ModelEntry.objects.filter(name=name).first()
        if entry is None:
            entry = model_register(name=name, path=str(m["path"]), kind=kind, family=m.get("family", ""), owner=None)
        elif Path(entry.path) != Path(m["path"]).resolve():
            # Installed again somewhere else: follow the manifest (checked like a new registration).
            entry.path = str(resolve_model_path(str(m["path"])))
            entry.vocab_fingerprint = _fingerprint(Path(entry.path))
            entry.save(update_fields=["path", "vocab_fingerprint"])
        out["models"][key] = entry
    prompts = ensure_prompts(models_dir)
    defaults = offline_params(real_preset(size, models_dir, check_models=False))
    for split, name in (("train", OFFLINE_TRAIN), ("heldout", OFFLINE_HELDOUT)):
        out["datasets"][split] = _shared_prompts(name=name, path=prompts[split], gold=OFFLINE_GOLD, defaults=defaults)
    return out


# Installing from the web app (the staff button): the slow install runs as a Celery task on the default
# queue, never inside a request. Its state lives in a small JSON file beside the models
# (<DATA_DIR>/offline/install_status.json), which the web and worker hosts share anyway (models are read
# from the same paths everywhere), so the page can show it without a new table.
OFFLINE_STATUS = "install_status.json"
# A state not updated for this long is a lost message or a dead worker: allow another try. "running"
# is updated at every step of the install (the slowest, Gemma's conversion, takes minutes).
OFFLINE_STALE_SECONDS = {"queued": 600, "running": 1800}


def _offline_status_path(data_dir: str | Path | None = None) -> Path:
    return Path(data_dir or settings.DATA_DIR) / "offline" / OFFLINE_STATUS


def offline_install_status(data_dir: str | Path | None = None) -> dict[str, Any] | None:
    from ml.io import read_json

    path = _offline_status_path(data_dir)
    try:
        return read_json(path) if path.exists() else None
    except ValueError:  # torn write: report nothing rather than fail the page
        return None


def _offline_status_write(data_dir: str | Path | None = None, **data: Any) -> dict[str, Any]:
    from ml.io import write_json

    status = {**(offline_install_status(data_dir) or {}), **data, "updated": timezone.now().isoformat()}
    path = _offline_status_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, status)
    return status


def offline_install_request(*, user, size: str = "cpu") -> dict[str, Any]:
    """Staff only: queue the install (jobs.tasks.offline_install_task) unless one is queued or running."""
    from ml.offline.presets import SIZES

    if user is None or not user.is_staff:
        raise _err("user", "only staff can install the offline models")
    if size not in SIZES:
        raise _err("size", f"size must be one of {', '.join(SIZES)}, got {size!r}")
    cur = offline_install_status() or {}
    if cur.get("state") in ("queued", "running"):
        from django.utils.dateparse import parse_datetime

        when = parse_datetime(cur.get("updated") or "")
        if when is not None and (timezone.now() - when).total_seconds() < OFFLINE_STALE_SECONDS[cur["state"]]:
            raise _err("state", f"an install is already {cur['state']} (since {cur.get('updated')})")
    status = _offline_status_write(state="queued", size=size, message="waiting for a worker", error="",
                                   requested_by=user.get_username())
    from jobs.tasks import offline_install_task

    try:
        offline_install_task.delay(size)
    except Exception as exc:
        status = _offline_status_write(state="failed", error=f"could not reach the broker: {exc}")
    return status


class _StatusReporter:
    """ml Reporter that keeps the latest message in the status file (and echoes to a console reporter)."""

    def __init__(self, data_dir: Path, echo=None) -> None:
        from ml.reporter import or_null

        self.data_dir, self.echo = data_dir, or_null(echo)

    def progress(self, stage: str, done: int, total: int) -> None:
        self.echo.progress(stage, done, total)

    def metric(self, name: str, value: float, step: int | None = None) -> None:
        self.echo.metric(name, value, step)

    def sample(self, data: dict[str, Any]) -> None:
        self.echo.sample(data)

    def log(self, msg: str) -> None:
        self.echo.log(msg)
        _offline_status_write(self.data_dir, message=str(msg)[:500])

    def should_stop(self) -> bool:
        return False


def offline_install(*, size: str = "cpu", install: bool = True, reporter=None,
                    data_dir: str | Path | None = None) -> dict[str, Any]:
    """ml.offline.install_offline into DATA_DIR (or data_dir), then offline_register; records the state
    for the page. ``install=False`` never calls pip (the packages must be there)."""
    from ml.offline.install import install_offline

    data_dir = Path(data_dir or settings.DATA_DIR)
    _offline_status_write(data_dir, state="running", size=size, message="starting", error="",
                          started=timezone.now().isoformat())
    try:
        manifest = install_offline(data_dir, _StatusReporter(data_dir, reporter), install=install)
        out = offline_register(manifest=manifest, size=size)
    except Exception as exc:
        msg = "; ".join(exc.messages) if isinstance(exc, ValidationError) else f"{type(exc).__name__}: {exc}"
        _offline_status_write(data_dir, state="failed", error=msg[:2000], finished=timezone.now().isoformat())
        raise
    _offline_status_write(data_dir, state="done", message="installed and registered", finished=timezone.now().isoformat(),
                          models=sorted(m.name for m in out["models"].values()),
                          datasets=sorted(d.name for d in out["datasets"].values()))
    return out
