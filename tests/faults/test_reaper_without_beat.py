"""Issue 18: a job whose worker was killed is finished by the next worker with no celery beat anywhere
(`make web` + `make worker` alone). Every worker of the generation queue runs the stale-job reaper itself
(jobs.workers.Reaper); this test never calls jobs_reap_stale, and starts no beat.

Real worker processes, real Redis, the test's database. Nothing is timed: the test waits for what it expects.
"""

from __future__ import annotations

import pytest

from jobs.models import GeneratedPair, Job, JobEvent
from tests.faults.conftest import SLOW_N, slow_cd_job
from tests.jobs.conftest import finished_job, wait_for

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

N = SLOW_N


def _pairs(job) -> int:
    return GeneratedPair.objects.filter(job=job).count()


def test_a_killed_workers_job_is_requeued_by_the_next_workers_own_reaper(celery_worker_proc, user, weak_pair):
    job = slow_cd_job(user, weak_pair)
    wait_for(lambda: _pairs(job) >= 10, 60, what=f"first pairs; log:\n{celery_worker_proc.tail()}")
    celery_worker_proc.kill9()  # main process and pool child: no cleanup, its reaper thread dies with it
    assert 0 < _pairs(job) < N, "the job must be killed half way"
    assert Job.objects.get(pk=job.pk).status == "running"  # nobody told the database
    # The killed worker's message stays unacknowledged in Redis for the visibility timeout (hours): only a
    # reaper can bring the job back, and the only one running is the new worker's.
    w2 = celery_worker_proc.spawn()
    job = wait_for(lambda: finished_job(job.pk), 120, interval=0.5, what=f"job {job.pk} to finish:\n{w2.tail()}")
    assert job.status == "succeeded", job.error
    assert job.attempts == 2
    assert sorted(GeneratedPair.objects.filter(job=job).values_list("prompt_index", flat=True)) == list(range(N))
    statuses = [e.data["status"] for e in JobEvent.objects.filter(job=job, type="status").order_by("seq")]
    assert statuses == ["queued", "running", "queued", "running", "succeeded"]
    requeue = JobEvent.objects.filter(job=job, type="status", data__status="queued").order_by("seq").last()
    assert (
        requeue.data["message"].startswith("requeued: ")
        and "stopped sending heartbeats during attempt 1" in (requeue.data["message"])
    )
    # Who requeued it: the new worker's reaper says so in its log (the event itself names no reaper).
    assert f"reaper on {w2.node}: job {job.pk} requeued" in w2.log_text(), w2.tail()
    assert "reaper on" not in celery_worker_proc.log_text()  # the first worker found nothing to reap
    # And its log file is plain (ml.reporter.quiet_libraries at worker start): the job loaded its models without
    # transformers' "Loading weights" bar redrawing itself with carriage returns.
    assert "\r" not in w2.log_text() and "\x1b[" not in w2.log_text()
