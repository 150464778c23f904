"""The job page's samples box, pairs list and sweep chart data (issue 18): what the server renders and passes.

The samples grid itself is drawn in the browser (tests/e2e/test_job_samples.py); here: the empty-state text
per kind and status, the pairs list's presence and its API URL, and the sweep's implicit reward taken from
the stored pairs when the results lack it.
"""

from __future__ import annotations

import json
import re

import pytest

from jobs import page_selectors
from jobs.models import GeneratedPair, Job

pytestmark = pytest.mark.django_db

SWEEP_RESULTS = {"alphas": [{"alpha": 0.0, "gold_mean": 0.1}, {"alpha": 0.5, "gold_mean": 0.4, "implicit_mean": 7.0}]}


def _job(user, **kw) -> Job:
    args = dict(owner=user, kind="cd_generate", config={}, status="running")
    args.update(kw)
    return Job.objects.create(**args)


def _page(client, user, job) -> tuple[str, dict]:
    client.force_login(user)
    r = client.get(f"/jobs/{job.pk}/")
    assert r.status_code == 200
    html = r.content.decode()
    m = re.search(r'<script id="live-config" type="application/json">(.*?)</script>', html, re.S)
    assert m, html
    live = json.loads(m[1])
    return html, live


def _note(html: str) -> str:
    m = re.search(r'<p id="samples-empty" class="muted">(.*?)</p>', html, re.S)
    assert m, html
    return m[1]


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"status": "queued"}, "Waiting to start."),
        (
            {"status": "queued", "waiting_for": "a GPU worker (none online)"},
            "Waiting to start: a GPU worker (none online)",
        ),
        ({"status": "running"}, page_selectors.SAMPLES_RUNNING),
        ({"status": "cancelling"}, page_selectors.SAMPLES_RUNNING),
        ({"status": "succeeded", "kind": "weak_align"}, "weak_align trains the weak aligned model"),
        ({"status": "cancelled"}, "cancelled before it reported any sample"),
        ({"status": "failed"}, "failed before it reported any sample"),
        (
            {"status": "succeeded", "kind": "preflight", "results": {"verdict": "go", "message": "CD helps"}},
            "verdict (go",
        ),
        ({"status": "failed", "kind": "preflight"}, "ended without a verdict"),
    ],
)
def test_the_samples_note_says_what_is_true_per_kind_and_status(client, user, fields, expected):
    job = _job(user, **fields)
    html, live = _page(client, user, job)
    note = _note(html)
    assert expected in note, note
    if job.status not in Job.ACTIVE:
        assert "No samples yet" not in note
    # The live page swaps the note for the running one when a queued job starts.
    assert live["samples_running"] == page_selectors.SAMPLES_RUNNING


def test_a_finished_preflight_shows_its_verdict_and_no_waiting_for_samples(client, user):
    job = _job(user, kind="preflight", status="succeeded", results={"verdict": "no-go", "message": "CD hurts here"})
    html, _ = _page(client, user, job)
    assert 'id="verdict"' in html and "CD hurts here" in html
    assert "No samples yet" not in html.split('id="live-config"')[0]  # only the live script's text for a run


def _pair(job, i, prompt, chosen, alpha=None, implicit=None):
    return GeneratedPair.objects.create(
        job=job, prompt_index=i, prompt=prompt, chosen=chosen, alpha=alpha, implicit_reward_sum=implicit
    )


def test_the_sweep_takes_a_missing_implicit_reward_from_its_pairs(user):
    job = _job(user, kind="alpha_sweep", status="succeeded", results=SWEEP_RESULTS)
    for i, v in enumerate((1.0, 3.0)):
        _pair(job, i, f"p{i}", "x", alpha=0.0, implicit=v)
    _pair(job, 2, "p2", "x", alpha=0.5, implicit=100.0)
    pts = page_selectors.sweep_with_pair_implicit(job=job)
    assert [(p["alpha"], p["implicit"]) for p in pts] == [(0.0, 2.0), (0.5, 7.0)]  # the results' own value kept


def test_a_sweep_with_no_implicit_anywhere_stays_empty(user):
    job = _job(user, kind="alpha_sweep", status="succeeded", results=SWEEP_RESULTS)
    _pair(job, 0, "p0", "x", alpha=0.0, implicit=None)
    assert [p["implicit"] for p in page_selectors.sweep_with_pair_implicit(job=job)] == [None, 7.0]


def test_the_page_passes_the_filled_sweep(client, user):
    job = _job(user, kind="alpha_sweep", status="succeeded", results=SWEEP_RESULTS)
    _pair(job, 0, "p0", "x", alpha=0.0, implicit=4.0)
    _, live = _page(client, user, job)
    assert [p["implicit"] for p in live["sweep"]] == [4.0, 7.0]


def test_the_pairs_list_is_on_the_page_when_there_are_pairs(client, user):
    job = _job(user, status="succeeded")
    html, live = _page(client, user, job)
    assert 'id="pairs"' not in html  # no pairs: no list
    _pair(job, 0, "review hotel :", "it was great")
    html, live = _page(client, user, job)
    assert 'id="pairs"' in html and 'id="pairs-q"' in html
    assert "jobs/job_pairs.js" in html and "jobs/job_page.css" in html
    assert "<style" not in html and not re.search(r"<script(?![^>]*(src=|type=\"application/json\"))", html)  # CSP
    assert live["pairs_url"] == f"/api/v1/jobs/{job.pk}/pairs/"


def test_the_pairs_url_pages_and_searches_for_the_owner_only(client, user, other_user):
    job = _job(user, status="succeeded")
    for i in range(60):
        _pair(job, i, f"prompt {i}", "a movie" if i % 7 == 0 else "a book")
    _, live = _page(client, user, job)
    first = client.get(live["pairs_url"], {"page": 1}).json()
    assert first["count"] == 60 and first["next"] and len(first["results"]) < 60
    second = client.get(live["pairs_url"], {"page": 2}).json()
    got = [p["prompt_index"] for p in first["results"] + second["results"]]
    assert sorted(got) == list(range(60))
    found = client.get(live["pairs_url"], {"search": "movie"}).json()
    assert found["count"] == 9 and all(p["chosen"] == "a movie" for p in found["results"])
    client.force_login(other_user)
    assert client.get(live["pairs_url"]).status_code == 404
    assert client.get(f"/jobs/{job.pk}/").status_code == 404
