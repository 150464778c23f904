"""A real Celery worker process (prefork, -c 1) on the real Redis runs a tiny cd_generate job end to end:
the API creates the job, the worker claims it, generates, mirrors pairs and reports events. The module's
tests share one worker (``shared_celery_worker``): each waits for its jobs to finish and leaves it healthy."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from jobs import services
from jobs.models import GeneratedPair

from .conftest import finished_job, make_prompts, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def test_cd_generate_job_runs_end_to_end_on_a_real_worker(shared_celery_worker, user, weak_pair):
    ds = services.dataset_create(name="p", chunks=[make_prompts(6)], owner=user)
    wb, wa = weak_pair
    c = APIClient()
    c.force_authenticate(user)
    res = c.post(
        "/api/v1/jobs/",
        {
            "kind": "cd_generate",
            "weak_base": wb.pk,
            "weak_aligned": wa.pk,
            "prompts": ds.pk,
            "alpha": 0.3,
            "params": {"max_new_tokens": 4, "batch_size": 2},
        },
        format="json",
    )
    assert res.status_code == 201, res.json()
    job_id = res.json()["id"]
    job = wait_for(
        lambda: finished_job(job_id),
        90,
        what=f"job to finish; worker log:\n{shared_celery_worker.tail()}",
    )
    assert job.status == "succeeded", (job.error, shared_celery_worker.tail())
    assert job.attempts == 1 and job.progress == 1.0
    pairs = GeneratedPair.objects.filter(job=job).order_by("prompt_index")
    assert [p.prompt_index for p in pairs] == list(range(6))
    assert all(
        p.alpha == 0.3 and p.implicit_reward_sum is not None and p.implicit_reward_mean is not None for p in pairs
    )
    assert pairs[0].prompt == "the movie 0 was"
    events = c.get(f"/api/v1/jobs/{job_id}/events/").json()
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(1, len(seqs) + 1))
    statuses = [e["data"]["status"] for e in events if e["type"] == "status"]
    assert statuses == ["queued", "running", "succeeded"]
    progress = [e for e in events if e["type"] == "progress"]
    assert progress and progress[-1]["data"]["done"] == progress[-1]["data"]["total"]
    assert job.results["n"] == 6 and job.results["pairs"] == {
        "stored": 6,
        "score_errors": 0,
        "with_plain": 6,
        "with_rejected": 0,
    }
    assert c.get(f"/api/v1/jobs/{job_id}/results/").json()["artifacts"][0]["kind"] == "samples"


def test_a_long_alpha_sweep_cancels_within_a_batch_on_a_real_worker(shared_celery_worker, user, weak_pair):
    """21 alphas of slow, one-prompt batches: cancel lands while the first alphas run, the worker stops within
    a batch (a few more pair rows at most, counted rather than timed), and every alpha that ran had its own
    folder."""
    from django.conf import settings

    ds = services.dataset_create(name="g", chunks=[make_prompts(30)], gold="toy:review", owner=user)
    wb, wa = weak_pair
    c = APIClient()
    c.force_authenticate(user)
    alphas = [round(0.05 * i, 2) for i in range(21)]
    res = c.post(
        "/api/v1/jobs/",
        {
            "kind": "alpha_sweep",
            "weak_base": wb.pk,
            "weak_aligned": wa.pk,
            "prompts": ds.pk,
            "params": {"alphas": alphas, "batch_size": 1, "max_new_tokens": 12},
        },
        format="json",
    )
    assert res.status_code == 201, res.json()
    job_id = res.json()["id"]
    wait_for(
        lambda: GeneratedPair.objects.filter(job_id=job_id).count() >= 2,
        90,
        what=f"the first pairs; worker log:\n{shared_celery_worker.tail()}",
    )
    assert c.post(f"/api/v1/jobs/{job_id}/cancel/").status_code == 200
    at_cancel = GeneratedPair.objects.filter(job_id=job_id).count()
    job = wait_for(
        lambda: finished_job(job_id),
        60,
        what=f"the cancel to be honoured; worker log:\n{shared_celery_worker.tail()}",
    )
    assert job.status == "cancelled" and job.partial, (job.status, job.error)
    # The cancel flag is read at most every 0.5 s and the pair mirror trails generation by up to one sync, so
    # some rows land after the cancel (tens at the tiny models' speed: 17 seen on PostgreSQL); what matters is
    # that the sweep stops within its first alphas, far from all 21 x 30 rows.
    after = GeneratedPair.objects.filter(job_id=job_id).count()
    assert after <= at_cancel + 60 and after < len(alphas) * 30 // 3, (at_cancel, after)
    folders = sorted(p.name for p in (settings.RUNS_DIR / str(job_id)).glob("cd_generate_*"))
    assert 1 <= len(folders) < len(alphas) and "cd_generate_a0.0" in folders


def test_unscorable_pairs_are_kept_and_counted_on_a_real_worker(shared_celery_worker, user, weak_pair):
    """The dataset's gold (toy:review) cannot score the tiny models' prompts: the job still stores every pair,
    each with its score error, and its results and log say how many (it used to 'succeed' with 0 pairs)."""
    ds = services.dataset_create(name="r", chunks=[make_prompts(4)], gold="toy:review", owner=user)
    wb, wa = weak_pair
    c = APIClient()
    c.force_authenticate(user)
    res = c.post(
        "/api/v1/jobs/",
        {
            "kind": "cd_generate",
            "weak_base": wb.pk,
            "weak_aligned": wa.pk,
            "prompts": ds.pk,
            "params": {"max_new_tokens": 3},
        },
        format="json",
    )
    assert res.status_code == 201, res.json()
    job_id = res.json()["id"]
    job = wait_for(
        lambda: finished_job(job_id),
        90,
        what=f"job to finish; worker log:\n{shared_celery_worker.tail()}",
    )
    assert job.status == "succeeded", (job.error, shared_celery_worker.tail())
    assert job.results["pairs"] == {"stored": 4, "score_errors": 4, "with_plain": 4, "with_rejected": 0}
    pairs = c.get(f"/api/v1/jobs/{job_id}/pairs/").json()["results"]
    assert len(pairs) == 4 and all("not a review prompt" in p["score_error"] for p in pairs)
    assert any("could not be scored" in str(e["data"]) for e in c.get(f"/api/v1/jobs/{job_id}/events/").json())
