"""A job's event log: append with the next seq (safe under concurrent writers), and a status event that is
also pushed to the browser (jobs.notify)."""

from __future__ import annotations

from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Max

from jobs.models import Job, JobEvent
from jobs.notify import notify
from jobs.services._common import log


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
        ev = event_append(
            job_id=job_id, type=JobEvent.Type.STATUS, data={"status": status, "message": message, **extra}
        )
        notify(job_id, ev)
    except Exception:  # an event is a record of the change, never a reason to undo it
        log.exception("could not record status event for job %s", job_id)
