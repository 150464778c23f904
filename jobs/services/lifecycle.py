"""A job's states: cancel, retry, claim (compare-and-set with an attempt budget), heartbeat, finish, fail,
and the reaper for jobs whose worker is gone."""

from __future__ import annotations

import os
import socket
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from jobs.models import Artifact, Job, JobEvent
from jobs.notify import notify
from jobs.services import dispatch
from jobs.services._common import S, _err
from jobs.services.events import _status_event, event_append
from jobs.services.webhooks import job_ended


def _ended(job_id: int, status: str, message: str) -> None:
    """Every move of a job to a final status ends here: its status event, then its owner's notifications
    (webhooks, e-mail: jobs.services.webhooks), sent once the caller's transaction commits."""
    _status_event(job_id, status, message)
    job_ended(job_id=job_id, status=status)


def job_cancel(*, job: Job, user=None) -> Job:
    """queued -> cancelled at once; running -> cancelling (the worker stops cooperatively)."""
    now = timezone.now()
    if Job.objects.filter(pk=job.pk, status=S.QUEUED).update(
        status=S.CANCELLED, cancel_requested=True, finished=now, error="cancelled before it started"
    ):
        _ended(job.pk, S.CANCELLED, "cancelled before it started")
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
        ev = event_append(
            job_id=job.pk, type=JobEvent.Type.STATUS, data={"status": S.QUEUED, "message": "retry requested"}
        )
        # Pushed like every status event, so each open page of the job follows the new attempt at once.
        transaction.on_commit(lambda: notify(job.pk, ev))
        transaction.on_commit(lambda: dispatch.send(job.pk))
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
    stale = now - timedelta(seconds=settings.JOB_STALE_AFTER_SECONDS)
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
                transaction.on_commit(lambda: _ended(job_id, S.CANCELLED, "cancelled (worker lost while stopping)"))
                return None
        attempts = job.attempts + 1
        if attempts > job.max_attempts:
            msg = f"gave up after {job.attempts} attempts; last error: {job.error or 'worker lost'}"
            n = Job.objects.filter(pk=job_id, status=was).update(status=S.FAILED, error=msg, finished=now)
            if n:
                transaction.on_commit(lambda: _ended(job_id, S.FAILED, msg))
            return None
        n = Job.objects.filter(claimable, pk=job_id, status=was).update(
            status=S.RUNNING,
            attempts=attempts,
            heartbeat_at=now,
            started=job.started or now,
            task_id=task_id,
            worker=worker_name(),
            error=job.error,
            waiting_for="",
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
        _ended(job_id, S.SUCCEEDED, "job succeeded")
    return bool(n)


def job_fail(*, job_id: int, error: str, task_id: str = "") -> bool:
    now = timezone.now()
    qs = Job.objects.filter(pk=job_id, status__in=[S.RUNNING, S.CANCELLING, S.QUEUED])
    if task_id:
        # Only the attempt that holds it: a queued job was requeued by the reaper, so not ours any more.
        qs = qs.filter(task_id=task_id, status__in=[S.RUNNING, S.CANCELLING])
    n = qs.update(status=S.FAILED, error=error[:5000], finished=now)
    if n:
        _ended(job_id, S.FAILED, error[:2000])
    return bool(n)


def job_mark_cancelled(*, job_id: int, results: dict[str, Any] | None = None, task_id: str = "") -> bool:
    """The worker honoured a cancel: keep what was written, mark it partial."""
    now = timezone.now()
    qs = Job.objects.filter(pk=job_id, status__in=[S.RUNNING, S.CANCELLING])
    if task_id:
        qs = qs.filter(task_id=task_id)
    with transaction.atomic():
        n = qs.update(status=S.CANCELLED, finished=now, partial=True, results=results)
        if n:
            Artifact.objects.filter(job_id=job_id).update(partial=True)
    if n:
        _ended(job_id, S.CANCELLED, "cancelled; partial results kept")
    return bool(n)


def cancel_requested(*, job_id: int) -> bool:
    return bool(Job.objects.filter(pk=job_id).values_list("cancel_requested", flat=True).first())


def jobs_reap_stale(*, send: bool = True) -> list[tuple[int, str]]:
    """Running jobs whose heartbeat stopped: requeue them (and re-send the task) or fail them; and, with
    ``send``, re-send queued jobs whose task never reached the broker (``send_pending``).

    A worker killed with -9, or cut off from the broker, leaves its job 'running' with an old
    heartbeat; without this, it would stay so until the broker's visibility timeout (hours). A job created
    while the broker was down would stay queued forever. Returns (job id, what was done) pairs:
    requeued, failed, cancelled, resent, or "resend failed" (still pending; tried again next pass).
    """
    stale = timezone.now() - timedelta(seconds=settings.JOB_STALE_AFTER_SECONDS)
    done: list[tuple[int, str]] = []
    unsent = (
        list(Job.objects.filter(status=S.QUEUED, send_pending=True).order_by("pk").values_list("pk", flat=True))
        if send
        else []
    )
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
                _ended(pk, S.CANCELLED, f"cancelled ({lost})")
                done.append((pk, "cancelled"))
        elif attempts >= max_attempts:
            msg = f"gave up after {attempts} attempts; last error: {lost}"
            if Job.objects.filter(still).update(status=S.FAILED, finished=timezone.now(), error=msg):
                _ended(pk, S.FAILED, msg)
                done.append((pk, "failed"))
        elif Job.objects.filter(still).update(status=S.QUEUED, error=lost, task_id="", worker=""):
            _status_event(pk, S.QUEUED, f"requeued: {lost}")
            if send:
                dispatch.send(pk)
            done.append((pk, "requeued"))
    for pk in unsent:  # read before the requeues above: a requeue whose own send just failed waits a pass
        done.append((pk, "resent" if dispatch.send(pk) else "resend failed"))
    # Jobs waiting for a worker with enough devices: their reason follows the live workers.
    waiting = Job.objects.filter(status=S.QUEUED, config__spec__execution__gpus__gt=1)
    for pk, gpus in waiting.values_list("pk", "config__spec__execution__gpus"):
        dispatch.note_waiting(pk, int(gpus))
    return done
