"""Handing a job to a worker. The task is sent by name, so this package never imports jobs.tasks (which
imports the runner, which imports these services): no import circle."""

from __future__ import annotations

from jobs.models import Job, JobEvent
from jobs.services._common import log
from jobs.services.events import event_append

# The Celery task names (jobs.tasks declares its tasks under these names; CELERY_TASK_ROUTES routes by them).
JOB_TASK = "jobs.tasks.job_run_task"
OFFLINE_INSTALL_TASK = "jobs.tasks.offline_install_task"


def send(job_id: int) -> bool:
    """Hand the job to a worker; True when the broker took the message. A broker outage must not undo the
    (committed) job: it stays queued with ``send_pending`` set and a log event that says so, and the reaper
    (jobs_reap_stale) sends it again once the broker is back; claims make duplicate messages harmless."""
    from congweb.celery import app
    from jobs.workers import queue_for

    gpus = job_gpus(job_id)
    try:
        app.send_task(
            JOB_TASK,
            (job_id,),
            queue=queue_for(gpus),  # capacity routing: only a worker with that many devices consumes it
            retry=True,
            retry_policy={"max_retries": 3, "interval_start": 0, "interval_step": 0.5},
        )
    except Exception as exc:
        log.error("could not send job %s to the broker: %s", job_id, exc)
        try:
            # The event is written once per outage, not at every reaper pass that finds the broker still down.
            if Job.objects.filter(pk=job_id, send_pending=False).update(send_pending=True):
                event_append(
                    job_id=job_id,
                    type=JobEvent.Type.LOG,
                    data={
                        "message": f"could not reach the broker ({exc}); the job stays queued and the reaper "
                        "sends it again when the broker is back"
                    },
                )
        except Exception:
            log.exception("could not record the send failure for job %s", job_id)
        return False
    try:
        Job.objects.filter(pk=job_id, send_pending=True).update(send_pending=False)
    except Exception:  # the message is out; a stale flag only costs one harmless duplicate send
        log.exception("could not clear send_pending for job %s", job_id)
    if gpus > 1:  # a one-device job is never waiting for capacity: its reason stays empty
        note_waiting(job_id, gpus)
    return True


def job_gpus(job_id: int) -> int:
    """The devices the job trains on (its spec's execution; 1 for a job from before the setting)."""
    config = Job.objects.filter(pk=job_id).values_list("config", flat=True).first() or {}
    return int(((config.get("spec") or {}).get("execution") or {}).get("gpus", 1))


def note_waiting(job_id: int, gpus: int | None = None) -> None:
    """Record why a queued job cannot start (no live worker with its devices), or clear a reason that no longer
    holds; a new reason is also a log event. The reaper calls it on every pass, so the reason follows the workers."""
    from jobs.workers import waiting_reason

    reason = waiting_reason(job_gpus(job_id) if gpus is None else gpus)
    if Job.objects.filter(pk=job_id, status=Job.Status.QUEUED).exclude(waiting_for=reason).update(waiting_for=reason):
        if reason:
            event_append(job_id=job_id, type=JobEvent.Type.LOG, data={"message": reason})


def send_named(task: str, *args: object) -> None:
    """Send any of the app's tasks by name (raises when the broker cannot be reached)."""
    from congweb.celery import app

    app.send_task(task, args)
