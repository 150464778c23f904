"""The job page's server-rendered header and the state it hands static/jobs/job_live.js: the seq it covers
(render_seq: only later events may move the header) and the header itself, for a job whose history holds an
earlier attempt's end. The browser side is tests/e2e/test_job_page_live.py."""

from __future__ import annotations

import json
import re

import pytest

from jobs import services
from jobs.models import Job, JobEvent

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def no_broker(monkeypatch):
    """job_create and job_retry send the Celery task on commit; the claims below stand in for a worker."""
    monkeypatch.setattr(services.dispatch, "send", lambda job_id: None)


def _page(client, job: Job) -> tuple[str, dict]:
    html = client.get(f"/jobs/{job.pk}/").content.decode()
    found = re.search(r'<script id="live-config" type="application/json">(.*?)</script>', html, re.S)
    assert found, html
    return html, json.loads(found[1])


def _banner(html: str, name: str) -> bool:
    """Whether the dd of a header banner is shown (rendered without the hidden attribute)."""
    tag = re.search(rf'<dd data-banner="{name}"[^>]*>', html)
    assert tag, name
    return "hidden" not in tag[0]


def _cancelled_then_retried_and_running(user, weak_pair, prompts_ds) -> Job:
    wb, wa = weak_pair
    job = services.job_create(
        user=user, kind="cd_generate", weak_base=wb.pk, weak_aligned=wa.pk, prompts=prompts_ds.pk, alpha=0.4
    )
    assert services.job_claim(job_id=job.pk, task_id="t1")
    services.job_cancel(job=job)
    assert services.job_mark_cancelled(job_id=job.pk, task_id="t1")
    job.refresh_from_db()
    assert job.status == "cancelled" and job.partial
    services.job_retry(job=job)
    assert services.job_claim(job_id=job.pk, task_id="t2")
    job.refresh_from_db()
    return job


def test_a_retried_running_job_renders_the_new_attempt_and_covers_its_history(client, user, weak_pair, prompts_ds):
    job = _cancelled_then_retried_and_running(user, weak_pair, prompts_ds)
    client.force_login(user)
    html, live = _page(client, job)
    statuses = [(e["seq"], e["data"]["status"]) for e in live["events"] if e["type"] == "status"]
    assert [s for _, s in statuses] == ["queued", "running", "cancelling", "cancelled", "queued", "running"]
    # Every event so far is in the rendered header: the replayed "cancelled" is history, not news.
    assert live["render_seq"] == JobEvent.objects.filter(job=job).count() == statuses[-1][0]
    h = live["header"]
    assert (h["status"], h["attempt"], h["max_attempts"]) == ("running", 1, 3)
    assert h["partial"] is False and h["finished"] is None and h["error"] == "" and h["worker"] == job.worker
    assert live["finished"] is False
    assert re.search(r'<dd id="attempt" data-attempt="1">attempt 1 of 3 · ', html)
    assert not _banner(html, "partial") and not _banner(html, "error")
    assert re.search(r'<span data-banner="finished" hidden>', html)


def test_a_cancelled_job_renders_its_banners_and_a_queued_one_no_attempt(client, user, weak_pair, prompts_ds):
    wb, wa = weak_pair
    job = services.job_create(
        user=user, kind="cd_generate", weak_base=wb.pk, weak_aligned=wa.pk, prompts=prompts_ds.pk, alpha=0.4
    )
    client.force_login(user)
    html, live = _page(client, job)
    assert (live["header"]["status"], live["header"]["attempt"], live["render_seq"]) == ("queued", 0, 1)
    assert '<dd id="attempt" data-attempt="0">not started yet (up to 3 attempts)</dd>' in html

    assert services.job_claim(job_id=job.pk, task_id="t1")
    services.job_set_progress(job_id=job.pk, stage="cd_generate", progress=0.25)
    services.job_cancel(job=job)
    assert services.job_mark_cancelled(job_id=job.pk, task_id="t1")
    html, live = _page(client, job)
    h = live["header"]
    assert h["status"] == "cancelled" and h["partial"] is True and h["finished"] and live["finished"] is True
    assert _banner(html, "partial") and re.search(r'<span data-banner="finished">', html)
    assert '<dd id="job-stage">cd_generate · 25%</dd>' in html
    assert live["render_seq"] == JobEvent.objects.filter(job=job).count()
