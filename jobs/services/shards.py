"""The parts of a sharded generation stage (ml.shards): plan, claim, heartbeat, progress, finish.

A shard is held like a job: by a conditional UPDATE that only one caller can win. Claimable: queued (the
job's own coordinator waits ``JOB_SHARD_STEAL_AFTER_SECONDS`` first, so that idle workers get the shards it
sent them), or running with a stale heartbeat (its worker is gone: the shard reruns alone from its JSONL).
Nothing is claimed for a job that is not running, so a cancelled or failed job's queued shards never start.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from jobs.models import Job, JobShard
from jobs.services import dispatch

SHARD_TASK = "jobs.tasks.shard_run_task"
SS = JobShard.Status


def shards_plan(
    *,
    job_id: int,
    stage: str,
    count: int,
    generator: str,
    config: dict[str, Any],
    index_offset: int = 0,
    mirror_pairs: bool = False,
    totals: list[int] | None = None,
) -> list[JobShard]:
    """The stage's shards, created on first call. A stage that has shards keeps their count (its files on disk
    are cut that way), whatever count a later attempt would choose; failed or cancelled shards are queued again
    (a retried job resumes them from their files). ``totals``: the units each shard generates, so the stage's one
    progress bar has its full length from the start."""
    with transaction.atomic():
        have = list(JobShard.objects.select_for_update().filter(job_id=job_id, stage=stage))
        if not have:
            JobShard.objects.bulk_create(
                JobShard(
                    job_id=job_id,
                    stage=stage,
                    index=i,
                    count=count,
                    generator=generator,
                    config=config,
                    index_offset=index_offset,
                    mirror_pairs=mirror_pairs,
                    total=totals[i] if totals else 0,
                )
                for i in range(count)
            )
        JobShard.objects.filter(job_id=job_id, stage=stage, status__in=[SS.FAILED, SS.CANCELLED]).update(
            status=SS.QUEUED, error="", queued_at=timezone.now(), task_id="", worker=""
        )
    return list(JobShard.objects.filter(job_id=job_id, stage=stage).order_by("index"))


def shard_send(shard_id: int) -> bool:
    """Offer the shard to any worker; False when the broker is down (the coordinator then runs it itself)."""
    try:
        dispatch.send_named(SHARD_TASK, shard_id)
    except Exception:
        return False
    return True


def shard_claim(*, shard_id: int, task_id: str, worker: str, steal_after: float | None = None) -> JobShard | None:
    """Take the shard for this worker, or None. ``steal_after``: a queued shard is taken only when it has
    waited that long (the coordinator's rule; a shard task takes it at once).

    The shard's row is locked (``select_for_update``) while its state is read and changed, as job_claim does: a
    plain conditional UPDATE whose filter joins the job becomes ``id IN (subquery)`` on PostgreSQL, which a second
    claimer's UPDATE does not re-check after waiting for the first, so both would win."""
    now = timezone.now()
    stale = now - timedelta(seconds=settings.JOB_STALE_AFTER_SECONDS)
    with transaction.atomic():
        shard = JobShard.objects.select_for_update().select_related("job").filter(pk=shard_id).first()
        if shard is None:
            return None
        queued = shard.status == SS.QUEUED and (
            steal_after is None or shard.queued_at <= now - timedelta(seconds=steal_after)
        )
        gone = shard.status == SS.RUNNING and (shard.heartbeat_at is None or shard.heartbeat_at < stale)
        if gone and shard.attempts >= shard.job.max_attempts:
            # Its worker was lost on every attempt (a poison prompt, OOM): it fails; the coordinator fails the job.
            JobShard.objects.filter(pk=shard_id).update(
                status=SS.FAILED, finished=now, error="its worker was lost on every attempt (killed, out of memory?)"
            )
            return None
        if not (queued or gone) or shard.job.status != Job.Status.RUNNING or shard.job.cancel_requested:
            return None
        JobShard.objects.filter(pk=shard_id).update(
            status=SS.RUNNING, task_id=task_id, worker=worker, heartbeat_at=now, error="", attempts=shard.attempts + 1
        )
    return JobShard.objects.get(pk=shard_id)


def shard_heartbeat(*, shard_id: int, task_id: str) -> bool:
    return bool(
        JobShard.objects.filter(pk=shard_id, task_id=task_id, status=SS.RUNNING).update(heartbeat_at=timezone.now())
    )


def shard_progress(*, shard_id: int, task_id: str, done: int, total: int) -> bool:
    return bool(
        JobShard.objects.filter(pk=shard_id, task_id=task_id, status=SS.RUNNING).update(
            done=done, total=total, heartbeat_at=timezone.now()
        )
    )


def shard_end(*, shard_id: int, task_id: str, status: str, error: str = "") -> bool:
    """succeeded, failed (with the error) or cancelled; only by the holder of the shard."""
    return bool(
        JobShard.objects.filter(pk=shard_id, task_id=task_id, status=SS.RUNNING).update(
            status=status, error=error[:5000], finished=timezone.now()
        )
    )
