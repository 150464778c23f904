"""Sharded generation on REAL workers and the real Redis: two workers share a job's generation, and kill -9 of
the worker in the middle of a shard reruns that shard alone (resuming its file) and still gives exactly N pairs.
Nothing is timed: each step waits for what it expects (pytest-timeout guards hangs)."""

from __future__ import annotations

import pytest

from jobs import services
from jobs.models import GeneratedPair, Job, JobShard
from jobs.workers import live
from tests.jobs.conftest import finished_job, make_prompts, wait_for

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def _job(user, weak_pair, n, **params):
    ds = services.dataset_create(name=f"p{n}", chunks=[make_prompts(n)], owner=user)
    wb, wa = weak_pair
    params = {"batch_size": 1, "max_new_tokens": 16, "cd_generate": {"ignore_eos": True}, **params}
    return services.job_create(
        user=user, kind="cd_generate", weak_base=wb.pk, weak_aligned=wa.pk, prompts=ds.pk, alpha=0.4, params=params
    )


def _shards(job, stage: str = "cd_generate") -> list[JobShard]:
    # A CD job's second stage, its pairs' plain side (plain_generate), is sharded the same way.
    return list(JobShard.objects.filter(job=job, stage=stage).order_by("index"))


def _done(job, timeout, *workers):
    logs = "\n".join(w.tail() for w in workers)
    return wait_for(lambda: finished_job(job.pk), timeout, interval=0.5, what=f"job {job.pk}; logs:\n{logs}")


def test_two_workers_share_a_job_and_it_ends_with_exactly_n_pairs(celery_worker_proc, user, weak_pair):
    w1, w2 = celery_worker_proc, celery_worker_proc.spawn()
    # Both announced themselves (jobs.workers): `shards: auto`, the default, counts them.
    wait_for(lambda: {w["name"] for w in live()} == {w1.node, w2.node}, 30, what="both workers in the registry")
    n = 40
    job = _done(_job(user, weak_pair, n), 120, w1, w2)
    assert job.status == "succeeded", job.error
    assert job.results["shards"] == 2
    pairs = GeneratedPair.objects.filter(job=job)
    assert sorted(pairs.values_list("prompt_index", flat=True)) == list(range(n))
    assert set(pairs.values_list("shard", flat=True)) == {0, 1}
    assert set(pairs.values_list("worker", flat=True)) == {w1.node, w2.node}  # both workers generated
    assert [(s.status, s.attempts) for s in _shards(job)] == [("succeeded", 1)] * 2
    assert {s.worker for s in _shards(job)} == {w1.node, w2.node}
    assert [s.status for s in _shards(job, "plain_generate")] == ["succeeded"] * 2
    assert not pairs.filter(plain__isnull=True).exists()  # every pair got its plain side from the shards


def test_kill9_of_a_shard_worker_reruns_that_shard_alone_with_exactly_n_pairs(celery_worker_proc, user, weak_pair):
    w1, w2 = celery_worker_proc, celery_worker_proc.spawn()
    workers = {w1.node: w1, w2.node: w2}
    n = 120  # ~60 ms a prompt on one core: each shard runs for seconds, long enough to be killed half way
    job = _job(user, weak_pair, n, shards=2)
    coordinator = wait_for(lambda: Job.objects.get(pk=job.pk).worker, 60, what="the job to start")
    assert coordinator
    s1 = wait_for(
        lambda: (s := JobShard.objects.filter(job=job, index=1, status="running", done__gte=5).first()) and s,
        90,
        what="shard 1 to be half way on the other worker",
    )
    victim = workers[s1.worker]
    victim.kill9()  # main process and pool child, no cleanup
    before = set(GeneratedPair.objects.filter(job=job, shard=1).values_list("prompt_index", flat=True))
    assert 0 < len(before) < n // 2
    survivor = w2 if victim is w1 else w1
    job = _done(job, 180, survivor)
    assert job.status == "succeeded", job.error
    assert job.attempts == 1  # the job itself never restarted: only the shard did
    shards = _shards(job)
    assert [(s.index, s.status) for s in shards] == [(0, "succeeded"), (1, "succeeded")]
    assert shards[0].attempts == 1 and shards[1].attempts == 2  # shard 0 never ran again
    assert shards[1].worker == survivor.node
    pairs = GeneratedPair.objects.filter(job=job)
    assert sorted(pairs.values_list("prompt_index", flat=True)) == list(range(n))
    assert not pairs.filter(plain__isnull=True).exists()
    # The rows the killed worker had written were kept (resumed from its file), the rest came from the survivor.
    by_worker = dict(pairs.filter(shard=1).values_list("prompt_index", "worker"))
    assert {by_worker[i] for i in before} == {victim.node}
    assert set(by_worker.values()) == {victim.node, survivor.node}
