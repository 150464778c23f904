"""Job-lifecycle guarantees that ``make mutate`` found unchecked (docs/TESTING.md lists the mutants): each
transition's exact effect on the row, the attempt budget, who may still touch a job, and the reaper's three
outcomes. Real database rows; the only stand-in is ``dispatch.send`` (the broker boundary), recorded instead
of sent, where a test checks WHICH job would be sent."""

from __future__ import annotations

import os
from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from jobs import services
from jobs.models import Artifact, Job, JobEvent
from jobs.services import dispatch, lifecycle

S = Job.Status
pytestmark = pytest.mark.django_db


def _job(user, **kw) -> Job:
    kw.setdefault("config", {"spec": {"kind": "cd_generate"}})
    return Job.objects.create(owner=user, kind="cd_generate", **kw)


def _stale(settings) -> object:
    return timezone.now() - timedelta(seconds=settings.JOB_STALE_AFTER_SECONDS + 5)


def _statuses(job: Job) -> list[tuple[str, str]]:
    rows = JobEvent.objects.filter(job=job, type=JobEvent.Type.STATUS).order_by("seq").values_list("data", flat=True)
    return [(d["status"], d.get("message", "")) for d in rows]


@pytest.fixture
def sent(monkeypatch):
    out: list[int] = []
    monkeypatch.setattr(dispatch, "send", lambda pk: out.append(pk) or True)
    return out


# --- cancel -------------------------------------------------------------------------------------------------
def test_cancel_of_a_queued_job_ends_it_at_once_and_of_a_cancelling_one_is_a_no_op(user):
    bystander = _job(user)
    job = services.job_cancel(job=_job(user))
    assert Job.objects.get(pk=bystander.pk).status == S.QUEUED  # only the job named
    assert (job.status, job.cancel_requested, job.error) == (S.CANCELLED, True, "cancelled before it started")
    assert job.finished is not None
    assert _statuses(job) == [(S.CANCELLED, "cancelled before it started")]
    running = _job(user, status=S.RUNNING)
    running = services.job_cancel(job=running)
    assert (running.status, running.cancel_requested, running.finished) == (S.CANCELLING, True, None)
    assert _statuses(running) == [(S.CANCELLING, "cancel requested; the worker stops after its current batch")]
    again = services.job_cancel(job=running)  # already cancelling: no error, no second event
    assert again.status == S.CANCELLING and len(_statuses(running)) == 1
    with pytest.raises(ValidationError):
        services.job_cancel(job=_job(user, status=S.SUCCEEDED))


# --- retry --------------------------------------------------------------------------------------------------
def test_retry_resets_every_field_of_the_attempt_and_sends_the_job_on_commit(
    user, sent, django_capture_on_commit_callbacks
):
    now = timezone.now()
    job = _job(
        user,
        status=S.FAILED,
        attempts=3,
        error="boom",
        cancel_requested=True,
        finished=now,
        partial=True,
        heartbeat_at=now,
        task_id="t9",
        worker="h:1",
    )
    with django_capture_on_commit_callbacks(execute=True):
        job = services.job_retry(job=job)
    assert (job.status, job.attempts, job.error, job.cancel_requested) == (S.QUEUED, 0, "", False)
    assert (job.finished, job.partial, job.heartbeat_at, job.task_id, job.worker) == (None, False, None, "", "")
    assert sent == [job.pk]
    assert _statuses(job) == [(S.QUEUED, "retry requested")]


def test_retry_of_a_job_stored_before_specs_stores_a_resolved_spec_first(user, sent):
    job = _job(user, status=S.CANCELLED, config={"params": {}, "alpha": 0.25})
    job = services.job_retry(job=job)
    assert job.config["spec"]["kind"] == "cd_generate" and job.config["spec"]["alpha"] == 0.25
    assert job.config["alpha"] == 0.25  # the old keys are kept beside it
    # a stored spec is never re-resolved
    kept = _job(user, status=S.FAILED, config={"spec": {"kind": "cd_generate", "mark": 1}})
    assert services.job_retry(job=kept).config == {"spec": {"kind": "cd_generate", "mark": 1}}


def test_retry_of_a_pre_spec_job_whose_settings_no_longer_pass_names_the_setting(user, sent):
    job = _job(user, status=S.FAILED, config={"alpha": 7})
    with pytest.raises(ValidationError) as exc:
        services.job_retry(job=job)
    assert "alpha" in exc.value.message_dict
    job.refresh_from_db()
    assert job.status == S.FAILED and "spec" not in job.config


# --- claim --------------------------------------------------------------------------------------------------
def test_a_claim_of_a_queued_job_records_the_attempt_worker_and_task(user):
    job = _job(user)
    got = services.job_claim(job_id=job.pk, task_id="t1")
    assert (got.status, got.attempts, got.task_id, got.worker) == (S.RUNNING, 1, "t1", lifecycle.worker_name())
    assert got.heartbeat_at is not None and got.started is not None and got.error == ""
    assert _statuses(job) == [(S.RUNNING, f"attempt 1 of 3 started on {lifecycle.worker_name()}")]
    first_start = got.started
    Job.objects.filter(pk=job.pk).update(heartbeat_at=None)
    again = services.job_claim(job_id=job.pk, task_id="t2")  # no heartbeat at all: the holder is gone
    assert again.attempts == 2 and again.started == first_start  # started is the first attempt's


def test_a_stale_running_job_is_reclaimed_with_the_lost_worker_named(user, settings):
    job = _job(user, status=S.RUNNING, attempts=1, worker="box:7", task_id="old", heartbeat_at=_stale(settings))
    got = services.job_claim(job_id=job.pk, task_id="new")
    assert got.attempts == 2 and got.error == "worker box:7 was lost during attempt 1"
    started = f"attempt 2 of 3 started on {lifecycle.worker_name()}"
    assert _statuses(job)[-1][1] == f"{started} (after: worker box:7 was lost during attempt 1)"


def test_a_claim_runs_only_the_job_it_names_and_its_event_says_who_runs_it(user):
    """Other queued jobs stay queued (each is claimed by its own task), and the running event carries the
    attempt, the worker and its process id (what the job page shows and an operator kills)."""
    other = _job(user)
    job = _job(user)
    assert services.job_claim(job_id=job.pk, task_id="t1").status == S.RUNNING
    assert Job.objects.get(pk=other.pk).status == S.QUEUED and _statuses(other) == []
    data = JobEvent.objects.get(job=job, type=JobEvent.Type.STATUS).data
    assert (data["attempt"], data["worker"], data["pid"]) == (1, lifecycle.worker_name(), os.getpid())


def test_a_claim_is_refused_for_a_live_holder_a_finished_job_or_no_job(user):
    live = _job(user, status=S.RUNNING, attempts=1, task_id="t1", heartbeat_at=timezone.now())
    assert services.job_claim(job_id=live.pk, task_id="t2") is None
    assert services.job_claim(job_id=live.pk) is None
    assert Job.objects.get(pk=live.pk).attempts == 1
    for status in (S.SUCCEEDED, S.FAILED, S.CANCELLED):
        assert services.job_claim(job_id=_job(user, status=status).pk, task_id="t") is None
    assert services.job_claim(job_id=10**9, task_id="t") is None


def test_past_its_attempt_budget_a_job_fails_with_the_last_error(user, settings):
    job = _job(user, status=S.RUNNING, attempts=3, max_attempts=3, heartbeat_at=_stale(settings), worker="w:1")
    assert services.job_claim(job_id=job.pk, task_id="t") is None
    job.refresh_from_db()
    msg = "gave up after 3 attempts; last error: worker w:1 was lost during attempt 3"
    assert (job.status, job.error) == (S.FAILED, msg) and job.finished is not None
    # a queued job at its budget fails too, naming 'worker lost' when there is no error
    q = _job(user, attempts=2, max_attempts=2)
    assert services.job_claim(job_id=q.pk) is None
    q.refresh_from_db()
    assert (q.status, q.error) == (S.FAILED, "gave up after 2 attempts; last error: worker lost")
    # one attempt below the budget still runs
    ok = _job(user, attempts=1, max_attempts=2)
    assert services.job_claim(job_id=ok.pk).attempts == 2


def test_a_claim_without_a_task_id_records_none_and_matches_no_holders_task(user):
    """task_id defaults to "no task" (a claim outside a broker delivery): the job then holds no task id, and
    no live holder's task id counts as "this very message redelivered", whatever that id is."""
    got = services.job_claim(job_id=_job(user).pk)
    assert (got.status, got.task_id) == (S.RUNNING, "")
    for held in ("XXXX", "t1"):
        live = _job(user, status=S.RUNNING, attempts=1, task_id=held, heartbeat_at=timezone.now())
        assert services.job_claim(job_id=live.pk) is None
        assert Job.objects.get(pk=live.pk).attempts == 1


def test_a_claim_never_touches_a_job_it_may_not_take(user):
    """A claim that is refused changes nothing: not a live holder's job that is being cancelled (only a LOST
    holder's cancel is finished by a claim), not a finished job at its attempt budget; a claimable job elsewhere
    in the table makes no difference."""
    _job(user)  # claimable, but not the job asked for
    live = _job(user, status=S.CANCELLING, cancel_requested=True, attempts=1, task_id="t1", heartbeat_at=timezone.now())
    done = _job(user, status=S.SUCCEEDED, attempts=3, max_attempts=3)
    for job in (live, done):
        before = Job.objects.filter(pk=job.pk).values().get()
        assert services.job_claim(job_id=job.pk, task_id="t2") is None
        assert Job.objects.filter(pk=job.pk).values().get() == before
        assert _statuses(job) == []


def test_a_claim_that_finishes_a_lost_cancel_or_fails_a_spent_job_touches_only_that_job(
    user, settings, django_capture_on_commit_callbacks
):
    """Both ends a claim can give instead of a run: the job named ends (with its event, sent on commit), and
    jobs of the same status beside it stay as they were."""
    old = _stale(settings)
    running = _job(user, status=S.RUNNING, attempts=1, task_id="b1", heartbeat_at=timezone.now())
    stopping = _job(
        user, status=S.CANCELLING, cancel_requested=True, attempts=1, task_id="b2", heartbeat_at=timezone.now()
    )
    bystanders = {j.pk: Job.objects.filter(pk=j.pk).values().get() for j in (running, stopping)}
    lost = _job(user, status=S.CANCELLING, cancel_requested=True, attempts=1, heartbeat_at=old)
    spent = _job(user, status=S.RUNNING, attempts=3, max_attempts=3, worker="", heartbeat_at=old)
    with django_capture_on_commit_callbacks(execute=True):
        assert services.job_claim(job_id=lost.pk, task_id="t") is None
    with django_capture_on_commit_callbacks(execute=True):
        assert services.job_claim(job_id=spent.pk, task_id="t") is None
    assert {pk: Job.objects.filter(pk=pk).values().get() for pk in bystanders} == bystanders
    assert Job.objects.get(pk=lost.pk).status == S.CANCELLED
    msg = "gave up after 3 attempts; last error: worker ? was lost during attempt 3"  # "?": no worker recorded
    assert (Job.objects.get(pk=spent.pk).status, Job.objects.get(pk=spent.pk).error) == (S.FAILED, msg)
    assert _statuses(spent) == [(S.FAILED, msg)]


# --- heartbeat, progress, finish, fail, mark_cancelled --------------------------------------------------------
def test_a_heartbeat_counts_only_for_the_holding_task_of_a_running_job(user, settings):
    old = _stale(settings)
    job = _job(user, status=S.RUNNING, task_id="t1", heartbeat_at=old)
    assert services.job_heartbeat(job_id=job.pk, task_id="t2") is False
    assert Job.objects.get(pk=job.pk).heartbeat_at == old
    assert services.job_heartbeat(job_id=job.pk, task_id="t1") is True
    assert Job.objects.get(pk=job.pk).heartbeat_at > old
    assert services.job_heartbeat(job_id=job.pk) is True
    assert services.job_heartbeat(job_id=_job(user, status=S.CANCELLING).pk) is True
    assert services.job_heartbeat(job_id=_job(user).pk) is False  # queued: nobody's


def test_progress_is_clamped_to_0_1(user):
    job = _job(user)
    for given, stored in ((1.7, 1.0), (-0.2, 0.0), (0.25, 0.25)):
        services.job_set_progress(job_id=job.pk, stage="generate", progress=given)
        job.refresh_from_db()
        assert (job.stage, job.progress) == ("generate", stored)


def test_finish_stores_results_and_clears_the_attempts_error(user):
    job = _job(user, status=S.RUNNING, task_id="t1", error="earlier", partial=True, progress=0.3)
    assert services.job_finish(job_id=job.pk, results={"a": 1}, task_id="other") is False
    assert services.job_finish(job_id=job.pk, results={"a": 1}, task_id="t1") is True
    job.refresh_from_db()
    assert (job.status, job.results, job.progress, job.error, job.partial) == (S.SUCCEEDED, {"a": 1}, 1.0, "", False)
    assert job.finished is not None and _statuses(job) == [(S.SUCCEEDED, "job succeeded")]
    assert services.job_finish(job_id=_job(user).pk) is False  # queued: not finishable
    assert services.job_finish(job_id=_job(user, status=S.CANCELLING).pk) is True


def test_fail_keeps_5000_characters_and_a_task_can_fail_only_its_own_attempt(user):
    job = _job(user, status=S.RUNNING, task_id="t1")
    assert services.job_fail(job_id=job.pk, error="x", task_id="t2") is False
    assert services.job_fail(job_id=job.pk, error="e" * 6000, task_id="t1") is True
    job.refresh_from_db()
    assert job.status == S.FAILED and job.error == "e" * 5000 and job.finished is not None
    assert _statuses(job) == [(S.FAILED, "e" * 2000)]
    queued = _job(user, task_id="t1")
    assert services.job_fail(job_id=queued.pk, error="x", task_id="t1") is False  # requeued: not ours
    assert services.job_fail(job_id=queued.pk, error="x") is True  # without a task: the job's own failure
    assert services.job_fail(job_id=_job(user, status=S.CANCELLING).pk, error="x") is True
    assert services.job_fail(job_id=_job(user, status=S.SUCCEEDED).pk, error="x") is False


def test_mark_cancelled_keeps_results_and_marks_them_and_the_artifacts_partial(user):
    job = _job(user, status=S.CANCELLING, task_id="t1")
    Artifact.objects.create(job=job, stage="generate", kind="samples", path="/x")
    other = _job(user, status=S.RUNNING)
    Artifact.objects.create(job=other, stage="generate", kind="samples", path="/y")
    assert services.job_mark_cancelled(job_id=job.pk, results={"n": 2}, task_id="t2") is False
    assert not Artifact.objects.filter(job=job, partial=True).exists()
    assert services.job_mark_cancelled(job_id=job.pk, results={"n": 2}, task_id="t1") is True
    job.refresh_from_db()
    assert (job.status, job.partial, job.results) == (S.CANCELLED, True, {"n": 2}) and job.finished is not None
    assert Artifact.objects.get(job=job).partial is True and Artifact.objects.get(job=other).partial is False
    assert _statuses(job) == [(S.CANCELLED, "cancelled; partial results kept")]
    assert services.job_mark_cancelled(job_id=_job(user).pk) is False  # queued: cancel() ends those
    assert services.job_mark_cancelled(job_id=_job(user, status=S.RUNNING).pk) is True


def test_cancel_requested_reads_the_flag(user):
    assert services.cancel_requested(job_id=_job(user, cancel_requested=True).pk) is True
    assert services.cancel_requested(job_id=_job(user).pk) is False
    assert services.cancel_requested(job_id=10**9) is False


# --- the reaper -----------------------------------------------------------------------------------------------
def test_the_reaper_requeues_fails_or_cancels_stale_jobs_and_leaves_live_ones(user, settings, sent):
    old = _stale(settings)
    requeue = _job(user, status=S.RUNNING, attempts=1, worker="w:1", task_id="t", heartbeat_at=old)
    give_up = _job(user, status=S.RUNNING, attempts=3, max_attempts=3, worker="w:2", heartbeat_at=old)
    cancel = _job(user, status=S.CANCELLING, attempts=1, cancel_requested=True, heartbeat_at=None)
    live = _job(user, status=S.RUNNING, attempts=1, heartbeat_at=timezone.now())
    done = services.jobs_reap_stale(send=True)
    assert sorted(done) == sorted([(requeue.pk, "requeued"), (give_up.pk, "failed"), (cancel.pk, "cancelled")])
    assert sent == [requeue.pk]
    requeue.refresh_from_db()
    lost = "worker w:1 stopped sending heartbeats during attempt 1"
    assert (requeue.status, requeue.error, requeue.task_id, requeue.worker) == (S.QUEUED, lost, "", "")
    assert _statuses(requeue) == [(S.QUEUED, f"requeued: {lost}")]
    give_up.refresh_from_db()
    msg = "gave up after 3 attempts; last error: worker w:2 stopped sending heartbeats during attempt 3"
    assert (give_up.status, give_up.error) == (S.FAILED, msg) and give_up.finished is not None
    assert _statuses(give_up) == [(S.FAILED, msg)]
    cancel.refresh_from_db()
    assert (cancel.status, cancel.partial) == (S.CANCELLED, True) and cancel.finished is not None
    assert cancel.error == "worker ? stopped sending heartbeats during attempt 1"
    assert _statuses(cancel) == [(S.CANCELLED, f"cancelled ({cancel.error})")]
    assert Job.objects.get(pk=live.pk).status == S.RUNNING
    assert services.jobs_reap_stale(send=True) == []  # nothing left to do


def test_the_reaper_without_send_requeues_but_sends_nothing(user, settings, sent):
    job = _job(user, status=S.RUNNING, attempts=1, heartbeat_at=_stale(settings))
    pending = _job(user, send_pending=True)
    assert services.jobs_reap_stale(send=False) == [(job.pk, "requeued")]
    assert sent == []
    assert services.jobs_reap_stale(send=True) == [(pending.pk, "resent")]
    assert sent == [pending.pk]


@pytest.mark.parametrize("end", ["finish", "fail", "mark_cancelled", "heartbeat", "progress", "cancel"])
def test_each_transition_touches_only_the_job_it_names(user, settings, end):
    """Two running jobs held by the same task id (a redelivered id can repeat): acting on one must leave the
    other exactly as it was."""
    old = _stale(settings)
    a = _job(user, status=S.RUNNING, task_id="t", heartbeat_at=old, progress=0.5)
    b = _job(user, status=S.RUNNING, task_id="t", heartbeat_at=old, progress=0.5)
    before = Job.objects.filter(pk=b.pk).values().get()
    if end == "finish":
        assert services.job_finish(job_id=a.pk, results={}, task_id="t")
    elif end == "fail":
        assert services.job_fail(job_id=a.pk, error="x", task_id="t")
    elif end == "mark_cancelled":
        assert services.job_mark_cancelled(job_id=a.pk, task_id="t")
    elif end == "heartbeat":
        assert services.job_heartbeat(job_id=a.pk, task_id="t")
    elif end == "progress":
        services.job_set_progress(job_id=a.pk, stage="s", progress=0.9)
    else:
        services.job_cancel(job=a)
    assert Job.objects.filter(pk=b.pk).values().get() == before
    assert not JobEvent.objects.filter(job=b).exists()


def test_staleness_is_the_configured_job_stale_after_seconds(user, settings, sent):
    """JOB_STALE_AFTER_SECONDS decides when a holder is gone, for the claim and for the reaper alike."""
    settings.JOB_STALE_AFTER_SECONDS = 30
    now = timezone.now()
    fresh = _job(user, status=S.RUNNING, attempts=1, task_id="t1", heartbeat_at=now - timedelta(seconds=20))
    gone = _job(user, status=S.RUNNING, attempts=1, task_id="t1", heartbeat_at=now - timedelta(seconds=40))
    assert services.job_claim(job_id=fresh.pk, task_id="t2") is None
    assert services.job_claim(job_id=gone.pk, task_id="t2").attempts == 2
    Job.objects.filter(pk=gone.pk).update(heartbeat_at=now - timedelta(seconds=40))
    assert services.jobs_reap_stale(send=False) == [(gone.pk, "requeued")]


def test_the_reaper_resends_only_queued_jobs_whose_send_is_pending(user, sent):
    """A job cancelled (or finished) while its send was pending is never sent to a worker again."""
    queued = _job(user, send_pending=True)
    _job(user, status=S.CANCELLED, send_pending=True)
    _job(user, status=S.SUCCEEDED, send_pending=True)
    assert services.jobs_reap_stale(send=True) == [(queued.pk, "resent")]
    assert sent == [queued.pk]


def test_the_reaper_leaves_a_job_that_finished_while_it_was_reaping(user, settings, sent, monkeypatch):
    """The reaper reads its candidates, then updates each one only if it is STILL running and stale: a job
    whose worker finished it in between keeps its result. The interleaving is made deterministic by finishing
    the other job (a real job_finish) right after the reaper's first status event."""
    old = _stale(settings)
    a = _job(user, status=S.RUNNING, attempts=1, task_id="ta", heartbeat_at=old)
    b = _job(user, status=S.RUNNING, attempts=1, task_id="tb", heartbeat_at=old)
    real = lifecycle._status_event
    finished: list[int] = []

    def then_the_other_finishes(job_id, *args, **kw):
        real(job_id, *args, **kw)
        if not finished and job_id in (a.pk, b.pk):
            other = b if job_id == a.pk else a
            finished.append(other.pk)
            assert services.job_finish(job_id=other.pk, results={"ok": 1}, task_id=other.task_id)

    monkeypatch.setattr(lifecycle, "_status_event", then_the_other_finishes)
    done = services.jobs_reap_stale(send=False)
    assert len(done) == 1 and done[0][1] == "requeued" and done[0][0] != finished[0]
    other = Job.objects.get(pk=finished[0])
    assert (other.status, other.results) == (S.SUCCEEDED, {"ok": 1})
