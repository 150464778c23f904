"""The job lifecycle's guarantees (docs/RELIABILITY.md), each a test that fails when the guarantee breaks:
one winner per claim race, a reaped worker can no longer touch its job, a reaped cancel ends cancelled,
ml errors and time limits fail at once, and a job whose send hit a broker outage is re-sent by the reaper."""

from __future__ import annotations

import threading
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from jobs import services
from jobs.models import Artifact, Job, JobEvent

S = Job.Status


def _job(user, weak_pair, prompts_ds, **kw) -> Job:
    wb, wa = weak_pair
    args = dict(user=user, kind="cd_generate", weak_base=wb.pk, weak_aligned=wa.pk, prompts=prompts_ds.pk, alpha=0.4)
    args.update(kw)
    return services.job_create(**args)


def _make_stale(job: Job, settings) -> None:
    old = timezone.now() - timedelta(seconds=settings.JOB_STALE_AFTER_SECONDS + 5)
    Job.objects.filter(pk=job.pk).update(heartbeat_at=old)


def _status_events(job: Job, status: str) -> list[dict]:
    rows = JobEvent.objects.filter(job=job, type=JobEvent.Type.STATUS).order_by("seq").values_list("data", flat=True)
    return [d for d in rows if d.get("status") == status]


def _snapshot(job: Job) -> dict:
    """Everything a stray worker could change, and how many events and partial artifacts there are."""
    row = Job.objects.values(
        "status", "results", "error", "finished", "heartbeat_at", "partial", "task_id", "worker", "attempts"
    ).get(pk=job.pk)
    row["events"] = JobEvent.objects.filter(job=job).count()
    row["partial_artifacts"] = Artifact.objects.filter(job=job, partial=True).count()
    return row


# --- 1. a claim race has one winner ------------------------------------------------------------------------
def _claim_at_once(job_id: int, task_ids: list[str]) -> dict[str, Job | None]:
    """job_claim from one thread per task id, all released together by a barrier."""
    barrier = threading.Barrier(len(task_ids))
    claimed: dict[str, Job | None] = {}
    errors: list[BaseException] = []

    def claim(task_id: str) -> None:
        try:
            barrier.wait(timeout=30)
            claimed[task_id] = services.job_claim(job_id=job_id, task_id=task_id)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=claim, args=(tid,)) for tid in task_ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert sorted(claimed) == sorted(task_ids)
    return claimed


@pytest.mark.django_db(transaction=True)
def test_two_threads_claiming_one_job_exactly_one_wins(user, weak_pair, prompts_ds, monkeypatch):
    """Both threads start their claim at the same moment; several rounds, so an interleaving that lets
    both through has more than one chance to show. The row must name the winner's task and worker."""
    monkeypatch.setattr(services.dispatch, "send", lambda job_id: None)
    for rnd in range(4):
        job = _job(user, weak_pair, prompts_ds)
        claimed = _claim_at_once(job.pk, [f"r{rnd}-a", f"r{rnd}-b"])
        winners = [tid for tid, got in claimed.items() if got is not None]
        assert len(winners) == 1, f"round {rnd}: claimed by {winners}"
        job.refresh_from_db()
        assert job.status == S.RUNNING and job.attempts == 1
        assert job.task_id == winners[0] == claimed[winners[0]].task_id
        assert job.worker == services.worker_name()
        running = _status_events(job, S.RUNNING)
        assert len(running) == 1 and running[0]["attempt"] == 1


# --- 2. a reaped worker cannot finish ---------------------------------------------------------------------
def _stray_worker_is_refused(job: Job, task_id: str) -> None:
    before = _snapshot(job)
    assert services.job_finish(job_id=job.pk, results={"stray": 1}, task_id=task_id) is False
    assert services.job_fail(job_id=job.pk, error="stray failure", task_id=task_id) is False
    assert services.job_heartbeat(job_id=job.pk, task_id=task_id) is False
    assert services.job_mark_cancelled(job_id=job.pk, results={"stray": 1}, task_id=task_id) is False
    assert _snapshot(job) == before


@pytest.mark.django_db
@pytest.mark.parametrize("end", ["finish", "fail", "mark_cancelled"])
def test_a_reaped_worker_cannot_finish_fail_beat_or_cancel_the_job(
    user, weak_pair, prompts_ds, settings, tmp_path, end
):
    job = _job(user, weak_pair, prompts_ds)
    assert services.job_claim(job_id=job.pk, task_id="A").task_id == "A"
    services.artifact_record(job_id=job.pk, stage="generate", kind="samples", path=str(tmp_path / "s.jsonl"))
    _make_stale(job, settings)
    assert services.jobs_reap_stale(send=False) == [(job.pk, "requeued")]
    _stray_worker_is_refused(job, "A")  # requeued, not yet claimed again: still not A's
    assert services.job_claim(job_id=job.pk, task_id="B").attempts == 2
    _make_stale(job, settings)  # an old beat, so B's heartbeat below visibly moves it
    _stray_worker_is_refused(job, "A")

    old_beat, lost = Job.objects.values_list("heartbeat_at", "error").get(pk=job.pk)
    assert "stopped sending heartbeats" in lost
    assert services.job_heartbeat(job_id=job.pk, task_id="B") is True
    assert Job.objects.get(pk=job.pk).heartbeat_at > old_beat
    if end == "finish":
        assert services.job_finish(job_id=job.pk, results={"ok": 1}, task_id="B") is True
        expected = (S.SUCCEEDED, {"ok": 1}, "")
    elif end == "fail":
        assert services.job_fail(job_id=job.pk, error="real failure", task_id="B") is True
        expected = (S.FAILED, None, "real failure")
    else:
        assert services.job_mark_cancelled(job_id=job.pk, results={"part": 1}, task_id="B") is True
        expected = (S.CANCELLED, {"part": 1}, lost)
    job.refresh_from_db()
    assert (job.status, job.results, job.error) == expected
    assert Artifact.objects.get(job=job).partial is (end == "mark_cancelled")


# --- 3. a reaped cancelling job ends cancelled ---------------------------------------------------------------
@pytest.mark.django_db
def test_the_reaper_finishes_the_cancel_of_a_job_whose_worker_died_stopping(user, weak_pair, prompts_ds, settings):
    job = _job(user, weak_pair, prompts_ds)
    services.job_claim(job_id=job.pk, task_id="A")
    assert services.job_cancel(job=job).status == S.CANCELLING
    _make_stale(job, settings)
    assert services.jobs_reap_stale(send=False) == [(job.pk, "cancelled")]
    job.refresh_from_db()
    assert job.status == S.CANCELLED and job.partial and job.finished is not None
    assert job.attempts == 1 and "stopped sending heartbeats" in job.error
    assert len(_status_events(job, S.CANCELLED)) == 1
    assert services.job_claim(job_id=job.pk, task_id="A") is None  # a redelivered message does not rerun it
    assert Job.objects.get(pk=job.pk).status == S.CANCELLED


# --- 4. claiming a job whose worker died while cancelling finishes the cancel ------------------------------
@pytest.mark.django_db
@pytest.mark.parametrize("how", ["stale heartbeat, new task", "same task redelivered"])
def test_claiming_a_job_lost_while_cancelling_cancels_it_instead_of_rerunning(
    user, weak_pair, prompts_ds, settings, how, django_capture_on_commit_callbacks
):
    job = _job(user, weak_pair, prompts_ds)
    services.job_claim(job_id=job.pk, task_id="A")
    services.job_cancel(job=job)
    if how.startswith("stale"):
        _make_stale(job, settings)
        task = "B"
    else:
        task = "A"  # reject_on_worker_lost redelivers the same message; the heartbeat is still fresh
    assert services.cancel_requested(job_id=job.pk)
    with django_capture_on_commit_callbacks(execute=True):
        assert services.job_claim(job_id=job.pk, task_id=task) is None
    job.refresh_from_db()
    assert job.status == S.CANCELLED and job.partial and job.finished is not None
    assert job.attempts == 1 and job.task_id == "A"  # no new attempt was started
    assert len(_status_events(job, S.RUNNING)) == 1
    assert [e["message"] for e in _status_events(job, S.CANCELLED)] == ["cancelled (worker lost while stopping)"]


# --- 5. errors inside ml fail the job at once ----------------------------------------------------------------
@pytest.mark.django_db
def test_an_error_inside_ml_fails_the_job_at_once_with_its_traceback(user, weak_pair, prompts_ds, monkeypatch):
    import ml.execute
    from jobs.runner import run_job

    def boom(*args, **kwargs):
        raise ValueError("boom")

    monkeypatch.setattr(ml.execute, "execute", boom)
    job = _job(user, weak_pair, prompts_ds)
    assert run_job(job_id=job.pk, task_id="t1") == "failed"
    job.refresh_from_db()
    assert job.status == S.FAILED and job.attempts == 1 and job.error == "ValueError: boom"
    assert job.finished is not None
    logs = [
        str(d.get("message", ""))
        for d in JobEvent.objects.filter(job=job, type=JobEvent.Type.LOG).values_list("data", flat=True)
    ]
    assert any("Traceback (most recent call last)" in m and "ValueError: boom" in m for m in logs), logs
    assert [e["message"] for e in _status_events(job, S.FAILED)] == ["ValueError: boom"]
    assert run_job(job_id=job.pk, task_id="t1") == "not claimed (finished, cancelled, or held by another worker)"


@pytest.mark.django_db
def test_a_soft_time_limit_fails_the_job_saying_finished_stages_are_kept(user, weak_pair, prompts_ds, monkeypatch):
    from celery.exceptions import SoftTimeLimitExceeded

    from jobs import runner

    def too_long(*args, **kwargs):
        raise SoftTimeLimitExceeded()

    monkeypatch.setattr(runner, "run_spec", too_long)
    job = _job(user, weak_pair, prompts_ds)
    assert runner.run_job(job_id=job.pk, task_id="t1") == "failed"
    job.refresh_from_db()
    assert job.status == S.FAILED and job.attempts == 1
    assert job.error.startswith("stopped at the time limit") and "finished stages are kept" in job.error


# --- 6. a broker outage at creation: the reaper sends the job again -------------------------------------------
@pytest.mark.django_db
def test_a_job_created_while_the_broker_is_down_is_resent_by_the_reaper(
    user, weak_pair, prompts_ds, monkeypatch, django_capture_on_commit_callbacks
):
    from congweb.celery import app

    attempts: list[tuple] = []

    def broker_down(name, args=None, **kwargs):
        attempts.append((name, args))
        raise ConnectionError("broker unreachable")

    monkeypatch.setattr(app, "send_task", broker_down)
    with django_capture_on_commit_callbacks(execute=True):
        job = _job(user, weak_pair, prompts_ds)
    assert attempts == [(services.dispatch.JOB_TASK, (job.pk,))]  # the send was tried, after the commit
    job.refresh_from_db()
    assert job.status == S.QUEUED and job.send_pending
    logs = [
        d["message"] for d in JobEvent.objects.filter(job=job, type=JobEvent.Type.LOG).values_list("data", flat=True)
    ]
    assert len(logs) == 1 and "broker unreachable" in logs[0] and "reaper sends it again" in logs[0]

    # Still down at the next pass: tried again, still pending, no second log event.
    assert services.jobs_reap_stale() == [(job.pk, "resend failed")]
    assert len(attempts) == 2 and Job.objects.get(pk=job.pk).send_pending
    assert JobEvent.objects.filter(job=job, type=JobEvent.Type.LOG).count() == 1

    sent: list[tuple] = []
    monkeypatch.setattr(app, "send_task", lambda name, args=None, **kwargs: sent.append((name, args)))
    assert services.jobs_reap_stale() == [(job.pk, "resent")]
    assert sent == [(services.dispatch.JOB_TASK, (job.pk,))]
    job.refresh_from_db()
    assert job.status == S.QUEUED and not job.send_pending
    assert services.jobs_reap_stale() == []  # sent once: the next pass sends nothing
    assert len(sent) == 1
    assert services.jobs_reap_stale(send=False) == []


@pytest.mark.django_db
def test_reap_stale_jobs_command_prints_the_jobs_it_resends(user, weak_pair, prompts_ds, monkeypatch):
    from congweb.celery import app

    job = _job(user, weak_pair, prompts_ds)
    monkeypatch.setattr(app, "send_task", lambda *a, **k: (_ for _ in ()).throw(ConnectionError("down")))
    assert services.dispatch.send(job.pk) is False
    out = StringIO()
    call_command("reap_stale_jobs", stdout=out)
    assert out.getvalue().splitlines() == [f"job {job.pk}: resend failed"]
    monkeypatch.setattr(app, "send_task", lambda *a, **k: None)
    out = StringIO()
    call_command("reap_stale_jobs", stdout=out)
    assert out.getvalue().splitlines() == [f"job {job.pk}: resent"]
    assert not Job.objects.get(pk=job.pk).send_pending
