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
from jobs.selectors import visible as _visible
from jobs.validation import resolve_model_path, validate_jsonl

log = logging.getLogger(__name__)

S = Job.Status

# --- what a job may ask for: the settings live in ml's registry (ml.spec); models and datasets here -------

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


def _err(field: str, msg: str) -> ValidationError:
    return ValidationError({field: [msg]})


def _is_number(x: Any) -> bool:
    if not isinstance(x, (int, float)) or isinstance(x, bool):
        return False
    try:
        return math.isfinite(float(x))
    except OverflowError:  # a JSON integer beyond float range (e.g. 10**400) is not a usable number
        return False


# --- models ------------------------------------------------------------------------------------------
def _fingerprint(path: Path) -> str:
    from ml.modeling import load_tokenizer, vocab_fingerprint

    try:
        return vocab_fingerprint(load_tokenizer(path))
    except Exception as exc:  # a folder without a usable tokenizer cannot serve in a weak pair
        raise _err("path", f"could not load the tokenizer in {path}: {exc}") from None


# Model names are unique per owner; shared entries (owner None) have their own namespace. The names the
# app registers by itself are reserved, so no user can pre-empt them (docs/SECURITY.md section 3): toy
# worlds register "toy-<world>-s<seed>..." (toyworld_register), the offline install the ml.offline keys
# (offline_register), a weak_align job "<weak base>-aligned-job<N>" (jobs.runner._register_aligned).
RESERVED_MODEL_PREFIXES = ("toy-",)
ALIGNED_NAME_MARK = "-aligned-job"


def _offline_model_names() -> set[str]:
    try:
        from ml.offline.install import MODELS
    except ImportError:  # without ml.offline there is no offline install to reserve names for
        return set()
    return {offline_model_name(k) for k in MODELS}


def _reserved_model_name(name: str) -> str | None:
    """Why a user may not take ``name`` (a message that depends on no one's private data), or None."""
    low = name.lower()
    head, mark, tail = low.rpartition(ALIGNED_NAME_MARK)
    if mark and tail.isdigit():
        return (
            f"names ending in '{ALIGNED_NAME_MARK}<number>' are reserved for the models weak_align jobs "
            "register; pick another name"
        )
    if (
        low.startswith(RESERVED_MODEL_PREFIXES)
        or low in _offline_model_names()
        or ModelEntry.objects.filter(owner__isnull=True, name__iexact=name).exists()
    ):
        return (
            f"{name!r} is a shared model name (names starting with {', '.join(RESERVED_MODEL_PREFIXES)} "
            "and the offline models' names are reserved too); pick another name"
        )
    return None


def model_register(
    *, name: str, path: str, kind: str = ModelEntry.Kind.ANY, family: str = "", owner=None, system: bool = False
) -> ModelEntry:
    """Register an HF folder under MODEL_ROOTS; its tokenizer's vocab fingerprint is stored.

    ``owner`` None registers a shared entry (the app itself: toy world, offline install). A user's entry
    may not take a reserved or shared name (see _reserved_model_name) unless ``system`` says the app
    registers it for that user (a weak_align job's pi_post), and may point into RUNS_DIR only inside one
    of the owner's own jobs' folders, unless the owner is staff (jobs.validation.run_folder_allowed).
    """
    name = (name or "").strip()
    if not name:
        raise _err("name", "give the model a name")
    if kind not in ModelEntry.Kind.values:
        raise _err("kind", f"kind must be one of {', '.join(ModelEntry.Kind.values)}")
    if owner is not None and not system:
        why = _reserved_model_name(name)
        if why:
            raise _err("name", why)
    # Only the owner's own namespace (or the shared one) is looked at: another user's private name is no
    # collision, and the answer must not tell whether it exists.
    taken = (
        f"a model named {name!r} already exists among your models; pick another name"
        if owner is not None
        else f"a shared model named {name!r} already exists; pick another name"
    )
    if ModelEntry.objects.filter(owner=owner, name=name).exists():  # owner=None filters IS NULL
        raise _err("name", taken)
    resolved = resolve_model_path(path, user=owner)
    fp = _fingerprint(resolved)
    try:
        with transaction.atomic():
            return ModelEntry.objects.create(
                name=name, path=str(resolved), kind=kind, family=family or "", vocab_fingerprint=fp, owner=owner
            )
    except IntegrityError:  # the same name registered meanwhile in the same namespace
        raise _err("name", taken) from None


# --- datasets ----------------------------------------------------------------------------------------
def datasets_dir() -> Path:
    d = Path(settings.VAR_DIR) / "datasets"
    d.mkdir(parents=True, exist_ok=True)
    return d


def dataset_create(
    *, name: str, kind: str = Dataset.Kind.PROMPTS, chunks: Iterable[bytes], gold: str = "", owner=None
) -> Dataset:
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
            return Dataset.objects.create(name=name, kind=kind, path=str(path), row_count=rows, gold=gold, owner=owner)
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
def _pick_model(user, ident: Any, field: str) -> ModelEntry:
    if ident in (None, ""):
        raise _err(field, "this job kind needs this model; give its id")
    try:
        pk = int(ident)
    except (TypeError, ValueError):
        raise _err(field, f"model id must be an integer, got {ident!r}") from None
    from jobs.validation import run_folder_allowed

    m = _visible(ModelEntry.objects.all(), user).filter(pk=pk).first()
    if m is None:
        raise _err(field, f"no model with id {pk}")
    # Visible is not enough: an entry registered before run folders were checked (or one staff made
    # shared) may point into another user's job outputs. Checked before the disk, so nothing is said
    # about what is there.
    if not run_folder_allowed(m.path, user):
        raise _err(
            field,
            f"model {m.name!r} is in a job runs folder that is not one of your jobs'; use a "
            "model from your own jobs or a shared one",
        )
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


JOB_MODEL_FIELDS = ("weak_base", "weak_aligned", "strong")
JOB_DATASET_FIELDS = ("prompts", "eval_prompts")


def job_check_access(*, job: Job) -> None:
    """The worker's check, just before a job runs, that its owner may still use every model and dataset
    its config names: each still exists, is visible to job.owner, points at the path recorded at submit,
    and (models) is not in another user's run folder. Raises ValueError naming what to change otherwise.

    job_create checked all this at submit, but a job can wait in the queue (or be retried) long after:
    an entry may be deleted, made private, moved (offline_register follows a re-install), or a config may
    not have come from job_create at all. See docs/SECURITY.md section 2.
    """
    from jobs.validation import run_folder_allowed

    user, config = job.owner, job.config or {}
    problems: list[str] = []
    for field, qs, what in [
        *((f, ModelEntry.objects.all(), "model") for f in JOB_MODEL_FIELDS),
        *((f, Dataset.objects.all(), "dataset") for f in JOB_DATASET_FIELDS),
    ]:
        ref = config.get(field)
        if not ref:
            continue
        ident = ref.get("id") if isinstance(ref, dict) else None
        obj = _visible(qs, user).filter(pk=ident).first() if isinstance(ident, int) else None
        if obj is None:
            problems.append(f"{field}: {what} {ident!r} no longer exists or is not available to the job's owner")
        elif obj.path != ref.get("path"):
            problems.append(f"{field}: {what} {obj.name!r} now points at another file than when the job was submitted")
        elif what == "model" and not run_folder_allowed(obj.path, user):
            problems.append(f"{field}: model {obj.name!r} is in a job runs folder that is not one of the owner's jobs'")
    if problems:
        raise ValueError(
            "this job may not use what it was submitted with (" + "; ".join(problems) + "); "
            "submit a new job with models and datasets you can use"
        )


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
        # Recommendations: ml.resolve keeps, per job kind, only the stages that kind runs.
        out["cd_generate" if name == "generate" else name] = dict(overrides)
    return out


def _model_ref(m: ModelEntry) -> dict[str, Any]:
    return {"id": m.pk, "name": m.name, "path": m.path, "vocab_fingerprint": m.vocab_fingerprint}


class JobQuotaExceeded(Exception):
    """The user already has JOB_MAX_ACTIVE_PER_USER jobs queued or running (the API answers 429)."""


def job_inputs(config: dict[str, Any], output_dir: str) -> Any:
    """ml.resolve.JobInputs from a job's stored config: the files it may use, resolved at submit."""
    from ml.resolve import JobInputs

    def path(key: str) -> str:
        return str((config.get(key) or {}).get("path") or "")

    return JobInputs(
        output_dir=output_dir,
        weak_base=path("weak_base"),
        weak_aligned=path("weak_aligned"),
        strong=path("strong"),
        strong_name=str((config.get("strong") or {}).get("name") or ""),
        prompts=path("prompts"),
        prompts_kind=str((config.get("prompts") or {}).get("kind") or "prompts"),
        eval_prompts=path("eval_prompts"),
        gold=str((config.get("prompts") or {}).get("gold") or ""),
    )


def _resolve_spec(*, kind: str, alpha: Any, method: Any, methods: Any, params: Any, recommended: Any) -> dict[str, Any]:
    """The full spec through ml's registry (ml.resolve); its key-path errors become ValidationErrors."""
    from ml.resolve import resolve
    from ml.spec import SpecError

    try:
        return resolve(
            kind,
            params,
            alpha=alpha,
            method=method,
            methods=methods,
            recommended=recommended,
            limits=getattr(settings, "JOB_LIMITS", None),
        )
    except SpecError as exc:
        raise ValidationError(exc.errors) from None


def _check_quota(user) -> None:
    cap = int(getattr(settings, "JOB_MAX_ACTIVE_PER_USER", 20))
    if user is None or cap <= 0:
        return
    active = Job.objects.filter(owner=user, status__in=[S.QUEUED, S.RUNNING, S.CANCELLING]).count()
    if active >= cap:
        raise JobQuotaExceeded(
            f"you have {active} jobs queued or running (the limit is {cap}); wait for some to "
            "finish or cancel some, then submit again"
        )


def job_create(
    *,
    user,
    kind: str,
    weak_base: Any = None,
    weak_aligned: Any = None,
    strong: Any = None,
    prompts: Any = None,
    alpha: Any = None,
    method: str | None = None,
    methods: list[str] | None = None,
    params: dict[str, Any] | None = None,
    eval_prompts: Any = None,
    max_attempts: int | None = None,
) -> Job:
    """Validate a job request, store the Job with its request and resolved spec, and send it on commit.

    Everything a worker would check is checked here: the spec is built through ml's registry and every
    stage config it runs is constructed once with the resolved files (ml.resolve.check)."""
    from ml.spec import WEAK_PAIR_TRAIN_METHODS

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
    _check_quota(user)
    needs = list(KIND_NEEDS[kind])
    if kind == Job.Kind.TRAIN and method in WEAK_PAIR_TRAIN_METHODS:
        needs = ["weak_base", "weak_aligned", *needs]

    picked: dict[str, Any] = {}
    for f, ident in (("weak_base", weak_base), ("weak_aligned", weak_aligned), ("strong", strong)):
        if f in needs:
            picked[f] = collect(_pick_model, user, ident, f)
    ds = collect(_pick_dataset, user, prompts, "prompts") if "prompts" in needs else None
    spec = collect(
        _resolve_spec,
        kind=kind,
        alpha=alpha,
        method=method,
        methods=methods,
        params=params,
        recommended=ds.defaults if ds is not None else None,
    )

    wb, wa = picked.get("weak_base"), picked.get("weak_aligned")
    if wb is not None and wa is not None and wb.vocab_fingerprint != wa.vocab_fingerprint:
        errors.setdefault("weak_aligned", []).append(
            f"weak models {wb.name!r} and {wa.name!r} do not share a vocabulary (tokenizer fingerprints "
            f"{wb.vocab_fingerprint or '?'} vs {wa.vocab_fingerprint or '?'}); contrastive decoding needs "
            "a weak pair from the same family"
        )
    eval_ds = None
    if kind in (Job.Kind.CONG, Job.Kind.TRAIN):
        if eval_prompts not in (None, ""):
            eval_ds = collect(_pick_dataset, user, eval_prompts, "eval_prompts")
        elif ds is not None and ds.name.endswith("-train"):
            # Toy worlds register <tag>-train and <tag>-heldout: evaluate on the held-out split.
            eval_ds = _visible(Dataset.objects.all(), user).filter(name=ds.name[: -len("-train")] + "-heldout").first()
    elif eval_prompts not in (None, ""):
        errors["eval_prompts"] = ["eval_prompts is only used by kind=cong and kind=train"]
    needs_gold = (
        Job.Kind.WEAK_ALIGN,
        Job.Kind.EVALUATE,
        Job.Kind.ALPHA_SWEEP,
        Job.Kind.CONG,
        Job.Kind.TRAIN,
        Job.Kind.PREFLIGHT,
    )
    if ds is not None and kind in needs_gold and not ds.gold and ds.kind != Dataset.Kind.PREFERENCES:
        errors.setdefault("prompts", []).append(
            f"dataset {ds.name!r} has no gold reward; {kind} needs one to score responses (e.g. toy:review)"
        )
    if errors:
        raise ValidationError(errors)

    config: dict[str, Any] = {
        "kind": kind,
        "alpha": spec["alpha"],
        "method": spec["method"],
        "methods": spec["methods"],
        "params": params or {},
    }
    for f, m in picked.items():
        config[f] = _model_ref(m)
    if ds is not None:
        config["prompts"] = {
            "id": ds.pk,
            "name": ds.name,
            "path": ds.path,
            "kind": ds.kind,
            "gold": ds.gold,
            "row_count": ds.row_count,
        }
    if eval_ds is not None:
        config["eval_prompts"] = {
            "id": eval_ds.pk,
            "name": eval_ds.name,
            "path": eval_ds.path,
            "row_count": eval_ds.row_count,
        }
    _check_buildable(spec, config)
    config["spec"] = spec
    attempts = max_attempts or getattr(settings, "JOB_MAX_ATTEMPTS", 3)
    with transaction.atomic():
        job = Job.objects.create(owner=user, kind=kind, config=config, max_attempts=attempts)
        event_append(job_id=job.pk, type=JobEvent.Type.STATUS, data={"status": S.QUEUED, "message": "job queued"})
        job_id = job.pk
        transaction.on_commit(lambda: _send(job_id))
    return job


def _check_buildable(spec: dict[str, Any], config: dict[str, Any]) -> None:
    """Construct every config the worker will run (ml.resolve.check), with the job's real files."""
    from ml.resolve import check
    from ml.spec import SpecError

    try:
        check(spec, job_inputs(config, str(Path(settings.RUNS_DIR) / "pending")))
    except SpecError as exc:
        raise ValidationError(exc.errors) from None


def _send(job_id: int) -> None:
    """Hand the job to a worker. A broker outage must not undo the (committed) job: it stays queued,
    and `reap_stale_jobs --resend-queued` (or a retry) sends it again; claims make duplicates harmless."""
    from jobs.tasks import job_run_task

    try:
        job_run_task.apply_async(
            (job_id,), retry=True, retry_policy={"max_retries": 3, "interval_start": 0, "interval_step": 0.5}
        )
    except Exception as exc:
        log.error("could not send job %s to the broker: %s", job_id, exc)
        try:
            event_append(
                job_id=job_id,
                type=JobEvent.Type.LOG,
                data={
                    "message": f"could not reach the broker ({exc}); the job stays queued and "
                    "will be sent again by the reaper"
                },
            )
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

        ev = event_append(
            job_id=job_id, type=JobEvent.Type.STATUS, data={"status": status, "message": message, **extra}
        )
        notify(job_id, ev)
    except Exception:  # an event is a record of the change, never a reason to undo it
        log.exception("could not record status event for job %s", job_id)


# --- jobs: lifecycle ----------------------------------------------------------------------------------
def job_cancel(*, job: Job, user=None) -> Job:
    """queued -> cancelled at once; running -> cancelling (the worker stops cooperatively)."""
    now = timezone.now()
    if Job.objects.filter(pk=job.pk, status=S.QUEUED).update(
        status=S.CANCELLED, cancel_requested=True, finished=now, error="cancelled before it started"
    ):
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
    """Put a failed or cancelled job back in the queue with a fresh attempt budget; it runs its stored spec
    (a job from before specs gets one now, or a 400 naming the setting that no longer passes)."""
    from jobs.selectors import job_spec
    from ml.spec import SpecError

    if not (job.config or {}).get("spec"):
        try:
            spec = job_spec(job=job)
        except SpecError as exc:
            raise ValidationError(exc.errors) from None
        Job.objects.filter(pk=job.pk).update(config={**(job.config or {}), "spec": spec})
    with transaction.atomic():
        n = Job.objects.filter(pk=job.pk, status__in=[S.FAILED, S.CANCELLED]).update(
            status=S.QUEUED,
            attempts=0,
            error="",
            cancel_requested=False,
            finished=None,
            partial=False,
            heartbeat_at=None,
            task_id="",
            worker="",
        )
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
                transaction.on_commit(
                    lambda: _status_event(job_id, S.CANCELLED, "cancelled (worker lost while stopping)")
                )
                return None
        attempts = job.attempts + 1
        if attempts > job.max_attempts:
            msg = f"gave up after {job.attempts} attempts; last error: {job.error or 'worker lost'}"
            n = Job.objects.filter(pk=job_id, status=was).update(status=S.FAILED, error=msg, finished=now)
            if n:
                transaction.on_commit(lambda: _status_event(job_id, S.FAILED, msg))
            return None
        n = Job.objects.filter(claimable, pk=job_id, status=was).update(
            status=S.RUNNING,
            attempts=attempts,
            heartbeat_at=now,
            started=job.started or now,
            task_id=task_id,
            worker=worker_name(),
            error=job.error,
        )
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
            status=S.CANCELLED, finished=now, partial=True, results=results
        )
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
    candidates = (
        Job.objects.filter(status__in=[S.RUNNING, S.CANCELLING])
        .filter(Q(heartbeat_at__lt=stale) | Q(heartbeat_at__isnull=True))
        .values_list("pk", "attempts", "max_attempts", "worker", "cancel_requested")
    )
    for pk, attempts, max_attempts, worker, cancel in list(candidates):
        lost = f"worker {worker or '?'} stopped sending heartbeats during attempt {attempts}"
        still = Q(pk=pk, status__in=[S.RUNNING, S.CANCELLING]) & (
            Q(heartbeat_at__lt=stale) | Q(heartbeat_at__isnull=True)
        )
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
    art, _ = Artifact.objects.update_or_create(
        job_id=job_id, stage=stage, kind=kind, defaults={"path": str(path), "partial": partial}
    )
    return art


def pair_store(*, job_id: int, row: dict[str, Any], index_offset: int = 0) -> tuple[GeneratedPair, bool]:
    """Mirror one generated row (samples.jsonl) as a GeneratedPair; never duplicates."""
    reward = row.get("implicit_reward_mean", row.get("implicit_reward"))
    return GeneratedPair.objects.get_or_create(
        job_id=job_id,
        prompt_index=int(row["index"]) + index_offset,
        defaults={
            "prompt": str(row.get("prompt", "")),
            "chosen": str(row.get("response", "")),
            "rejected": row.get("rejected"),
            "plain": row.get("plain"),
            "implicit_reward": float(reward) if _is_number(reward) else None,
            "gold_reward": float(row["gold"]) if _is_number(row.get("gold")) else None,
            "score_error": str(row.get("score_error") or ""),
            "alpha": float(row["alpha"]) if _is_number(row.get("alpha")) else None,
        },
    )


def pair_review(*, pair: GeneratedPair, user, action: str, edited_text: str = "") -> GeneratedPair:
    """approve / reject / edit one generated pair (edit keeps the text used in exports)."""
    actions = {
        "approve": GeneratedPair.Review.APPROVED,
        "reject": GeneratedPair.Review.REJECTED,
        "edit": GeneratedPair.Review.EDITED,
    }
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
    for p in (
        GeneratedPair.objects.filter(job=job)
        .exclude(review_status=GeneratedPair.Review.REJECTED)
        .order_by("prompt_index")
        .iterator()
    ):
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
        # The shared namespace only: a user's entry of the same name (from before names were reserved)
        # must never become the toy world's.
        entry = ModelEntry.objects.filter(name=name, owner__isnull=True).first()
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
            ds = dataset_create(
                name=name, kind=Dataset.Kind.PROMPTS, chunks=iter(lambda: fh.read(1 << 16), b""), gold=gold, owner=None
            )
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
        entry = ModelEntry.objects.filter(name=name, owner__isnull=True).first()  # shared only, as for toy worlds
        if entry is None:
            entry = model_register(name=name, path=str(m["path"]), kind=kind, family=m.get("family", ""), owner=None)
        elif Path(entry.path) != Path(m["path"]).resolve():
            # Installed again somewhere else: follow the manifest (checked like a new registration).
            entry.path = str(resolve_model_path(str(m["path"]), user=None))
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
    status = _offline_status_write(
        state="queued", size=size, message="waiting for a worker", error="", requested_by=user.get_username()
    )
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


def offline_install(
    *, size: str = "cpu", install: bool = True, reporter=None, data_dir: str | Path | None = None
) -> dict[str, Any]:
    """ml.offline.install_offline into DATA_DIR (or data_dir), then offline_register; records the state
    for the page. ``install=False`` never calls pip (the packages must be there)."""
    from ml.offline.install import install_offline

    data_dir = Path(data_dir or settings.DATA_DIR)
    _offline_status_write(
        data_dir, state="running", size=size, message="starting", error="", started=timezone.now().isoformat()
    )
    try:
        manifest = install_offline(data_dir, _StatusReporter(data_dir, reporter), install=install)
        out = offline_register(manifest=manifest, size=size)
    except Exception as exc:
        msg = "; ".join(exc.messages) if isinstance(exc, ValidationError) else f"{type(exc).__name__}: {exc}"
        _offline_status_write(data_dir, state="failed", error=msg[:2000], finished=timezone.now().isoformat())
        raise
    _offline_status_write(
        data_dir,
        state="done",
        message="installed and registered",
        finished=timezone.now().isoformat(),
        models=sorted(m.name for m in out["models"].values()),
        datasets=sorted(d.name for d in out["datasets"].values()),
    )
    return out
