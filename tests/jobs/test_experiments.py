"""Experiments (jobs.services.experiments, /api/v1/experiments/, the experiments pages): a grid makes one job per
cell, each checked as a job is, all or none; the aggregate over seeds is the mean gold reward with a Student-t
interval and the paired difference against the baseline, partial until every seed has succeeded; cancel and
retry act on every cell; only the owner (and staff) see an experiment."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from jobs import services
from jobs.models import Experiment, Job
from jobs.runner import run_job
from jobs.services.experiments import experiment_create
from ml.stats import t_quantile_975

from .conftest import tiny_cong_request

pytestmark = pytest.mark.django_db


def _api(user) -> APIClient:
    c = APIClient()
    c.force_authenticate(user)
    return c


@pytest.fixture(autouse=True)
def _no_broker(monkeypatch):
    """The jobs are queued; tests that need them to run run them in-process (jobs.runner.run_job)."""
    monkeypatch.setattr(services.dispatch, "send", lambda job_id: None)


@pytest.fixture
def cong_request(user, weak_pair):
    """A tiny ConG job evaluating two methods (test_judge's, without the judge): seconds on a CPU."""
    return tiny_cong_request(user, weak_pair, ["weak_sft", "cong_s"], evaluate={"n_samples": 2})


@pytest.fixture
def cd_request(weak_pair, prompts_ds):
    wb, wa = weak_pair
    return {"kind": "cd_generate", "weak_base": wb.pk, "weak_aligned": wa.pk, "prompts": prompts_ds.pk, "alpha": 0.4}


def _state():
    return Experiment.objects.count(), Job.objects.count()


def _golds(job_id: int) -> dict[str, float]:
    return {m: r["gold_mean"] for m, r in Job.objects.get(pk=job_id).results["methods"].items()}


def test_a_two_seed_grid_makes_two_jobs_and_aggregates_them_with_intervals(user, cong_request):
    c = _api(user)
    res = c.post(
        "/api/v1/experiments/",
        {"name": "seeds", "job": {**cong_request, "tags": ["Sweep"]}, "grid": {"params.seed": [0, 1]}},
        format="json",
    )
    assert res.status_code == 201, res.json()
    body = res.json()
    assert len(body["jobs"]) == 2 and body["baseline"] == "weak_sft"
    jobs = [Job.objects.get(pk=pk) for pk in body["jobs"]]
    # Each cell is its own checked job, with its seed in the spec that runs, named after the experiment and cell.
    assert [j.config["spec"]["top"]["seed"] for j in jobs] == [0, 1]
    assert [j.name for j in jobs] == ["seeds [seed=0]", "seeds [seed=1]"] and jobs[0].tags == ["sweep"]
    assert all(j.experiment_id == body["id"] and j.status == "queued" for j in jobs)

    url = f"/api/v1/experiments/{body['id']}/"
    before = c.get(url).json()
    (agg,) = before["aggregates"]
    assert agg["partial"] and agg["done"] == 0 and agg["total"] == 2 and agg["methods"] == []
    assert [cell["status"] for cell in before["cells"]] == ["queued", "queued"]

    assert run_job(job_id=jobs[0].pk) == "succeeded", Job.objects.get(pk=jobs[0].pk).error
    half = c.get(url).json()["aggregates"][0]
    assert half["partial"] and half["done"] == 1
    first = _golds(jobs[0].pk)
    for m in half["methods"]:  # one seed: the mean is that seed's, the interval the point itself
        assert m["n"] == 1 and m["seeds"] == [0]
        assert m["mean"] == pytest.approx(first[m["method"]]) and m["ci"] == pytest.approx([m["mean"]] * 2)

    assert run_job(job_id=jobs[1].pk) == "succeeded", Job.objects.get(pk=jobs[1].pk).error
    done = c.get(url).json()
    (agg,) = done["aggregates"]
    assert not agg["partial"] and agg["done"] == 2 and done["finished"] == 2
    second = _golds(jobs[1].pk)
    by_method = {m["method"]: m for m in agg["methods"]}
    assert set(by_method) == {"weak_sft", "cong_s"} and by_method["cong_s"]["label"] == "ConG-S"
    for method, m in by_method.items():
        a, b = first[method], second[method]
        mean, half_width = (a + b) / 2, t_quantile_975(1) * abs(a - b) / 2  # sd of two values |a-b|/sqrt(2)
        assert m["n"] == 2 and sorted(m["seeds"]) == [0, 1]
        assert m["mean"] == pytest.approx(mean) and m["ci"] == pytest.approx([mean - half_width, mean + half_width])
    diffs = [first["cong_s"] - first["weak_sft"], second["cong_s"] - second["weak_sft"]]
    diff = by_method["cong_s"]["diff"]
    assert diff["n"] == 2 and diff["mean"] == pytest.approx(sum(diffs) / 2)
    assert diff["ci"][1] - diff["ci"][0] == pytest.approx(t_quantile_975(1) * abs(diffs[0] - diffs[1]))
    assert by_method["weak_sft"]["diff"] is None  # the baseline itself
    assert done["plots"]["gold_vs_alpha"] is None  # alpha is not in the grid
    assert {(p["method"], p["n"]) for p in done["plots"]["methods"]} == {("weak_sft", 2), ("cong_s", 2)}


def test_an_alpha_grid_plots_gold_against_alpha(user, cd_request):
    res = _api(user).post(
        "/api/v1/experiments/",
        {"name": "alphas", "job": cd_request, "grid": {"alpha": [0.6, 0.2], "params.seed": [0, 1]}},
        format="json",
    )
    assert res.status_code == 201, res.json()
    exp = res.json()
    assert len(exp["jobs"]) == 4 and exp["baseline"] == ""  # cd_generate evaluates no methods: no baseline
    got = _api(user).get(f"/api/v1/experiments/{exp['id']}/").json()
    # Keys in sorted order, the last fastest: (alpha 0.6, seed 0), (0.6, 1), (0.2, 0), (0.2, 1).
    assert [c["values"] for c in got["cells"]] == [{"alpha": a, "params.seed": s} for a in (0.6, 0.2) for s in (0, 1)]
    assert [Job.objects.get(pk=c["job"]).config["alpha"] for c in got["cells"]] == [0.6, 0.6, 0.2, 0.2]
    assert [a["label"] for a in got["aggregates"]] == ["alpha=0.6", "alpha=0.2"]
    assert all(a["total"] == 2 and a["partial"] for a in got["aggregates"])
    assert got["plots"]["gold_vs_alpha"] == []  # nothing finished, nothing to plot yet


def test_too_many_cells_is_a_400_on_grid_and_creates_nothing(user, cd_request, settings):
    settings.EXPERIMENT_MAX_CELLS = 4
    before = _state()
    res = _api(user).post(
        "/api/v1/experiments/",
        {"name": "big", "job": cd_request, "grid": {"alpha": [0.1, 0.2, 0.3], "params.seed": [0, 1]}},
        format="json",
    )
    assert res.status_code == 400 and list(res.json()) == ["grid"], res.json()
    assert "6 cells" in res.json()["grid"][0] and "at most 4" in res.json()["grid"][0]
    bad = _api(user).post(
        "/api/v1/experiments/", {"name": "x", "job": cd_request, "grid": {"weak_base": [1], "alpha": []}}, format="json"
    )
    assert bad.status_code == 400 and list(bad.json()) == ["grid.alpha"], bad.json()  # the serializer's: empty list
    bad = _api(user).post(
        "/api/v1/experiments/", {"name": "x", "job": cd_request, "grid": {"weak_base": [1]}}, format="json"
    )
    assert bad.status_code == 400 and "'weak_base' is not a path a grid can vary" in bad.json()["grid"][0]
    assert _state() == before


def test_a_bad_cell_refuses_the_whole_experiment_naming_the_cell(user, cd_request):
    before = _state()
    res = _api(user).post(
        "/api/v1/experiments/",
        {"name": "bad", "job": cd_request, "grid": {"alpha": [0.2, 7.0], "params.cd_generate.top_p": [0.9, -1]}},
        format="json",
    )
    assert res.status_code == 400, res.json()
    errors = res.json()
    # Cells: (0.2, 0.9), (0.2, -1), (7.0, 0.9), (7.0, -1): every one but the first has a bad value.
    assert set(errors) == {
        "grid[1].params.cd_generate.top_p",
        "grid[2].alpha",
        "grid[3].alpha",
        "grid[3].params.cd_generate.top_p",
    }, errors
    assert errors["grid[2].alpha"][0].startswith("(cell alpha=7.0, cd_generate.top_p=0.9) ")
    assert _state() == before
    # A mistake every cell shares is the request's, reported once.
    res = _api(user).post(
        "/api/v1/experiments/",
        {"name": "typo", "job": {**cd_request, "params": {"max_promts": 2}}, "grid": {"params.seed": [0, 1]}},
        format="json",
    )
    assert res.status_code == 400 and list(res.json()) == ["job.params.max_promts"], res.json()
    res = _api(user).post(
        "/api/v1/experiments/",
        {"name": "types", "job": {**cd_request, "alpha": "high"}, "grid": {"params.seed": [0]}},
        format="json",
    )
    assert res.status_code == 400 and list(res.json()) == ["job.alpha"], res.json()
    res = _api(user).post(
        "/api/v1/experiments/",
        {"name": "base", "job": cd_request, "grid": {"params.seed": [0]}, "baseline": "weak_sft"},
        format="json",
    )
    assert res.status_code == 400 and "baseline" in res.json(), res.json()
    assert _state() == before


def test_an_experiment_over_the_active_job_cap_is_refused_up_front(user, cd_request, settings):
    settings.JOB_MAX_ACTIVE_PER_USER = 3
    services.job_create(user=user, **cd_request)
    before = _state()
    res = _api(user).post(
        "/api/v1/experiments/", {"name": "cap", "job": cd_request, "grid": {"params.seed": [0, 1, 2]}}, format="json"
    )
    assert res.status_code == 429, res.json()
    assert "makes 3 jobs" in res.json()["detail"] and "at most 2 more" in res.json()["detail"]
    assert _state() == before
    res = _api(user).post(
        "/api/v1/experiments/", {"name": "fits", "job": cd_request, "grid": {"params.seed": [0, 1]}}, format="json"
    )
    assert res.status_code == 201, res.json()


def test_cancel_and_retry_act_on_every_cell(user, cd_request):
    c = _api(user)
    exp = c.post(
        "/api/v1/experiments/", {"name": "cr", "job": cd_request, "grid": {"params.seed": [0, 1, 2]}}, format="json"
    ).json()
    first, *rest = exp["jobs"]
    Job.objects.filter(pk=first).update(status="succeeded")
    res = c.post(f"/api/v1/experiments/{exp['id']}/cancel/")
    assert res.status_code == 200 and res.json()["changed"] == rest, res.json()
    assert res.json()["unchanged"] == [{"job": first, "reason": "succeeded: nothing to do"}]
    assert [Job.objects.get(pk=pk).status for pk in exp["jobs"]] == ["succeeded", "cancelled", "cancelled"]
    res = c.post(f"/api/v1/experiments/{exp['id']}/retry/")
    assert res.status_code == 200 and res.json()["changed"] == rest
    assert [Job.objects.get(pk=pk).status for pk in exp["jobs"]] == ["succeeded", "queued", "queued"]
    assert c.get(f"/api/v1/experiments/{exp['id']}/").json()["status_counts"] == {"succeeded": 1, "queued": 2}


def test_only_the_owner_and_staff_see_an_experiment(user, other_user, staff_user, cd_request):
    exp = (
        _api(user)
        .post("/api/v1/experiments/", {"name": "mine", "job": cd_request, "grid": {"params.seed": [0]}}, format="json")
        .json()
    )
    theirs = _api(other_user)
    for method, path in (("get", ""), ("post", "cancel/"), ("post", "retry/")):
        res = getattr(theirs, method)(f"/api/v1/experiments/{exp['id']}/{path}")
        assert res.status_code == 404, (path, res.status_code)
    assert theirs.get("/api/v1/experiments/").json()["count"] == 0
    assert Job.objects.get(pk=exp["jobs"][0]).status == "queued"
    assert _api(staff_user).get(f"/api/v1/experiments/{exp['id']}/").status_code == 200
    rows = _api(user).get("/api/v1/experiments/").json()["results"]
    assert [(r["name"], r["jobs"], r["status_counts"]) for r in rows] == [("mine", exp["jobs"], {"queued": 1})]


def test_the_experiment_pages_show_the_aggregate_and_the_cells(client, user, other_user, cd_request):
    exp = experiment_create(user=user, name="page", request=cd_request, grid={"params.seed": [0, 1]})
    client.force_login(user)
    html = client.get("/experiments/").content.decode()
    assert f'href="/experiments/{exp.pk}/"' in html and "page" in html
    html = client.get(f"/experiments/{exp.pk}/").content.decode()
    for job in exp.jobs.all():
        assert f'href="/jobs/{job.pk}/"' in html
    assert "0 of 2 seeds" in html and 'id="experiment-data"' in html
    client.force_login(other_user)
    assert client.get(f"/experiments/{exp.pk}/").status_code == 404
