"""Typed job specs through REST: paths never travel in params, every bad key is a 400 naming its path,
limits and the per-user cap hold, the stored spec is what runs, and old jobs still show and retry."""

from __future__ import annotations

import json

import pytest
from rest_framework.test import APIClient

from jobs import services
from jobs.models import Dataset, Job, JobEvent, ModelEntry

from .conftest import make_prompts
from .test_runner import _register_tiny_gold

pytestmark = pytest.mark.django_db


def _client(user) -> APIClient:
    c = APIClient()
    c.force_authenticate(user)
    return c


def _state():
    return (Job.objects.count(), JobEvent.objects.count(), ModelEntry.objects.count(), Dataset.objects.count())


@pytest.fixture
def body(weak_pair, prompts_ds):
    wb, wa = weak_pair
    return {"kind": "cd_generate", "weak_base": wb.pk, "weak_aligned": wa.pk, "prompts": prompts_ds.pk}


@pytest.fixture(autouse=True)
def _no_broker(monkeypatch):
    monkeypatch.setattr(services.dispatch, "send", lambda job_id: None)


@pytest.mark.parametrize(
    "change,key",
    [
        ({"params": {"cd_generate": {"prompts": "/etc/passwd"}}}, "params.cd_generate.prompts"),
        (
            {"params": {"cd_generate": {"aligned": "/outside/model", "base": "/outside/model"}}},
            "params.cd_generate.aligned",
        ),
        ({"params": {"aligned": "/outside/model"}}, "params.aligned"),
        ({"params": {"output_dir": "/tmp/elsewhere"}}, "params.output_dir"),
        ({"params": {"cd_generate": {"output_dir": "/tmp/elsewhere"}}}, "params.cd_generate.output_dir"),
        ({"kind": "weak_align", "params": {"weak_align": {"prompts": "/etc/passwd"}}}, "params.weak_align.prompts"),
        ({"kind": "weak_align", "params": {"weak_align": {"data": "/x.jsonl"}}}, "params.weak_align.data"),
    ],
)
def test_a_path_through_params_is_a_400_naming_the_field(user, body, change, key, settings):
    gold = services.dataset_create(name="g", chunks=[make_prompts(3)], gold="toy:review", owner=user)
    if change.get("kind") == "weak_align":
        change = {**change, "prompts": gold.pk}
    before = _state()
    res = _client(user).post("/api/v1/jobs/", {**body, **change}, format="json")
    assert res.status_code == 400, res.json()
    assert key in res.json(), res.json()
    assert "cannot be set in a request" in " ".join(res.json()[key]) or "unknown setting" in " ".join(res.json()[key])
    assert _state() == before


def test_unknown_nested_key_wrong_type_and_over_limit_are_400_with_key_paths(user, body, weak_pair):
    c = _client(user)
    res = c.post(
        "/api/v1/jobs/",
        {**body, "kind": "cong", "strong": weak_pair[0].pk, "params": {"sft": {"bogus_knob": 1}}},
        format="json",
    )
    # (no gold on this dataset: the gold error comes too, and the key path error is there beside it)
    assert res.status_code == 400 and "unknown setting; known:" in res.json()["params.sft.bogus_knob"][0]
    res = c.post("/api/v1/jobs/", {**body, "params": {"cd_generate": {"temperature": "hot"}}}, format="json")
    assert res.json() == {"params.cd_generate.temperature": ["must be a number, got 'hot'"]}
    res = c.post("/api/v1/jobs/", {**body, "params": {"max_new_tokens": 10**6}}, format="json")
    assert "over the limit max_new_tokens=" in res.json()["params.max_new_tokens"][0]


def test_over_limit_counts_are_400(user, body, settings):
    gold = services.dataset_create(name="g", chunks=[make_prompts(3)], gold="toy:review", owner=user)
    c = _client(user)
    before = _state()
    alphas = [0.5] * 200_000  # the 1 MB body that stalled a worker for minutes
    res = c.post(
        "/api/v1/jobs/",
        {**body, "kind": "alpha_sweep", "prompts": gold.pk, "params": {"alphas": alphas}},
        format="json",
    )
    assert res.status_code == 400 and "over the limit alphas=" in res.json()["params.alphas"][0]
    res = c.post(
        "/api/v1/jobs/",
        {**body, "kind": "preflight", "prompts": gold.pk, "params": {"n_samples": 100_000}},
        format="json",
    )
    assert res.status_code == 400 and "params.n_samples" in res.json()
    res = c.post(
        "/api/v1/jobs/",
        {"kind": "weak_align", "weak_base": body["weak_base"], "prompts": gold.pk, "params": {"k": 10**9}},
        format="json",
    )
    assert res.status_code == 400 and "params.k" in res.json()
    assert _state() == before
    settings.JOB_LIMITS = {**settings.JOB_LIMITS, "k": 3}  # the limits are the server's to set
    res = c.post(
        "/api/v1/jobs/",
        {"kind": "weak_align", "weak_base": body["weak_base"], "prompts": gold.pk, "params": {"k": 4}},
        format="json",
    )
    assert res.status_code == 400 and "k=3" in res.json()["params.k"][0]


def test_per_user_cap_answers_429_and_counts_only_active_jobs(user, other_user, body, settings, weak_pair, prompts_ds):
    settings.JOB_MAX_ACTIVE_PER_USER = 2
    c = _client(user)
    ids = [c.post("/api/v1/jobs/", body, format="json").json()["id"] for _ in range(2)]
    res = c.post("/api/v1/jobs/", body, format="json")
    assert res.status_code == 429 and "limit is 2" in res.json()["detail"]
    assert Job.objects.filter(owner=user).count() == 2
    Job.objects.filter(pk=ids[0]).update(status=Job.Status.SUCCEEDED)
    assert c.post("/api/v1/jobs/", body, format="json").status_code == 201
    # Someone else's count is their own (on models shared with everyone).
    ModelEntry.objects.filter(pk__in=[body["weak_base"], body["weak_aligned"]]).update(owner=None)
    other_body = {**body, "prompts": services.dataset_create(name="o", chunks=[make_prompts(2)], owner=other_user).pk}
    assert _client(other_user).post("/api/v1/jobs/", other_body, format="json").status_code == 201


def test_detail_shows_the_spec_with_defaults_and_epochs_never_dropped(user, body, weak_pair):
    c = _client(user)
    res = c.post(
        "/api/v1/jobs/",
        {
            **body,
            "kind": "train",
            "method": "sft",
            "strong": weak_pair[0].pk,
            "params": {"sft": {"num_train_epochs": 3}},
        },
        format="json",
    )
    # a dataset without a gold: train needs one
    assert res.status_code == 400 and "prompts" in res.json()
    res = c.post("/api/v1/jobs/", {**body, "params": {"epochs": 3}}, format="json")
    assert res.status_code == 400 and "params.epochs" in res.json()  # nothing trains in cd_generate: refused
    job = c.post("/api/v1/jobs/", {**body, "params": {"batch_size": 2}}, format="json").json()
    spec = c.get(f"/api/v1/jobs/{job['id']}/").json()["spec"]
    cd = spec["stages"]["cd_generate"]
    assert cd["batch_size"] == 2 and cd["temperature"] == 0.8 and cd["max_new_tokens"] == 256
    assert spec["alpha"] == 0.4 and spec["kind"] == "cd_generate"
    assert "spec" not in c.get("/api/v1/jobs/").json()["results"][0]  # lists stay light


def test_train_job_runs_the_epochs_its_spec_says(user, weak_pair, model_root):
    """params.sft.num_train_epochs=3 shows in the spec, and the SFT stage's recorded arguments say 3 epochs."""
    from django.conf import settings as dj

    from jobs.runner import run_job

    _register_tiny_gold()
    ds = services.dataset_create(name="t", chunks=[make_prompts(4)], gold="test:positive_words", owner=user)
    wb, wa = weak_pair
    job = services.job_create(
        user=user,
        kind="train",
        method="sft",
        weak_base=wb.pk,
        weak_aligned=wa.pk,
        strong=wb.pk,
        prompts=ds.pk,
        # drop_truncated off: 3 tokens cut every tiny-model sample (tests/ml/test_truncation.py checks the default).
        params={
            "max_new_tokens": 3,
            "sft": {"num_train_epochs": 3, "per_device_train_batch_size": 4, "drop_truncated": False},
        },
    )
    assert job.config["spec"]["stages"]["sft"]["num_train_epochs"] == 3
    assert run_job(job_id=job.pk) == "succeeded", Job.objects.get(pk=job.pk).error
    done = json.loads((dj.RUNS_DIR / str(job.pk) / "sft_cong_s" / "DONE.json").read_text())
    assert done["num_train_epochs"] == 3 and done["epochs_trained"] == pytest.approx(3.0)
    from ml.results import method_rows

    results = Job.objects.get(pk=job.pk).results
    assert results["results_version"] == 1 and results["kind"] == "train"
    assert [r.method for r in method_rows("train", results)] == ["ConG-S"]


def test_an_unscorable_pair_is_stored_counted_and_visible(user, weak_pair):
    """toy:review cannot score the tiny models' prompts: each pair keeps its error, the job says how many."""
    from jobs.runner import run_job

    ds = services.dataset_create(name="r", chunks=[make_prompts(3)], gold="toy:review", owner=user)
    wb, wa = weak_pair
    job = services.job_create(
        user=user, kind="cd_generate", weak_base=wb.pk, weak_aligned=wa.pk, prompts=ds.pk, params={"max_new_tokens": 3}
    )
    assert run_job(job_id=job.pk) == "succeeded"
    job.refresh_from_db()
    assert job.results["pairs"] == {"stored": 3, "score_errors": 3, "with_plain": 3, "with_rejected": 0}
    pairs = _client(user).get(f"/api/v1/jobs/{job.pk}/pairs/").json()["results"]
    assert len(pairs) == 3 and all(
        "not a review prompt" in p["score_error"] and p["gold_reward"] is None for p in pairs
    )
    assert any("could not be scored" in str(e.data) for e in job.events.filter(type="log"))


def test_an_old_job_without_a_spec_still_shows_and_retries_with_one(user, body):
    job = services.job_create(user=user, **body, params={"max_prompts": 2})
    old = {k: v for k, v in job.config.items() if k != "spec"}
    old["params"] = {"max_prompts": 2, "greedy": True, "sft": {"learning_rate": 1}}  # what main used to store
    Job.objects.filter(pk=job.pk).update(config=old, status=Job.Status.FAILED)
    c = _client(user)
    spec = c.get(f"/api/v1/jobs/{job.pk}/").json()["spec"]
    assert spec["stages"]["cd_generate"]["max_prompts"] == 2  # read as the old runner read it
    assert c.get(f"/jobs/{job.pk}/").status_code in (200, 302)
    assert c.post(f"/api/v1/jobs/{job.pk}/retry/").status_code == 200
    job.refresh_from_db()
    assert job.status == Job.Status.QUEUED and job.config["spec"] == spec


def test_the_migration_gives_old_jobs_their_spec(user, body):
    import importlib

    from django.apps import apps

    mig = importlib.import_module("jobs.migrations.0006_pair_score_error_job_spec")
    job = services.job_create(user=user, **body, params={"batch_size": 3})
    Job.objects.filter(pk=job.pk).update(config={k: v for k, v in job.config.items() if k != "spec"})
    mig.store_specs(apps, None)
    job.refresh_from_db()
    assert job.config["spec"]["stages"]["cd_generate"]["batch_size"] == 3
