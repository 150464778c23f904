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

    try:
        app.send_task(
            JOB_TASK,
            (job_id,),
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
    return True


def send_named(task: str, *args: object) -> None:
    """Send any of the app's tasks by name (raises when the broker cannot be reached)."""
    from congweb.celery import app

    app.send_task(task, args)
