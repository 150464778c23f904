"""A pairwise judge through the app: a cong job's ``judge`` is a registered causal LM id, checked at submit like the
job's other models (yours or shared, a vocabulary that can answer A or B, a kind and methods it can compare) and at
run time again; the job's results carry each method's judge win rate and length-controlled win rate against
weak_sft, the numbers its evaluations wrote."""

from __future__ import annotations

import pytest
from django.conf import settings as dj
from rest_framework.test import APIClient

from jobs import services
from jobs.models import Job, ModelEntry
from jobs.runner import run_job
from ml.io import SAMPLES, read_json, read_jsonl

from .conftest import WORDS, save_tiny_model, tiny_cong_request

JUDGE_KEYS = ("judge_win_rate", "judge_lc_win_rate", "judge_win_ci", "judge_lc_win_ci")


@pytest.fixture(scope="module")
def judge_folder(tiny_model_root):
    """A tiny causal LM whose vocabulary has the answers "A" and "B", under the test model root."""
    return save_tiny_model(tiny_model_root / "judge_lm", words=[*WORDS, "A", "B"], seed=7)


def _api(user) -> APIClient:
    c = APIClient()
    c.force_authenticate(user)
    return c


def _register(user, path, name: str) -> int:
    res = _api(user).post("/api/v1/models/", {"name": name, "path": str(path), "kind": "any"}, format="json")
    assert res.status_code == 201, res.json()
    return int(res.json()["id"])


@pytest.fixture
def cong_request(user, weak_pair):
    return tiny_cong_request(
        user,
        weak_pair,
        ["weak_sft", "cong_s"],
        evaluate={"n_samples": 2, "judge_batch_size": 3, "judge_bootstrap": 20},
    )


@pytest.mark.django_db
def test_the_judge_is_checked_at_submit_like_the_jobs_models(
    model_root, user, other_user, weak_pair, judge_folder, cong_request, monkeypatch
):
    monkeypatch.setattr(services.dispatch, "send", lambda job_id: None)
    c = _api(user)
    judge_id = _register(user, judge_folder, "judge")

    def refused(body: dict) -> list[str]:
        res = c.post("/api/v1/jobs/", body, format="json")
        assert res.status_code == 400, res.json()
        assert "judge" in res.json(), res.json()
        return res.json()["judge"]

    theirs = _register(other_user, judge_folder, "their-judge")
    assert "no model with id" in refused({**cong_request, "judge": theirs})[0]
    wb, _ = weak_pair
    assert "cannot judge" in refused({**cong_request, "judge": wb.pk})[0]  # its vocabulary has no "A", "B"
    assert "weak_sft's" in refused({**cong_request, "methods": ["cong_s", "cong"], "judge": judge_id})[0]
    evaluate = {"kind": "evaluate", "strong": wb.pk, "prompts": cong_request["prompts"], "judge": judge_id}
    assert "only used by kind=cong" in refused(evaluate)[0]

    res = c.post("/api/v1/jobs/", {**cong_request, "judge": judge_id}, format="json")
    assert res.status_code == 201, res.json()
    job = Job.objects.get(pk=res.json()["id"])
    assert job.config["judge"]["id"] == judge_id and job.config["judge"]["name"] == "judge"
    assert services.job_inputs(job.config, "/x").judge == str(judge_folder.resolve())
    # The worker checks the judge again when the job runs, like every model the job names.
    services.job_check_access(job=job)
    ModelEntry.objects.filter(pk=judge_id).update(path=str(model_root / "weak_base"))
    with pytest.raises(ValueError, match="judge: model 'judge' now points at another file"):
        services.job_check_access(job=job)


@pytest.mark.django_db
def test_a_cong_job_with_a_judge_reports_its_win_rates_against_weak_sft(user, judge_folder, cong_request, monkeypatch):
    monkeypatch.setattr(services.dispatch, "send", lambda job_id: None)
    judge_id = _register(user, judge_folder, "judge")
    job = services.job_create(user=user, judge=judge_id, **cong_request)
    assert run_job(job_id=job.pk) == "succeeded", Job.objects.get(pk=job.pk).error
    job.refresh_from_db()
    methods = job.results["methods"]
    metrics = read_json(dj.RUNS_DIR / str(job.pk) / "eval" / "cong_s" / "metrics.json")
    for key in JUDGE_KEYS:
        assert methods["cong_s"][key] == metrics[key]
    assert 0.0 <= methods["cong_s"]["judge_win_rate"] <= 1.0 and 0.0 <= methods["cong_s"]["judge_lc_win_rate"] <= 1.0
    assert metrics["judge_name"] == "judge_lm" and metrics["judge_n"] == 4  # 2 prompts x 2 samples
    samples = read_jsonl(dj.RUNS_DIR / str(job.pk) / "eval" / "cong_s" / SAMPLES)
    assert metrics["judge_win_rate"] == pytest.approx(sum(s["judge_pref"] for s in samples) / len(samples))
    # weak_sft is the reference: against itself, one half by construction.
    assert methods["weak_sft"]["judge_win_rate"] == methods["weak_sft"]["judge_lc_win_rate"] == 0.5
