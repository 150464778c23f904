"""The job lists, the dashboard page and GET /api/v1/jobs/, read a fixed number of queries however many jobs there
are (no query per job), and what their faster paths show is what the slower ones showed: the API's rows built
from values() (jobs.api.job_rows) are JobSummarySerializer's output, field for field; the dashboard's rows
carry the same links, labels and times as the template that read models."""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import dateformat, timezone
from rest_framework.renderers import JSONRenderer

from jobs import selectors
from jobs.api.serializers import JobSummarySerializer
from jobs.models import GeneratedPair, Job

pytestmark = pytest.mark.django_db


def make_jobs(owner, n: int) -> list[Job]:
    """n jobs with what real ones carry: a config with a spec, results, pairs on every third, all statuses."""
    now = timezone.now()
    statuses = [s for s, _ in Job.Status.choices]
    jobs = Job.objects.bulk_create(
        Job(
            owner=owner,
            kind=Job.Kind.CD_GENERATE if i % 2 else Job.Kind.CONG,
            status=statuses[i % len(statuses)],
            stage="cd_generate",
            progress=(i % 7) / 7,
            config={"spec": {"cd_generate": {"alpha": 0.4, "max_new_tokens": 64}}, "params": {"max_prompts": i}},
            results={"methods": {"cong": {"gold_mean": 0.1 * i}}},
            started=now - timedelta(minutes=i),
            finished=now if statuses[i % len(statuses)] in Job.FINISHED else None,
            error="boom" if i % 5 == 0 else "",
            partial=i % 4 == 0,
        )
        for i in range(n)
    )
    GeneratedPair.objects.bulk_create(
        GeneratedPair(job=j, prompt_index=k, prompt="p", chosen="c") for j in jobs[::3] for k in range(2)
    )
    return jobs


def queries(client, url: str) -> int:
    with CaptureQueriesContext(connection) as q:
        r = client.get(url)
    assert r.status_code == 200, r.content[:300]
    return len(q)


# The session, its user, then the page: the jobs (dashboard); the count and the page's rows (API).
EXPECTED = {"/": 3, "/api/v1/jobs/": 4}


@pytest.mark.parametrize("url", list(EXPECTED))
def test_a_job_list_takes_the_same_queries_for_3_jobs_as_for_60(client, user, other_user, staff_user, url):
    make_jobs(user, 3)
    client.force_login(user)
    few = queries(client, url)
    make_jobs(user, 57)
    make_jobs(other_user, 20)
    assert queries(client, url) == few == EXPECTED[url]
    client.force_login(staff_user)  # staff see everyone's jobs, with the owner's name: still no query per job
    assert queries(client, url) == EXPECTED[url]


def test_api_rows_are_the_summary_serializers_output(client, user, other_user):
    make_jobs(user, 12)
    make_jobs(other_user, 2)
    client.force_login(user)
    got = client.get("/api/v1/jobs/").json()
    assert got["count"] == 12
    # The same jobs through the ModelSerializer, one model instance each (what the list did before job_rows).
    expected = JobSummarySerializer(selectors.job_list(user=user), many=True).data
    assert got["results"] == json.loads(JSONRenderer().render(expected))
    assert {r["pair_count"] for r in got["results"]} == {0, 2}
    assert any(r["finished"] is None for r in got["results"]) and any(r["finished"] for r in got["results"])


def test_dashboard_rows_link_label_and_date_each_job_as_before(client, user, staff_user):
    jobs = make_jobs(user, 8)
    client.force_login(staff_user)
    html = client.get("/").content.decode()
    rows = dict(re.findall(r'<tr data-job="(\d+)">(.*?)</tr>', html, re.S))
    assert sorted(int(pk) for pk in rows) == sorted(j.pk for j in jobs)
    for job in jobs:
        row = rows[str(job.pk)]
        assert row.count(f'href="{reverse("job_detail", args=[job.pk])}"') == 2
        assert f">{job.get_kind_display()}</a>" in row and f"<td>{user.username}</td>" in row
        # The created cell's title: what {{ job.created|date:'c' }} rendered.
        assert f'title="{dateformat.format(timezone.localtime(job.created), "c")}"' in row
        pct = 100 if job.status == Job.Status.SUCCEEDED else round(job.progress * 100)
        assert f'data-pct="{pct}"' in row and f'title="{pct}%"' in row
        assert ('<span class="muted">partial</span>' in row) == job.partial
