"""Jobs you can tell apart: names and tags (REST, the new-job form, the list API's filters), the dashboard's columns
(sortable, filterable, check boxes that open the compare page), "clone with changes", and the compare page for any
number of jobs (the settings that differ, each metric's curves one series per job, results side by side)."""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from jobs import services
from jobs.models import Job

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _no_broker(monkeypatch):
    monkeypatch.setattr(services.dispatch, "send", lambda job_id: None)


@pytest.fixture
def cd(weak_pair, prompts_ds):
    wb, wa = weak_pair
    return {"kind": "cd_generate", "weak_base": wb.pk, "weak_aligned": wa.pk, "prompts": prompts_ds.pk}


def _api(user) -> APIClient:
    c = APIClient()
    c.force_authenticate(user)
    return c


def _finish(job: Job, golds: dict[str, float], seconds: int) -> None:
    now = timezone.now()
    methods = {m: {"label": m.upper(), "gold_mean": g, "gold_ci": [g - 0.1, g + 0.1], "n": 4} for m, g in golds.items()}
    Job.objects.filter(pk=job.pk).update(
        kind="cong",
        status="succeeded",
        started=now - timedelta(seconds=seconds),
        finished=now,
        results={"methods": methods, "results_version": 1, "kind": "cong"},
    )


def _rows(html: str) -> list[int]:
    return [int(x) for x in re.findall(r'<tr data-job="(\d+)">', html)]


def test_names_and_tags_through_rest_and_the_list_filters(user, cd):
    c = _api(user)
    res = c.post("/api/v1/jobs/", {**cd, "name": " baseline run ", "tags": ["Paper", "seed:0", "paper"]}, format="json")
    assert res.status_code == 201, res.json()
    assert (res.json()["name"], res.json()["tags"]) == ("baseline run", ["paper", "seed:0"])  # trimmed, lowercase, once
    other = c.post("/api/v1/jobs/", {**cd, "name": "papers", "tags": ["ablation"]}, format="json").json()
    for bad, key in (
        ({"tags": ["has space"]}, "tags"),
        ({"tags": [f"t{i}" for i in range(11)]}, "tags"),
        ({"tags": ["x" * 41]}, "tags"),
        ({"name": "n" * 201}, "name"),
        ({"tags": "paper"}, "tags"),
    ):
        res = c.post("/api/v1/jobs/", {**cd, **bad}, format="json")
        assert res.status_code == 400 and list(res.json()) == [key], (bad, res.json())
    ids = lambda q: [r["id"] for r in c.get("/api/v1/jobs/" + q).json()["results"]]  # noqa: E731
    first = res_id = Job.objects.get(name="baseline run").pk
    assert ids("?tag=paper") == [first] and ids("?tag=PAPER") == [first]
    assert ids("?tag=pap") == []  # a tag is matched whole
    assert ids("?search=paper") == [other["id"], res_id]  # a name ("papers") or a tag ("paper")
    assert ids("?search=ablation") == [other["id"]]


def test_dashboard_columns_sort_filter_and_compare_selected(client, user, cd, pipeline_inputs):
    cong = {**pipeline_inputs, "methods": ["weak_sft", "cong"]}
    a = services.job_create(
        user=user, **{**cong, "alpha": 0.2}, name="small", tags=["sweep"], params={"max_prompts": 2}
    )
    b = services.job_create(user=user, **{**cong, "alpha": 0.8}, name="big")
    c = services.job_create(user=user, **cd, name="mid", tags=["sweep"], alpha=0.5)
    _finish(a, {"weak_sft": 0.3, "cong": 0.55}, seconds=30)
    _finish(b, {"weak_sft": 0.2, "cong": 0.9}, seconds=4000)
    client.force_login(user)
    html = client.get("/").content.decode()
    assert _rows(html) == [c.pk, b.pk, a.pk]  # newest first by default
    row = dict(re.findall(r'<tr data-job="(\d+)">(.*?)</tr>', html, re.S))[str(a.pk)]
    # Name and tags, alpha, size (max_prompts 2 of the dataset's 4 prompts), duration, the best method's gold.
    assert ">small" in row and 'data-tag="sweep"' in row and ">0.2<" in row and ">2<" in row and "30s" in row
    assert ">weak_sft, cong<" in row
    assert 'data-score="0.55"' in row and "0.550" in row and "CONG" in row
    assert "1h 06m" in dict(re.findall(r'<tr data-job="(\d+)">(.*?)</tr>', html, re.S))[str(b.pk)]
    # Sorting (missing values last either way) and the links that reverse it.
    assert _rows(client.get("/?sort=-score").content.decode()) == [b.pk, a.pk, c.pk]
    assert _rows(client.get("/?sort=score").content.decode()) == [a.pk, b.pk, c.pk]
    assert _rows(client.get("/?sort=name").content.decode()) == [b.pk, c.pk, a.pk]
    assert _rows(client.get("/?sort=alpha").content.decode()) == [a.pk, c.pk, b.pk]
    assert _rows(client.get("/?sort=duration").content.decode()) == [a.pk, b.pk, c.pk]
    assert 'href="?sort=-score"' in client.get("/?sort=score").content.decode()
    # Filters: a tag, a search in names and tags, a kind, a status; the sort links keep them.
    assert _rows(client.get("/?tag=sweep").content.decode()) == [c.pk, a.pk]
    assert _rows(client.get("/?q=bi").content.decode()) == [b.pk]
    assert _rows(client.get("/?kind=cd_generate").content.decode()) == [c.pk]
    filtered = client.get("/?tag=sweep&status=queued").content.decode()
    assert _rows(filtered) == [c.pk] and 'href="?tag=sweep&amp;status=queued&amp;sort=score"' in filtered
    # Check boxes post their ids to the compare page, which shows every ticked job.
    form = re.search(r'<form method="get" action="/jobs/compare/" id="compare-form">(.*?)</form>', html, re.S)
    assert form and form.group(1).count('type="checkbox" name="ids"') == 3
    page = client.get(f"/jobs/compare/?ids={a.pk}&ids={b.pk}&ids={c.pk}").content.decode()
    assert page.count('class="card side"') == 3


def test_clone_with_changes_fills_the_form_from_the_job(client, user, cd):
    job = services.job_create(
        user=user,
        **cd,
        alpha=0.3,
        name="orig",
        tags=["a", "b"],
        params={"max_prompts": 3, "cd_generate": {"top_p": 0.8}},
    )
    client.force_login(user)
    detail = client.get(f"/jobs/{job.pk}/").content.decode()
    assert f'href="/jobs/new/?clone={job.pk}"' in detail
    html = client.get(f"/jobs/new/?clone={job.pk}").content.decode()
    assert 'name="name" value="orig (changed)"' in html and 'name="tags" value="a, b"' in html
    assert re.search(r'<option value="cd_generate" selected>', html)
    assert re.search(rf'name="weak_base"[^>]*>.*?<option value="{cd["weak_base"]}" selected>', html, re.S)
    assert 'name="p__max_prompts"' in html and 'value="3"' in html and 'name="p__cd_generate__top_p"' in html
    assert 'value="0.3"' in html
    # Submitted as is (with one change), the form makes a new job with the name and tags typed.
    r = client.post(
        "/jobs/new/",
        {
            "kind": "cd_generate",
            "weak_base": cd["weak_base"],
            "weak_aligned": cd["weak_aligned"],
            "prompts": cd["prompts"],
            "alpha": "0.5",
            "name": "orig (changed)",
            "tags": "a, B ,c",
        },
    )
    assert r.status_code == 302, r.content.decode()[:2000]
    new = Job.objects.latest("id")
    assert (new.name, new.tags, new.config["alpha"]) == ("orig (changed)", ["a", "b", "c"], 0.5)
    r = client.post("/jobs/new/", {"kind": "cd_generate", "weak_base": cd["weak_base"], "tags": "no spaces allowed"})
    tags_errors = re.search(r'<ul class="errorlist" data-field="tags">(.*?)</ul>', r.content.decode(), re.S)
    assert r.status_code == 400 and tags_errors and "tag &#x27;no spaces allowed&#x27;" in tags_errors.group(1)
    assert client.get("/jobs/new/?clone=999999").status_code == 404


def test_compare_any_number_of_jobs(client, user, cd):
    from jobs.services import event_append

    jobs = [
        services.job_create(user=user, **cd, name=f"j{i}", alpha=alpha, params={"max_prompts": 2})
        for i, alpha in enumerate((0.2, 0.2, 0.7))
    ]
    for i, job in enumerate(jobs):
        event_append(job_id=job.pk, type="log", data={"message": "pipeline: stage sft_cong_s"})
        for step in range(3):
            event_append(
                job_id=job.pk,
                type="metric",
                data={"name": "sft/loss", "value": 2.0 - step * 0.1 * (i + 1), "step": step},
            )
    _finish(jobs[0], {"weak_sft": 0.3, "cong": 0.5}, 10)
    client.force_login(user)
    html = client.get("/jobs/compare/?ids=" + ",".join(str(j.pk) for j in jobs)).content.decode()
    # Only what differs: alpha (0.2, 0.2, 0.7); max_prompts is the same in all three.
    diff = re.search(r'<table class="grid" id="config-diff">(.*?)</table>', html, re.S).group(1)
    assert 'data-setting="alpha"' in diff and 'data-setting="cd_generate.max_prompts"' not in diff
    # Results side by side: one column per job.
    head = re.search(r'<table class="grid" id="merged">\s*<thead>(.*?)</thead>', html, re.S).group(1)
    assert [f"job {j.pk} (j{i})" for i, j in enumerate(jobs)] == re.findall(r'data-job="\d+">([^<]+)</th>', head)
    metrics = json.loads(
        re.search(r'<script id="metrics-data" type="application/json">(.*?)</script>', html, re.S).group(1)
    )
    assert [s["name"] for s in metrics["sft/loss"]] == [f"job {j.pk} (j{i})" for i, j in enumerate(jobs)]
    assert metrics["sft/loss"][2]["points"] == [[0, 2.0], [1, pytest.approx(1.7)], [2, pytest.approx(1.4)]]
    # The two-job form still works, and another user's job is a 404 among them.
    assert client.get(f"/jobs/compare/?a={jobs[0].pk}&b={jobs[1].pk}").status_code == 200
    theirs = Job.objects.create(owner=type(user).objects.create_user(username="zed"), kind="cd_generate", config={})
    assert client.get(f"/jobs/compare/?ids={jobs[0].pk},{theirs.pk}").status_code == 404
