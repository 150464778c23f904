"""Sharded generation on Celery (jobs.sharding, jobs.services.shards): the claim rules of a shard, a sharded
job in one process matching an unsharded one row for row, and the params that ask for it."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from jobs import services
from jobs.models import GeneratedPair, Job, JobEvent, JobShard
from jobs.runner import run_job
from tests.jobs.conftest import make_prompts

pytestmark = pytest.mark.django_db(transaction=True)

N = 12


def _job(user, weak_pair, n=N, shards=None, **params):
    ds = services.dataset_create(name=f"p{n}-{shards}", chunks=[make_prompts(n)], owner=user)
    wb, wa = weak_pair
    params = {"batch_size": 2, "max_new_tokens": 6, "do_sample": True, **params}
    if shards is not None:
        params["shards"] = shards
    return services.job_create(
        user=user, kind="cd_generate", weak_base=wb.pk, weak_aligned=wa.pk, prompts=ds.pk, alpha=0.4, params=params
    )


def _running(job) -> Job:
    Job.objects.filter(pk=job.pk).update(status=Job.Status.RUNNING, attempts=1, heartbeat_at=timezone.now())
    return Job.objects.get(pk=job.pk)


def _plan(job, count=3):
    return services.shards_plan(
        job_id=job.pk, stage="cd_generate", count=count, generator="cd_generate", config={"output_dir": "/x"}
    )


@pytest.fixture
def quiet_broker(worker_env):
    """The test Redis as broker (shard tasks are sent there and nobody takes them), with the workers' settings."""
    return worker_env


def test_a_shard_is_claimed_once_and_a_holder_that_lost_it_is_told(user, weak_pair, quiet_broker):
    job = _running(_job(user, weak_pair))
    s0, s1, s2 = _plan(job)
    a = services.shard_claim(shard_id=s0.pk, task_id="A", worker="wa")
    assert a is not None and (a.status, a.attempts, a.worker) == ("running", 1, "wa")
    assert services.shard_claim(shard_id=s0.pk, task_id="B", worker="wb") is None  # held and beating
    # The coordinator waits before taking a shard it offered to others; a shard task takes it at once.
    assert services.shard_claim(shard_id=s1.pk, task_id="C", worker="wc", steal_after=60) is None
    assert services.shard_claim(shard_id=s1.pk, task_id="C", worker="wc", steal_after=0) is not None
    # A's worker stops beating: after JOB_STALE_AFTER_SECONDS the shard is anyone's, and A is told it lost it.
    JobShard.objects.filter(pk=s0.pk).update(heartbeat_at=timezone.now() - timedelta(seconds=60))
    b = services.shard_claim(shard_id=s0.pk, task_id="B", worker="wb")
    assert b is not None and (b.attempts, b.worker, b.task_id) == (2, "wb", "B")
    assert services.shard_progress(shard_id=s0.pk, task_id="A", done=1, total=4) is False
    assert services.shard_end(shard_id=s0.pk, task_id="A", status="succeeded") is False
    assert JobShard.objects.get(pk=s0.pk).status == "running"
    assert services.shard_progress(shard_id=s0.pk, task_id="B", done=3, total=4) is True
    # Nothing is claimed for a job being cancelled.
    services.job_cancel(job=job)
    assert services.shard_claim(shard_id=s2.pk, task_id="D", worker="wd") is None


def test_a_shard_that_lost_its_worker_on_every_attempt_fails(user, weak_pair, quiet_broker):
    job = _running(_job(user, weak_pair))
    s0 = _plan(job, count=2)[0]
    past = timezone.now() - timedelta(seconds=60)
    JobShard.objects.filter(pk=s0.pk).update(status="running", attempts=job.max_attempts, heartbeat_at=past)
    assert services.shard_claim(shard_id=s0.pk, task_id="X", worker="wx") is None
    s0.refresh_from_db()
    assert s0.status == "failed" and "lost on every attempt" in s0.error


def test_a_planned_stage_keeps_its_count_and_requeues_what_failed(user, weak_pair, quiet_broker):
    job = _running(_job(user, weak_pair))
    first = _plan(job, count=3)
    JobShard.objects.filter(pk=first[1].pk).update(status="failed", error="boom")
    again = _plan(job, count=5)  # a later attempt would cut it otherwise: the files on disk are cut in 3
    assert [(s.index, s.count, s.status, s.error) for s in again] == [(i, 3, "queued", "") for i in range(3)]


def test_two_threads_claiming_one_shard_exactly_one_wins(user, weak_pair, quiet_broker):
    job = _running(_job(user, weak_pair))
    s0 = _plan(job, count=2)[0]
    barrier, won = threading.Barrier(2), []

    def claim(name):
        try:
            barrier.wait()
            won.append(services.shard_claim(shard_id=s0.pk, task_id=name, worker=name))
        finally:
            connection.close()

    threads = [threading.Thread(target=claim, args=(n,)) for n in ("T1", "T2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len([w for w in won if w is not None]) == 1
    assert JobShard.objects.get(pk=s0.pk).attempts == 1


def _pairs(job):
    return list(GeneratedPair.objects.filter(job=job).order_by("prompt_index"))


@pytest.mark.slow  # runs whole jobs in this process (model loading, generation)
def test_a_sharded_job_on_one_worker_stores_exactly_the_unsharded_pairs(user, weak_pair, quiet_broker, settings):
    """Nobody takes the offered shard: the coordinator runs it itself after the wait, and the pairs are those of
    the same job run whole (sampled, same seed), each stamped with its shard and worker; their plain side, made
    in shards too, is the whole run's as well."""
    settings.JOB_SHARD_STEAL_AFTER_SECONDS = 0
    whole = _job(user, weak_pair, shards=1)
    assert run_job(job_id=whole.pk, task_id="t-whole", worker="w-here") == "succeeded"
    job = _job(user, weak_pair, shards=2)
    assert job.config["spec"]["execution"] == {"shards": 2}
    assert run_job(job_id=job.pk, task_id="t-sharded", worker="w-here") == "succeeded"
    job.refresh_from_db()
    a, b = _pairs(whole), _pairs(job)
    assert [p.prompt_index for p in b] == list(range(N))
    assert [(p.chosen, p.implicit_reward_sum) for p in a] == [(p.chosen, p.implicit_reward_sum) for p in b]
    assert [p.plain for p in a] == [p.plain for p in b] and None not in [p.plain for p in b]
    assert {p.shard for p in a} == {None} and {p.shard for p in b} == {0, 1}
    assert {p.worker for p in a} == {p.worker for p in b} == {"w-here"}
    shards = list(JobShard.objects.filter(job=job).order_by("stage", "index"))
    assert [(s.stage, s.status, s.attempts, s.done, s.total, s.mirror_pairs) for s in shards] == [
        (stage, "succeeded", 1, 6, 6, True) for stage in ("cd_generate", "plain_generate") for _ in range(2)
    ]
    assert job.results["n"] == N and job.results["shards"] == 2
    # One bar per stage: the shards' rows summed, ending at N of N.
    bars = [e.data for e in JobEvent.objects.filter(job=job, type="progress").order_by("seq")]
    assert [d["stage"] for d in bars] == sorted((d["stage"] for d in bars), key=["cd_generate", "plain_generate"].index)
    for stage in ("cd_generate", "plain_generate"):
        mine = [d for d in bars if d["stage"] == stage]
        assert (mine[-1]["done"], mine[-1]["total"]) == (N, N)
        assert all(x["done"] <= y["done"] for x, y in zip(mine, mine[1:]))


@pytest.mark.slow  # runs whole jobs in this process (model loading, generation)
def test_the_api_and_the_admin_show_who_generated_what(
    user, other_user, django_user_model, weak_pair, quiet_broker, settings, client
):
    settings.JOB_SHARD_STEAL_AFTER_SECONDS = 0
    job = _job(user, weak_pair, shards=2)
    assert run_job(job_id=job.pk, task_id="t-api", worker="w-api") == "succeeded"
    api = APIClient()
    api.force_authenticate(user)
    shards = api.get(f"/api/v1/jobs/{job.pk}/shards/").json()
    assert [(r["stage"], r["index"], r["count"], r["status"], r["worker"]) for r in shards] == [
        (stage, i, 2, "succeeded", "w-api") for stage in ("cd_generate", "plain_generate") for i in range(2)
    ]
    assert [(r["done"], r["total"], r["attempts"]) for r in shards] == [(6, 6, 1)] * 4
    pairs = api.get(f"/api/v1/jobs/{job.pk}/pairs/", {"page_size": 50}).json()["results"]
    assert sorted((p["shard"], p["worker"]) for p in pairs) == [(0, "w-api")] * 6 + [(1, "w-api")] * 6
    api.force_authenticate(other_user)
    assert api.get(f"/api/v1/jobs/{job.pk}/shards/").status_code == 404  # another user's job: not even its parts
    client.force_login(django_user_model.objects.create_superuser(username="su", password="pw-su-123"))
    page = client.get(f"/admin/jobs/job/{job.pk}/change/").content.decode()
    assert "Job shards" in page and page.count("w-api") >= 2
    client.force_login(user)  # the job page: the detail on demand, under the one bar
    page = client.get(f"/jobs/{job.pk}/").content.decode()
    assert 'id="shards"' in page and "Shards: 4 parts" in page  # two stages (CD, plain pi_post), two shards each
    assert 'data-shard="cd_generate/1"' in page and "6 of 6" in page


@pytest.mark.parametrize(
    ("kind_params", "path", "message"),
    [
        ({"shards": 0}, "params.shards", 'must be "auto" or a whole number >= 1'),
        ({"shards": True}, "params.shards", 'must be "auto" or a whole number >= 1'),
        ({"shards": "all"}, "params.shards", 'must be "auto" or a whole number >= 1'),
        ({"shards": 65}, "params.shards", "must be at most 64"),
    ],
)
def test_bad_shards_are_refused_by_name(user, weak_pair, quiet_broker, kind_params, path, message):
    with pytest.raises(ValidationError) as exc:
        _job(user, weak_pair, **kind_params)
    assert message in " ".join(exc.value.message_dict[path])


def test_shards_is_refused_where_nothing_is_generated(user, weak_pair, quiet_broker):
    from ml.resolve import resolve
    from ml.spec import SpecError

    with pytest.raises(SpecError) as exc:
        resolve("weak_align", {"shards": 2})
    assert exc.value.errors == {
        "params.shards": ["shards applies to kinds cong, train, cd_generate, alpha_sweep, evaluate, not weak_align"]
    }
    assert resolve("cd_generate", {})["execution"] == {"shards": "auto"}


@pytest.mark.slow  # runs whole jobs in this process (model loading, generation)
def test_a_shard_that_fails_fails_the_job_with_its_message(user, weak_pair, quiet_broker, settings):
    settings.JOB_SHARD_STEAL_AFTER_SECONDS = 0
    import json

    long = " ".join(["good"] * 1100)  # more tokens than the tiny models' 1024 positions
    rows = [{"prompt": f"tell me {i}"} for i in range(N - 1)] + [{"prompt": long}]
    ds = services.dataset_create(
        name="with-a-long-one", chunks=["".join(json.dumps(r) + "\n" for r in rows).encode()], owner=user
    )
    wb, wa = weak_pair
    job = services.job_create(
        user=user, kind="cd_generate", weak_base=wb.pk, weak_aligned=wa.pk, prompts=ds.pk, alpha=0.4,
        params={"batch_size": 2, "max_new_tokens": 6, "shards": 2},
    )  # fmt: skip
    assert run_job(job_id=job.pk, task_id="t-fail", worker="w-here") == "failed"
    job.refresh_from_db()
    failed = JobShard.objects.get(job=job, status="failed")
    assert job.status == "failed" and f"cd_generate: shard {failed.index}/2 failed: " in job.error
    assert "positions" in failed.error and "positions" in job.error  # the ml error, named, not "worker lost"


@pytest.mark.slow  # runs a whole sweep in this process
def test_a_sharded_sweep_keeps_each_alphas_prompt_indexes(user, weak_pair, quiet_broker, settings):
    """Each alpha's rows are mirrored at prompt index k*N + i (ml.execute's offsets): a shard must carry its
    stage's offset, or two alphas' pairs would collide on one index and half of them would be lost."""
    from ml.gold import GoldReward, register

    register("test:words", lambda: GoldReward(name="test:words", score=lambda p, r: float(len(r.split()))))
    settings.JOB_SHARD_STEAL_AFTER_SECONDS = 0
    ds = services.dataset_create(name="sweep", chunks=[make_prompts(N)], gold="test:words", owner=user)
    wb, wa = weak_pair
    job = services.job_create(
        user=user, kind="alpha_sweep", weak_base=wb.pk, weak_aligned=wa.pk, prompts=ds.pk,
        params={"alphas": [0.0, 1.0], "batch_size": 2, "max_new_tokens": 4, "shards": 2},
    )  # fmt: skip
    assert run_job(job_id=job.pk, task_id="t-sweep", worker="w-here") == "succeeded"
    pairs = GeneratedPair.objects.filter(job=job)
    assert sorted(pairs.values_list("prompt_index", flat=True)) == list(range(2 * N))
    assert sorted(set(pairs.values_list("alpha", "shard"))) == [(0.0, 0), (0.0, 1), (1.0, 0), (1.0, 1)]
    stages = sorted(set(JobShard.objects.filter(job=job).values_list("stage", "index_offset")))
    assert [offset for _, offset in stages] == [0, N]


@pytest.mark.slow  # a whole training pipeline in this process (tiny models, one step)
def test_a_sharded_pipeline_shards_plain_sampling_and_evaluation_and_stores_no_plain_pairs(
    user, weak_pair, quiet_broker, settings
):
    """In `train` (method weak_sft) the generation is plain pi_post sampling and the strong model's evaluation:
    both run in shards, and the plain samples, which the job does not store as pairs, stay unstored."""
    from ml.gold import GoldReward, register

    register("test:words", lambda: GoldReward(name="test:words", score=lambda p, r: float(len(r.split()))))
    settings.JOB_SHARD_STEAL_AFTER_SECONDS = 0
    ds = services.dataset_create(name="train", chunks=[make_prompts(N)], gold="test:words", owner=user)
    wb, wa = weak_pair
    job = services.job_create(
        user=user, kind="train", method="weak_sft", weak_base=wb.pk, weak_aligned=wa.pk, strong=wa.pk, prompts=ds.pk,
        params={"shards": 2, "batch_size": 2, "max_new_tokens": 4, "train_max_steps": 1, "evaluate": {"batch_size": 2}},
    )  # fmt: skip
    assert run_job(job_id=job.pk, task_id="t-train", worker="w-here") == "succeeded", Job.objects.get(pk=job.pk).error
    stages = dict(JobShard.objects.filter(job=job).values_list("stage", "mirror_pairs").distinct())
    assert stages.get("plain_generate") is False and any(s.startswith("eval/") for s in stages)
    assert set(JobShard.objects.filter(job=job).values_list("status", flat=True)) == {"succeeded"}
    assert not GeneratedPair.objects.filter(job=job).exists()
