"""Issue 6: what happens when things break. Every test runs a REAL worker process on a real Redis.

kill -9 mid-job, a poison job that kills its worker every time, duplicate delivery, cancel during
generation, and a Redis restart mid-job. The reaper is invoked the way production runs it
(`manage.py reap_stale_jobs`, or celery beat's periodic task) - here from the test, on a short clock.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
from django.core.management import call_command

from jobs import services
from jobs.models import Artifact, GeneratedPair, Job, JobEvent
from tests.jobs.conftest import WorkerProc, make_prompts, point_celery_at, wait_for

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

N = 120  # prompts; at batch_size 1 and 16 forced tokens a tiny model takes ~60 ms each: a ~8 s job


def _job(user, weak_pair, n=N, **kw):
    ds = services.dataset_create(name=f"p{n}", chunks=[make_prompts(n)], owner=user)
    wb, wa = weak_pair
    params = {"batch_size": 1, "max_new_tokens": 16, "cd_generate": {"ignore_eos": True}}
    return services.job_create(
        user=user,
        kind="cd_generate",
        weak_base=wb.pk,
        weak_aligned=wa.pk,
        prompts=ds.pk,
        alpha=0.4,
        params=params,
        **kw,
    )


def _pairs(job) -> int:
    return GeneratedPair.objects.filter(job=job).count()


def _statuses(job) -> list[str]:
    return [e.data["status"] for e in JobEvent.objects.filter(job=job, type="status").order_by("seq")]


def _finished(job, timeout, worker=None, reap=False):
    def done():
        if reap:
            call_command("reap_stale_jobs")
        return Job.objects.filter(pk=job.pk, status__in=Job.FINISHED).first()

    return wait_for(
        done, timeout, interval=0.5, what=f"job {job.pk} to finish; worker log:\n{worker.tail() if worker else ''}"
    )


def _running_pid(job, attempt) -> int:
    ev = wait_for(
        lambda: JobEvent.objects.filter(job=job, type="status", data__attempt=attempt).first(),
        60,
        what=f"attempt {attempt} to start",
    )
    return ev.data["pid"]


def test_kill9_mid_job_resumes_with_exactly_n_pairs(celery_worker_proc, user, weak_pair):
    job = _job(user, weak_pair)
    wait_for(lambda: _pairs(job) >= 10, 60, what=f"first pairs; log:\n{celery_worker_proc.tail()}")
    celery_worker_proc.kill9()  # the whole worker: main process and pool child, no cleanup at all
    before = _pairs(job)
    assert 0 < before < N, "the job must be killed half way"
    assert Job.objects.get(pk=job.pk).status == "running"  # nobody told the database
    w2 = celery_worker_proc.spawn()
    job = _finished(job, 90, w2, reap=True)  # stale heartbeat -> reaper requeues -> new worker resumes
    assert job.status == "succeeded", job.error
    assert job.attempts == 2
    assert _pairs(job) == N
    assert sorted(GeneratedPair.objects.filter(job=job).values_list("prompt_index", flat=True)) == list(range(N))
    assert _statuses(job) == ["queued", "running", "queued", "running", "succeeded"]
    requeue = JobEvent.objects.filter(job=job, type="status", data__status="queued").order_by("seq").last()
    assert "stopped sending heartbeats" in requeue.data["message"]


def test_poison_job_fails_after_max_attempts_with_clear_message(celery_worker_proc, user, weak_pair):
    job = _job(user, weak_pair, max_attempts=2)
    for attempt in (1, 2):
        pid = _running_pid(job, attempt)  # the pool child running it: kill it, as an OOM killer would
        os.kill(pid, signal.SIGKILL)
    # reject_on_worker_lost redelivers the same message; the third claim is past max_attempts.
    job = _finished(job, 60, celery_worker_proc)
    assert job.status == "failed"
    assert job.error.startswith("gave up after 2 attempts; last error: worker"), job.error
    assert "lost during attempt 2" in job.error
    assert job.attempts == 2
    # and the worker is still healthy: it runs the next job
    ok = _job(user, weak_pair, n=3)
    assert _finished(ok, 60, celery_worker_proc).status == "succeeded"


def test_duplicate_delivery_runs_once(celery_worker_proc, user, weak_pair):
    from jobs.tasks import job_run_task

    job = _job(user, weak_pair, n=20)
    job_run_task.delay(job.pk)  # the same job sent twice (a client retry, a reaper race ...)
    job_run_task.delay(job.pk)
    job = _finished(job, 60, celery_worker_proc)
    assert job.status == "succeeded" and job.attempts == 1
    time.sleep(1.5)  # let the duplicates be consumed
    assert _statuses(job) == ["queued", "running", "succeeded"]
    assert _pairs(job) == 20


def test_cancel_during_generation_within_5s_and_worker_takes_next_job(celery_worker_proc, user, weak_pair):
    job = _job(user, weak_pair)
    wait_for(lambda: _pairs(job) >= 3, 60, what=f"first pairs; log:\n{celery_worker_proc.tail()}")
    t0 = time.monotonic()
    services.job_cancel(job=job)
    job = wait_for(
        lambda: Job.objects.filter(pk=job.pk, status="cancelled").first(), 5, interval=0.1, what="cancelled within 5 s"
    )
    assert time.monotonic() - t0 < 5
    assert job.partial and 0 < _pairs(job) < N
    assert all(Artifact.objects.filter(job=job).values_list("partial", flat=True))
    assert _statuses(job)[-2:] == ["cancelling", "cancelled"]
    nxt = _job(user, weak_pair, n=3)
    assert _finished(nxt, 60, celery_worker_proc).status == "succeeded"


def test_redis_restart_mid_job_never_leaves_it_running(worker_env, user, weak_pair, tmp_path, redis_url):
    # A private Redis (even on CI) so this test may stop and start it.
    from congweb import embedded_redis

    sock = tmp_path / "r" / "redis.sock"
    proc = embedded_redis.start(sock)
    own = f"unix://{sock}"
    env = {**worker_env, "REDIS_URL": own}
    point_celery_at(own)
    w = WorkerProc(env, tmp_path / "worker-redis.log")
    procs = [proc]
    try:
        w.start()
        job = _job(user, weak_pair)
        wait_for(lambda: _pairs(job) >= 5, 60, what=f"first pairs; log:\n{w.tail()}")
        embedded_redis.stop(sock)  # the broker goes away mid-job (queue contents lost: no persistence)
        procs[0].wait(timeout=10)
        time.sleep(0.5)
        procs.append(embedded_redis.start(sock))  # and comes back empty
        job = _finished(job, 120, w, reap=True)
        assert job.status in ("succeeded", "failed")
        if job.status == "failed":
            assert job.error
        else:
            assert _pairs(job) == N
        assert sorted(GeneratedPair.objects.filter(job=job).values_list("prompt_index", flat=True)) == list(
            range(_pairs(job))
        )
    finally:
        w.stop()
        point_celery_at(redis_url)
        for p in procs:
            if p is not None and p.poll() is None:
                p.terminate()
                p.wait(timeout=10)
