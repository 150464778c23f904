"""Visibility and filtering guarantees of jobs/selectors.py, checked on the selectors themselves (the API
and page tests check them through HTTP; these are what ``make mutate`` runs against jobs/selectors.py, see
docs/TESTING.md). Real database rows, no mocks."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import AnonymousUser

from jobs import selectors as sel
from jobs.models import Dataset, GeneratedPair, Job, JobEvent, ModelEntry

pytestmark = pytest.mark.django_db


@pytest.fixture
def jobs(user, other_user):
    mine = [
        Job.objects.create(owner=user, kind="cd_generate", status="queued", config={}),
        Job.objects.create(owner=user, kind="cong", status="running", config={}),
        Job.objects.create(owner=user, kind="cong", status="failed", config={}),
    ]
    theirs = Job.objects.create(owner=other_user, kind="cong", status="running", config={})
    return mine, theirs


def _pks(qs) -> list[int]:
    return [o.pk for o in qs]


def test_a_user_sees_exactly_their_own_jobs_staff_all_anonymous_none(jobs, user, other_user, staff_user):
    mine, theirs = jobs
    assert sorted(_pks(sel.jobs_visible(user=user))) == sorted(j.pk for j in mine)
    assert _pks(sel.jobs_visible(user=other_user)) == [theirs.pk]
    assert sorted(_pks(sel.jobs_visible(user=staff_user))) == sorted([*(j.pk for j in mine), theirs.pk])
    assert not sel.jobs_visible(user=None).exists()
    assert not sel.jobs_visible(user=AnonymousUser()).exists()


def test_job_get_returns_only_a_visible_job_and_none_for_junk_ids(jobs, user, other_user, staff_user):
    mine, theirs = jobs
    assert sel.job_get(user=user, job_id=mine[0].pk).pk == mine[0].pk
    assert sel.job_get(user=user, job_id=str(mine[1].pk)).pk == mine[1].pk
    assert sel.job_get(user=user, job_id=theirs.pk) is None
    assert sel.job_get(user=staff_user, job_id=theirs.pk).pk == theirs.pk
    assert sel.job_get(user=None, job_id=mine[0].pk) is None
    for junk in ("x", None, "1.5"):
        assert sel.job_get(user=user, job_id=junk) is None
    GeneratedPair.objects.create(job=mine[0], prompt_index=0, prompt="p", chosen="c")
    assert sel.job_get(user=user, job_id=mine[0].pk).pair_count == 1


def test_job_list_filters_by_comma_separated_status_and_kind_newest_first(jobs, user, staff_user):
    mine, theirs = jobs
    assert _pks(sel.job_list(user=user)) == [j.pk for j in reversed(mine)]  # newest first
    assert _pks(sel.job_list(user=user, status="queued,failed")) == [mine[2].pk, mine[0].pk]
    assert _pks(sel.job_list(user=user, kind="cong")) == [mine[2].pk, mine[1].pk]
    assert _pks(sel.job_list(user=user, status="running", kind="cong")) == [mine[1].pk]
    assert _pks(sel.job_list(user=user, status="", kind="")) == [j.pk for j in reversed(mine)]
    assert _pks(sel.job_list(user=staff_user, status="running")) == [theirs.pk, mine[1].pk]
    GeneratedPair.objects.create(job=mine[0], prompt_index=0, prompt="p", chosen="c")
    counts = {j.pk: j.pair_count for j in sel.job_list(user=user)}
    assert counts == {mine[0].pk: 1, mine[1].pk: 0, mine[2].pk: 0}


def test_job_events_after_a_seq_in_order_and_limited(jobs):
    job = jobs[0][0]
    for seq in (3, 1, 2, 4):
        JobEvent.objects.create(job=job, seq=seq, type="log", data={"n": seq})
    JobEvent.objects.create(job=jobs[1], seq=5, type="log", data={})  # another job's event
    assert [e.seq for e in sel.job_events(job=job)] == [1, 2, 3, 4]
    assert [e.seq for e in sel.job_events(job=job, after=2)] == [3, 4]
    assert [e.seq for e in sel.job_events(job=job, after=1, limit=2)] == [2, 3]
    assert [e.seq for e in sel.job_events(job=job, limit=0)] == [1, 2, 3, 4]  # 0/None: no limit


def test_job_pairs_filters_each_bound_and_orders_by_prompt_index(jobs):
    job, other = jobs[0][0], jobs[1]
    mk = lambda i, **kw: GeneratedPair.objects.create(job=job, prompt_index=i, prompt=f"prompt {i}", **kw)  # noqa: E731
    a = mk(2, chosen="good film", implicit_reward_sum=2.0, implicit_reward_mean=0.5, review_status="approved")
    b = mk(0, chosen="bad plot", implicit_reward_sum=-1.0, implicit_reward_mean=-0.1, empty_response=False)
    c = mk(1, chosen="", implicit_reward_sum=None, implicit_reward_mean=None, empty_response=True)
    GeneratedPair.objects.create(job=other, prompt_index=0, prompt="x", chosen="good")
    assert _pks(sel.job_pairs(job=job)) == [b.pk, c.pk, a.pk]
    assert _pks(sel.job_pairs(job=job, review_status="approved,rejected")) == [a.pk]
    assert _pks(sel.job_pairs(job=job, review_status="pending")) == [b.pk, c.pk]
    # a bound is inclusive, and a pair without the number never passes it
    assert _pks(sel.job_pairs(job=job, min_reward_sum=-1.0)) == [b.pk, a.pk]
    assert _pks(sel.job_pairs(job=job, min_reward_sum=0.0)) == [a.pk]
    assert _pks(sel.job_pairs(job=job, min_reward_mean=-0.1)) == [b.pk, a.pk]
    assert _pks(sel.job_pairs(job=job, min_reward_mean=0.0)) == [a.pk]
    assert _pks(sel.job_pairs(job=job, empty_response=True)) == [c.pk]
    assert _pks(sel.job_pairs(job=job, empty_response=False)) == [b.pk, a.pk]
    # search looks in the prompt and in the chosen text, case-insensitively
    assert _pks(sel.job_pairs(job=job, search="GOOD")) == [a.pk]
    assert _pks(sel.job_pairs(job=job, search="prompt 1")) == [c.pk]
    assert _pks(sel.job_pairs(job=job, search="")) == [b.pk, c.pk, a.pk]


def test_models_and_datasets_visible_are_shared_plus_own_staff_all(user, other_user, staff_user):
    shared_m = ModelEntry.objects.create(name="shared", path="/m/s")
    mine_m = ModelEntry.objects.create(name="mine", path="/m/a", owner=user)
    theirs_m = ModelEntry.objects.create(name="theirs", path="/m/b", owner=other_user)
    shared_d = Dataset.objects.create(name="shared", path="/d/s")
    mine_d = Dataset.objects.create(name="mine", path="/d/a", owner=user)
    theirs_d = Dataset.objects.create(name="theirs", path="/d/b", owner=other_user)
    assert sorted(_pks(sel.models_visible(user=user))) == sorted([shared_m.pk, mine_m.pk])
    assert sorted(_pks(sel.datasets_visible(user=user))) == sorted([shared_d.pk, mine_d.pk])
    assert sorted(_pks(sel.models_visible(user=staff_user))) == sorted([shared_m.pk, mine_m.pk, theirs_m.pk])
    assert sorted(_pks(sel.datasets_visible(user=staff_user))) == sorted([shared_d.pk, mine_d.pk, theirs_d.pk])
    assert _pks(sel.models_visible(user=None)) == [shared_m.pk]
    assert _pks(sel.datasets_visible(user=None)) == [shared_d.pk]
    # A signed-out visitor (what request.user is then) sees the shared ones too, and no TypeError.
    assert _pks(sel.models_visible(user=AnonymousUser())) == [shared_m.pk]
    assert _pks(sel.datasets_visible(user=AnonymousUser())) == [shared_d.pk]


def test_job_list_takes_several_kinds_and_orders_by_creation_then_id(jobs, user):
    """Newest CREATED first (not highest id: a restored or imported job can be older than its id), and
    among jobs created at the same instant the later id first."""
    from datetime import timedelta

    from django.utils import timezone

    mine, _ = jobs
    assert _pks(sel.job_list(user=user, kind="cd_generate,cong")) == [j.pk for j in reversed(mine)]
    t = timezone.now()
    Job.objects.filter(pk=mine[0].pk).update(created=t + timedelta(hours=1))
    Job.objects.filter(pk__in=[mine[1].pk, mine[2].pk]).update(created=t)
    assert _pks(sel.job_list(user=user)) == [mine[0].pk, mine[2].pk, mine[1].pk]


def test_listing_jobs_with_their_owner_is_one_query(jobs, staff_user, django_assert_num_queries):
    """A list page shows each job's owner: the owner comes in the same query, not one query per job."""
    with django_assert_num_queries(1):
        names = [j.owner.username for j in sel.job_list(user=staff_user)]
    assert sorted(set(names)) == ["alice", "bob"]
