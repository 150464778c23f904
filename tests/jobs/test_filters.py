"""The REST list filters docs/API.md promises return exactly the matching rows, and a bad value is a 400
naming the query key it came in (never a silent empty list, never another key's name).

- ``GET /jobs/?status=a,b&kind=c&page=N`` (comma lists; 50 per page, newest first)
- ``GET /jobs/{id}/pairs/?review_status=a,b&min_reward_sum=X&min_reward_mean=Y&empty_response=B&search=S``
  (paginated, by prompt index)
- ``GET /jobs/{id}/events/?after=SEQ&limit=M`` (seq > after, at most M, by seq)

Every assertion is on the exact ids, so a filter that returns too much (dropped) or too little (ANDed
wrong, off by one) fails.
"""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from jobs.models import GeneratedPair, Job, JobEvent

pytestmark = pytest.mark.django_db


def _client(user) -> APIClient:
    c = APIClient()
    c.force_authenticate(user)
    return c


def _ids(res) -> list[int]:
    assert res.status_code == 200, res.content
    body = res.json()
    rows = body["results"] if isinstance(body, dict) else body
    return [r["id"] for r in rows]


def _bad(res, key: str) -> str:
    """A 400 whose only field is ``key``; returns its message."""
    assert res.status_code == 400, (res.status_code, res.content)
    assert list(res.json()) == [key], res.json()
    return " ".join(res.json()[key])


# --- jobs ----------------------------------------------------------------------------------------------------
@pytest.fixture
def jobs(user, other_user):
    """Alice's jobs in every (status, kind) combination that matters, plus Bob's matching ones."""
    rows = {}
    for status in ("queued", "running", "succeeded", "failed"):
        for kind in ("cong", "cd_generate"):
            rows[(status, kind)] = Job.objects.create(owner=user, kind=kind, status=status, config={}).pk
    Job.objects.create(owner=other_user, kind="cong", status="running", config={})
    Job.objects.create(owner=other_user, kind="cd_generate", status="queued", config={})
    return rows


def _newest_first(ids) -> list[int]:
    return sorted(ids, reverse=True)


def test_job_list_status_comma_list_and_kind(user, jobs):
    c = _client(user)
    want = _newest_first(pk for (st, _), pk in jobs.items() if st in ("running", "queued"))
    assert _ids(c.get("/api/v1/jobs/?status=running,queued")) == want
    assert _ids(c.get("/api/v1/jobs/?status=succeeded")) == _newest_first(
        [jobs[("succeeded", "cong")], jobs[("succeeded", "cd_generate")]]
    )
    want = _newest_first(pk for (_, k), pk in jobs.items() if k == "cd_generate")
    assert _ids(c.get("/api/v1/jobs/?kind=cd_generate")) == want
    both = c.get("/api/v1/jobs/?status=running,failed&kind=cong")
    assert _ids(both) == _newest_first([jobs[("running", "cong")], jobs[("failed", "cong")]])
    assert both.json()["count"] == 2
    # No filter: all of Alice's, none of Bob's.
    assert _ids(c.get("/api/v1/jobs/")) == _newest_first(jobs.values())
    # A known status with no rows is an empty page, not an error.
    assert _ids(c.get("/api/v1/jobs/?status=cancelling")) == []


@pytest.mark.parametrize(
    "query,key,needle",
    [
        ("status=running,bogus", "status", "bogus"),
        ("status=RUNNING", "status", "RUNNING"),
        ("kind=teleport", "kind", "teleport"),
        ("status=queued&kind=cong,nope", "kind", "nope"),
    ],
)
def test_job_list_unknown_status_or_kind_is_a_400_naming_the_key(user, jobs, query, key, needle):
    msg = _bad(_client(user).get(f"/api/v1/jobs/?{query}"), key)
    known = "queued" if key == "status" else "cd_generate"
    assert needle in msg and known in msg, msg  # says what was wrong and what is known


def test_job_list_pagination_page_two(user, other_user):
    Job.objects.bulk_create([Job(owner=user, kind="cong", status="queued", config={}) for _ in range(57)])
    Job.objects.bulk_create([Job(owner=other_user, kind="cong", status="queued", config={}) for _ in range(5)])
    mine = _newest_first(Job.objects.filter(owner=user).values_list("pk", flat=True))
    c = _client(user)
    p1 = c.get("/api/v1/jobs/?status=queued&kind=cong")
    p2 = c.get("/api/v1/jobs/?status=queued&kind=cong&page=2")
    assert _ids(p1) == mine[:50] and _ids(p2) == mine[50:]
    assert p1.json()["count"] == p2.json()["count"] == 57
    assert p1.json()["next"] and "page=2" in p1.json()["next"] and p2.json()["next"] is None
    assert c.get("/api/v1/jobs/?page=3").status_code == 404  # past the end: DRF's "Invalid page"


# --- pairs ---------------------------------------------------------------------------------------------------
@pytest.fixture
def pairs_job(user, other_user):
    job = Job.objects.create(owner=user, kind="cd_generate", status="succeeded", config={})
    # (review_status, implicit reward sum, its per-token mean, prompt, chosen): the sums and the means order the
    # pairs differently (token counts differ), so a filter reading the wrong one fails.
    spec = [
        ("pending", 0.5, 0.05, "the movie was", "good film"),
        ("approved", 0.05, 0.05, "the plot", "a great movie"),
        ("approved", 0.2, 0.1, "the acting", "very bad"),
        ("rejected", 0.9, 0.3, "the movie 3", "awful"),
        ("pending", None, None, "the movie 4", "unscored"),
        ("edited", 0.3, 0.3, "MOVIE time", "fine"),
        ("pending", 0.1, 0.01, "plain", " "),
    ]
    pairs = [
        GeneratedPair.objects.create(
            job=job,
            prompt_index=i,
            prompt=p,
            chosen=ch,
            implicit_reward_sum=rs,
            implicit_reward_mean=rm,
            empty_response=not ch.strip(),
            review_status=st,
            alpha=0.4,
        )
        for i, (st, rs, rm, p, ch) in enumerate(spec)
    ]
    # Another job's pairs (Alice's and Bob's) never leak into this job's list.
    big = {"implicit_reward_sum": 5.0, "implicit_reward_mean": 5.0}
    other = Job.objects.create(owner=user, kind="cd_generate", status="succeeded", config={})
    GeneratedPair.objects.create(job=other, prompt_index=0, prompt="the movie", chosen="x", **big)
    bobs = Job.objects.create(owner=other_user, kind="cd_generate", status="succeeded", config={})
    GeneratedPair.objects.create(job=bobs, prompt_index=0, prompt="the movie", chosen="x", **big)
    return job, [p.pk for p in pairs]


def test_pairs_filters_each_and_combined(user, pairs_job):
    job, pk = pairs_job
    c = _client(user)
    url = f"/api/v1/jobs/{job.pk}/pairs/"
    assert _ids(c.get(url)) == pk
    assert _ids(c.get(url + "?review_status=pending,approved")) == [pk[0], pk[1], pk[2], pk[4], pk[6]]
    assert _ids(c.get(url + "?review_status=edited")) == [pk[5]]
    # Each bound reads the number it names and is inclusive; unscored pairs (no reward) never pass one.
    assert _ids(c.get(url + "?min_reward_sum=0.2")) == [pk[0], pk[2], pk[3], pk[5]]
    assert _ids(c.get(url + "?min_reward_sum=-1")) == [pk[i] for i in (0, 1, 2, 3, 5, 6)]
    assert _ids(c.get(url + "?min_reward_mean=0.1")) == [pk[2], pk[3], pk[5]]
    assert _ids(c.get(url + "?min_reward_mean=0.05")) == [pk[0], pk[1], pk[2], pk[3], pk[5]]
    assert _ids(c.get(url + "?min_reward_sum=0.2&min_reward_mean=0.1")) == [pk[2], pk[3], pk[5]]
    assert _ids(c.get(url + "?min_reward_sum=&min_reward_mean=")) == pk  # empty = no filter
    # empty_response: the flagged pairs, or all the others.
    assert _ids(c.get(url + "?empty_response=true")) == [pk[6]]
    assert _ids(c.get(url + "?empty_response=0")) == pk[:6]
    # search: case-insensitive, in the prompt or the chosen response.
    assert _ids(c.get(url + "?search=movie")) == [pk[0], pk[1], pk[3], pk[4], pk[5]]
    assert _ids(c.get(url + "?search=BAD")) == [pk[2]]
    combined = c.get(url + "?review_status=pending,approved&min_reward_sum=0.1&search=movie")
    assert _ids(combined) == [pk[0]] and combined.json()["count"] == 1
    assert _ids(c.get(url + "?review_status=pending,approved&min_reward_sum=0.01&search=movie")) == [pk[0], pk[1]]
    assert _ids(c.get(url + "?review_status=pending,approved&min_reward_mean=0.1&search=movie")) == []


@pytest.mark.parametrize(
    "query,key",
    [
        ("min_reward_sum=abc", "min_reward_sum"),
        ("min_reward_sum=inf", "min_reward_sum"),
        ("min_reward_mean=nan", "min_reward_mean"),
        ("min_reward_mean=-inf", "min_reward_mean"),
        ("empty_response=maybe", "empty_response"),
        ("review_status=pending,maybe", "review_status"),
    ],
)
def test_pairs_bad_values_are_400_naming_the_key(user, pairs_job, query, key):
    job, _ = pairs_job
    msg = _bad(_client(user).get(f"/api/v1/jobs/{job.pk}/pairs/?{query}"), key)
    assert query.split("=", 1)[1].split(",")[-1] in msg, msg


@pytest.mark.parametrize("value", ["0.1", ""])
def test_the_ambiguous_min_reward_is_refused_with_the_names_that_replace_it(user, pairs_job, value):
    """``min_reward`` filtered on a per-token mean the docs did not describe; it is a 400 naming both new
    filters, never silently read as one of them (nor ignored, which would return every pair)."""
    job, _ = pairs_job
    msg = _bad(_client(user).get(f"/api/v1/jobs/{job.pk}/pairs/?min_reward={value}"), "min_reward")
    assert "min_reward_sum" in msg and "min_reward_mean" in msg, msg


# --- events --------------------------------------------------------------------------------------------------
@pytest.fixture
def events_job(user):
    job = Job.objects.create(owner=user, kind="cd_generate", status="running", config={})
    JobEvent.objects.bulk_create([JobEvent(job=job, seq=s, type="progress", data={"done": s}) for s in range(1, 13)])
    other = Job.objects.create(owner=user, kind="cd_generate", status="running", config={})
    JobEvent.objects.bulk_create([JobEvent(job=other, seq=s, type="log", data={}) for s in range(1, 20)])
    return job


def _seqs(res) -> list[int]:
    assert res.status_code == 200, res.content
    return [e["seq"] for e in res.json()]


def test_events_after_and_limit(user, events_job):
    c = _client(user)
    url = f"/api/v1/jobs/{events_job.pk}/events/"
    assert _seqs(c.get(url)) == list(range(1, 13))
    assert _seqs(c.get(url + "?after=0")) == list(range(1, 13))
    assert _seqs(c.get(url + "?after=4")) == list(range(5, 13))
    assert _seqs(c.get(url + "?after=4&limit=3")) == [5, 6, 7]
    assert _seqs(c.get(url + "?limit=2")) == [1, 2]
    assert _seqs(c.get(url + "?after=12")) == []
    assert _seqs(c.get(url + "?after=11&limit=5")) == [12]
    # Paging through with the last seq seen returns every event once, in order.
    seen: list[int] = []
    while True:
        got = _seqs(c.get(url + f"?after={seen[-1] if seen else 0}&limit=5"))
        if not got:
            break
        seen += got
    assert seen == list(range(1, 13))


@pytest.mark.parametrize(
    "query,key",
    [
        ("limit=abc", "limit"),
        ("after=3&limit=2.5", "limit"),
        ("after=abc", "after"),
        ("after=x&limit=5", "after"),
    ],
)
def test_events_bad_values_are_400_naming_the_key(user, events_job, query, key):
    msg = _bad(_client(user).get(f"/api/v1/jobs/{events_job.pk}/events/?{query}"), key)
    assert "integer" in msg, msg
