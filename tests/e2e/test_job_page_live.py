"""The job page's live state in a real browser (issue 18): one client-side state fed by the job's events.

Each test counts the page's own navigations (the main frame's ``framenavigated``) while a real job runs on a
real Celery worker: a page that reloads by itself when it should not (a replayed "cancelled" of an earlier
attempt, the old reload loop) or that stops following the job (Retry that never reopened the stream) fails
here. Screenshots land in the e2e artifacts folder (tests/e2e/conftest.py).
"""

from __future__ import annotations

import math
import time

import pytest

from tests.e2e.conftest import login

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.django_db(transaction=True), pytest.mark.timeout(150)]

PASSWORD = "pw-e2e-live-123"
STATUS = "document.getElementById('status').textContent"


def _job(stack, user, alphas: int = 21):
    """An alpha sweep on the tiny toy world: each alpha generates for all 24 prompts, one per batch, then
    scores them, so the job runs long enough to watch (a single cd_generate there is over in seconds)."""
    from jobs import services

    reg = stack.registered
    return services.job_create(
        user=user,
        kind="alpha_sweep",
        weak_base=reg["models"]["weak_base"].pk,
        weak_aligned=reg["models"]["weak_aligned"].pk,
        prompts=reg["datasets"]["train"].pk,
        params={
            "alphas": [round(i / max(1, alphas - 1), 3) for i in range(alphas)],
            "max_new_tokens": 32,
            "batch_size": 1,
        },
    )


def _signed_in(page, base: str, django_user_model, username: str):
    user = django_user_model.objects.create_user(username=username, password=PASSWORD)
    login(page, base, username, PASSWORD)
    return user


def _count_navigations(page) -> list[str]:
    """The URLs the page's main frame navigates to from now on (a reload counts as one)."""
    navs: list[str] = []

    def seen(frame) -> None:
        if frame == page.main_frame:
            navs.append(frame.url)

    page.on("framenavigated", seen)
    return navs


def _wait_db(job, pred, what: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job.refresh_from_db()
        if pred(job):
            return
        time.sleep(0.2)
    raise AssertionError(f"job {job.pk} never {what}: {job.status} {job.error}")


def _running_with_progress(job) -> bool:
    return job.status == "running" and job.progress > 0


def _header(page) -> dict:
    return page.evaluate(
        """() => ({
            status: document.getElementById('status').textContent,
            attempt: document.getElementById('attempt').textContent,
            stage: document.getElementById('job-stage').textContent,
            partial: !document.querySelector('dd[data-banner=partial]').hidden,
            finished: !document.querySelector('[data-banner=finished]').hidden,
            error: !document.querySelector('dd[data-banner=error]').hidden,
            retry: !document.getElementById('retry-form').hidden,
            cancel: !document.getElementById('cancel-form').hidden,
            messages: document.querySelectorAll('ul.messages li').length,
        })"""
    )


def test_cancel_then_retry_follows_the_new_attempt_live(
    live_stack, browser_page, screenshot, django_user_model, monkeypatch
):
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    page, base = browser_page, live_stack.base_url
    user = _signed_in(page, base, django_user_model, "ren")
    # This one runs to the end. A retry resumes: the alphas the first attempt finished return at once.
    job = _job(live_stack, user, alphas=5)
    navs = _count_navigations(page)
    page.goto(f"{base}/jobs/{job.pk}/")
    page.wait_for_function(f"() => {STATUS} === 'running' && window.congLive.stages.size > 0", timeout=60_000)

    # Cancel: the page was rendered before the job finished, so it reloads once for the server's view of it.
    page.once("dialog", lambda d: d.accept())
    with page.expect_navigation(timeout=60_000):
        page.click("#cancel-form button")
    page.wait_for_function(f"() => window.congLive && {STATUS} === 'cancelled'", timeout=20_000)
    job.refresh_from_db()
    assert job.status == "cancelled" and job.partial, (job.status, live_stack.worker.tail())
    h = _header(page)
    assert h["partial"] and h["finished"] and h["retry"] and not h["cancel"], h
    assert navs == [f"{base}/jobs/{job.pk}/"] * 2, navs
    screenshot(page, "live_1_cancelled")

    # Retry: no reload; the header follows the new attempt through the reopened stream.
    page.evaluate("window.__sameDocument = 1")
    page.click("#retry-form button")
    page.wait_for_function(
        f"""() => {STATUS} === 'running' && document.getElementById('attempt').dataset.attempt === '1'
                 && window.congLive.socketOpen""",
        timeout=60_000,
    )
    h = _header(page)
    assert h["attempt"].startswith("attempt 1 of 3"), h
    assert not h["partial"] and not h["finished"] and not h["error"] and not h["retry"] and h["cancel"], h
    seq, stage = page.evaluate("[window.congLive.lastSeq, document.getElementById('job-stage').textContent]")
    page.wait_for_function(  # progress keeps coming into the same document and the header follows it
        f"""() => window.__sameDocument === 1 && window.congLive.lastSeq > {seq} + 3
                 && /^(cd_generate|evaluate) · \\d+%$/.test(document.getElementById('job-stage').textContent)
                 && document.getElementById('job-stage').textContent !== {stage!r}""",
        timeout=60_000,
    )
    assert len(navs) == 2, navs
    screenshot(page, "live_2_retried_running")

    # The end: one reload (the job finished after this page was rendered) brings the results.
    with page.expect_navigation(timeout=90_000):
        page.wait_for_function(f"() => {STATUS} === 'succeeded'", timeout=90_000)
    page.wait_for_function(f"() => window.congLive && {STATUS} === 'succeeded'", timeout=20_000)
    job.refresh_from_db()
    assert job.status == "succeeded", (job.error, live_stack.worker.tail())
    assert navs == [f"{base}/jobs/{job.pk}/"] * 3, navs
    h = _header(page)
    assert h["attempt"].startswith("attempt 1 of 3") and h["finished"] and not h["partial"] and not h["retry"], h
    page.wait_for_function(f"() => window.congLive.lastSeq === {job.events.count()}", timeout=20_000)
    screenshot(page, "live_3_retried_succeeded")
    assert page.console_errors == [], page.console_errors


def test_a_retried_running_job_opens_without_a_reload_loop(
    live_stack, browser_page, screenshot, django_user_model, monkeypatch
):
    """Its history holds the first attempt's "cancelled": replayed, it must not count as the job finishing."""
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    from jobs import services

    page, base = browser_page, live_stack.base_url
    user = _signed_in(page, base, django_user_model, "sol")
    job = _job(live_stack, user)
    _wait_db(job, _running_with_progress, "ran")
    services.job_cancel(job=job, user=user)
    _wait_db(job, lambda j: j.status == "cancelled", "stopped")
    services.job_retry(job=job, user=user)
    _wait_db(job, _running_with_progress, "ran again")

    navs = _count_navigations(page)
    page.goto(f"{base}/jobs/{job.pk}/")
    page.evaluate("window.__sameDocument = 1")
    seq0 = page.evaluate("window.congLive.lastSeq")
    # The old page reloaded 1.5 s after it opened, and again after each reload. Watch it longer than that,
    # while the job keeps running and its events keep coming.
    page.wait_for_timeout(4000)
    page.wait_for_function(
        f"() => window.__sameDocument === 1 && window.congLive.lastSeq > {seq0} + 3 && window.congLive.socketOpen",
        timeout=30_000,
    )
    job.refresh_from_db()
    assert job.status == "running", job.status  # so the whole window was mid-run
    assert navs == [f"{base}/jobs/{job.pk}/"], navs
    log = page.locator("#log").inner_text()
    assert "[cancelled]" in log and "[queued] retry requested" in log  # the history is there, as history
    h = _header(page)
    assert h["status"] == "running" and h["attempt"].startswith("attempt 1 of 3"), h
    assert not h["partial"] and not h["finished"] and not h["retry"] and h["cancel"], h
    screenshot(page, "live_4_retried_opened")
    services.job_cancel(job=job, user=user)  # nothing more to see; lets the worker go
    assert page.console_errors == [], page.console_errors


def test_reload_mid_run_catches_up_with_the_job(live_stack, browser_page, screenshot, django_user_model, monkeypatch):
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    from jobs.models import JobEvent

    page, base = browser_page, live_stack.base_url
    user = _signed_in(page, base, django_user_model, "tam")
    job = _job(live_stack, user)
    navs = _count_navigations(page)
    page.goto(f"{base}/jobs/{job.pk}/")
    page.wait_for_function(f"() => {STATUS} === 'running' && window.congLive.stages.size > 0", timeout=60_000)
    _wait_db(job, _running_with_progress, "made progress")

    def last_seq() -> int:
        return JobEvent.objects.filter(job=job).order_by("-seq").values_list("seq", flat=True).first() or 0

    seen = last_seq()
    page.reload()
    page.wait_for_function(f"() => window.congLive && window.congLive.lastSeq >= {seen}", timeout=20_000)
    page.wait_for_function(f"() => {STATUS} === 'running' && window.congLive.socketOpen", timeout=20_000)
    h = _header(page)
    assert h["attempt"].startswith("attempt 1 of 3") and h["cancel"] and not h["finished"], h

    # Freeze the job where it is (its worker gone, nothing reaps it here): the page must end up exactly where
    # the API says the job is, and hold its last progress event (the job row's progress is written just before
    # that event, so a kill between the two could leave them apart: the event is the page's source).
    live_stack.worker.kill9()
    final = last_seq()
    page.wait_for_function(f"() => window.congLive.lastSeq === {final}", timeout=30_000)
    api = page.evaluate(f"fetch('/api/v1/jobs/{job.pk}/').then(r => r.json())")
    events = page.evaluate(f"fetch('/api/v1/jobs/{job.pk}/events/?after={max(0, final - 50)}').then(r => r.json())")
    last = [e for e in events if e["type"] == "progress"][-1]["data"]
    assert events[-1]["seq"] == final
    state = page.evaluate(
        """(stage) => { const s = window.congLive.stages.get(stage); return {done: s.done, total: s.total}; }""",
        last["stage"],
    )
    assert state == {"done": last["done"], "total": last["total"]}, (state, last)
    h = _header(page)
    assert api["status"] == "running" and h["status"] == api["status"], (h, api)
    assert h["stage"] == f"{last['stage']} · {math.floor(100 * last['done'] / last['total'] + 0.5)}%", (h, last)
    assert h["attempt"].startswith(f"attempt {api['attempts']} of {api['max_attempts']}"), (h, api)
    bar = page.locator(f'.stage-row[data-stage="{last["stage"]}"] .bar')
    assert bar.get_attribute("aria-valuenow") == str(math.floor(100 * last["done"] / last["total"] + 0.5))
    assert navs == [f"{base}/jobs/{job.pk}/"] * 2, navs  # the goto and the reload, nothing more
    screenshot(page, "live_5_reloaded_mid_run")
    assert page.console_errors == [], page.console_errors
