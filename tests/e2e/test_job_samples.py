"""The job page's samples grid, pairs list and Cancel confirmation in a real browser (issue 18).

A ConG job row with the sample events its stages send (the shapes of ml.stages.generate and
ml.stages.evaluate: cd_generate / plain_generate rows, then one evaluate row per method), some embedded in
the page and some pushed live; its stored pairs read page by page through the pairs API. No worker: the
events are written the way the worker writes them (jobs.services.event_append, then notify).
"""

from __future__ import annotations

import pytest

from tests.e2e.conftest import login

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.django_db(transaction=True), pytest.mark.timeout(150)]

PASSWORD = "pw-e2e-samples-123"
PROMPTS = ["review hotel :", "review movie :", "review book :"]
METHODS = ["cong", "weak_sft", "strong_base"]


def _grid(page) -> dict:
    return page.evaluate(
        """() => ({
            headers: [...document.querySelectorAll('#samples-grid thead th')].map(th => th.textContent),
            headerLines: new Set([...document.querySelectorAll('#samples-grid thead th')]
                .map(th => Math.round(th.getBoundingClientRect().top))).size,
            rows: [...document.querySelectorAll('#samples-grid tbody tr.sample-card')].map(tr =>
                [...tr.children].map(td => td.dataset.col + '=' + (td.querySelector('.sample-text')
                    ? td.querySelector('.sample-text').firstChild.textContent : td.textContent))),
            texts: [...document.querySelectorAll('#samples-grid td')]
                .map(td => td.querySelectorAll('.sample-text').length),
        })"""
    )


def test_samples_grid_pairs_list_and_cancel_confirmation(
    web_stack, browser_page, screenshot, django_user_model, monkeypatch, settings, redis_url
):
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    from jobs.models import GeneratedPair, Job
    from jobs.notify import notify
    from jobs.services import event_append

    settings.CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [redis_url]}}
    }
    user = django_user_model.objects.create_user(username="ines", password=PASSWORD)
    job = Job.objects.create(owner=user, kind="cong", config={}, status="running", stage="cd_generate")

    def emit(data):
        notify(job.pk, event_append(job_id=job.pk, type="sample", data=data))

    for p in PROMPTS[:2]:  # embedded in the page
        emit(
            {
                "stage": "cd_generate",
                "index": 0,
                "sample": 0,
                "prompt": p,
                "response": f"cd {p}",
                "implicit_reward_sum": 1.5,
            }
        )
    GeneratedPair.objects.bulk_create(
        GeneratedPair(job=job, prompt_index=i, prompt=f"prompt {i}", chosen="a movie" if i % 7 == 0 else "a book")
        for i in range(60)
    )
    page, base = browser_page, web_stack.base_url
    login(page, base, "ines", PASSWORD)
    page.goto(f"{base}/jobs/{job.pk}/")
    page.wait_for_function("() => document.getElementById('conn').textContent === 'live'", timeout=20_000)

    # Pushed live: plain samples, a new prompt, then evaluation after training (one row per method).
    for p in PROMPTS:
        emit({"stage": "plain_generate", "index": 0, "sample": 0, "prompt": p, "response": f"plain {p}"})
    emit({"stage": "cd_generate", "index": 2, "sample": 0, "prompt": PROMPTS[2], "response": f"cd {PROMPTS[2]}"})
    for m in METHODS:
        for p in PROMPTS:
            emit({"stage": "evaluate", "method": m, "prompt": p, "response": f"{m} {p}", "gold": 0.5})
    n = 2 + 3 + 1 + 9
    page.wait_for_function(f"() => window.congLive.lastSeq === {n}", timeout=20_000)
    g = _grid(page)
    assert g["headers"] == ["prompt", "plain pi_post", "contrastive decoding", *METHODS], g
    assert len(g["rows"]) == 3, g  # one row per prompt, newest first
    assert g["headerLines"] == 1, g  # the headers are one row over the columns, not wrapped cards
    for row, p in zip(g["rows"], reversed(PROMPTS)):
        assert row == [f"prompt={p}", f"plain=plain {p}", f"cd=cd {p}", *(f"method:{m}={m} {p}" for m in METHODS)]
    assert set(g["texts"]) <= {0, 1}, g  # one text per cell: never a stack of texts with labels under them
    assert page.locator("#samples-empty").count() == 0
    screenshot(page, "samples_1_grid")

    # Every pair, page by page, and a search that narrows them (the pairs API, fetched by the page).
    page.wait_for_function("() => window.congPairs.count === 60 && !window.congPairs.loading", timeout=20_000)
    seen = []
    while True:
        seen += [int(x) for x in page.locator("#pairs-table tbody tr td:first-child").all_inner_texts()]
        if page.locator("#pairs-next").is_disabled():
            break
        before = page.evaluate("window.congPairs.page")
        page.click("#pairs-next")
        page.wait_for_function(f"() => window.congPairs.page === {before + 1} && !window.congPairs.loading")
    assert sorted(seen) == list(range(60)) and len(seen) == 60, seen
    assert "page 2 of 2" in page.locator("#pairs-info").inner_text()
    page.fill("#pairs-q", "movie")
    page.click("#pairs-search button")
    page.wait_for_function(
        "() => window.congPairs.search === 'movie' && window.congPairs.count === 9 && !window.congPairs.loading"
    )
    assert page.locator("#pairs-table tbody tr").count() == 9
    assert set(page.locator("#pairs-table tbody tr td:nth-child(3)").all_inner_texts()) == {"a movie"}
    assert page.locator("#pairs-next").is_disabled()
    screenshot(page, "samples_2_pairs_search")

    # Cancel asks first: dismissed, the job keeps running; accepted, it is cancelled.
    asked: list[str] = []

    def answer(accept: bool):
        def handle(d):
            asked.append(d.message)
            d.accept() if accept else d.dismiss()

        return handle

    page.once("dialog", answer(False))
    page.click("#cancel-form button")
    page.wait_for_function("() => !document.querySelector('#cancel-form button').disabled")
    page.wait_for_timeout(500)  # a request the dismissal failed to stop would have been sent by now
    job.refresh_from_db()
    assert len(asked) == 1 and f"Cancel job {job.pk}?" in asked[0], asked
    assert job.status == "running" and not job.cancel_requested
    assert page.locator("#status").inner_text() == "running"
    page.once("dialog", answer(True))
    page.click("#cancel-form button")
    page.wait_for_function("() => document.getElementById('status').textContent === 'cancelling'", timeout=10_000)
    job.refresh_from_db()
    assert len(asked) == 2 and job.status == "cancelling" and job.cancel_requested
    assert page.console_errors == [], page.console_errors


def test_a_queued_job_says_it_waits_and_why(web_stack, browser_page, django_user_model, monkeypatch):
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    from jobs.models import Job

    user = django_user_model.objects.create_user(username="otto", password=PASSWORD)
    job = Job.objects.create(owner=user, kind="cong", config={}, status="queued", waiting_for="a GPU worker")
    page, base = browser_page, web_stack.base_url
    login(page, base, "otto", PASSWORD)
    page.goto(f"{base}/jobs/{job.pk}/")
    page.wait_for_function("() => window.congLive && window.congLive.lastSeq >= 0")
    assert page.locator("#samples-empty").inner_text() == "Waiting to start: a GPU worker"
    assert page.locator("#pairs").count() == 0  # no pairs yet: no list
    assert page.console_errors == [], page.console_errors


def test_a_sweep_has_one_column_per_alpha(web_stack, browser_page, django_user_model, monkeypatch):
    """A sweep's evaluation names each run by its alpha tag (ml.spec.alpha_tag); its CD rows say their alpha
    only when the stage sends it: those without one get a column that says so, never 'strong after training'."""
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    from jobs.models import Job
    from jobs.services import event_append

    user = django_user_model.objects.create_user(username="uma", password=PASSWORD)
    job = Job.objects.create(owner=user, kind="alpha_sweep", config={}, status="running", stage="cd_generate")
    p = "review hotel :"
    event_append(job_id=job.pk, type="sample", data={"stage": "cd_generate", "prompt": p, "response": "cd ?"})
    event_append(
        job_id=job.pk, type="sample", data={"stage": "cd_generate", "prompt": p, "response": "x", "alpha": 1.0}
    )
    for tag in ("a1.0", "a0.25"):
        event_append(
            job_id=job.pk, type="sample", data={"stage": "evaluate", "method": tag, "prompt": p, "response": tag}
        )
    page, base = browser_page, web_stack.base_url
    login(page, base, "uma", PASSWORD)
    page.goto(f"{base}/jobs/{job.pk}/")
    page.wait_for_function("() => window.congLive && window.congLive.lastSeq === 4")
    g = _grid(page)
    assert g["headers"] == ["prompt", "contrastive decoding (alpha not reported)", "CD alpha 0.25", "CD alpha 1"], g
    assert g["rows"] == [[f"prompt={p}", "cd=cd ?", "alpha:0.25=a0.25", "alpha:1=a1.0"]], g
    assert page.console_errors == [], page.console_errors
