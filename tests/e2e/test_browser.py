"""End to end in a real browser: sign in, start a toy contrastive-decoding job from the new-job page,
watch progress and sample cards arrive live (no reload), then reject one of its pairs in the admin.

Real processes throughout: daphne (HTTP + websockets), a Celery worker, Redis, the shared test database
and headless Chromium. Screenshots land in the test's tmp dir and in var/e2e/.
"""

from __future__ import annotations

import re
import time

import pytest

from .conftest import save_screenshot

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.django_db(transaction=True), pytest.mark.timeout(240)]

PASSWORD = "pw-e2e-admin-123"


def test_job_live_in_browser_then_review_in_admin(live_stack, browser_page, tmp_path, django_user_model,
                                                   monkeypatch):
    # Playwright's sync API keeps an event loop on this thread; the ORM calls below are plain sync code.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    from jobs.models import GeneratedPair, Job

    django_user_model.objects.create_superuser(username="ada", password=PASSWORD)
    page, base = browser_page, live_stack.base_url
    t0 = time.monotonic()

    # 1. Every page needs a sign-in: the dashboard sends us to the login form.
    page.goto(f"{base}/")
    assert "/accounts/login/" in page.url
    page.fill("#id_username", "ada")
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/")
    assert page.locator("h1").first.inner_text().startswith("Jobs")

    # 2. New job: the toy world's contrastive-decoding preset fills the form; slow it down a little
    # (one prompt per batch) so there is progress to watch.
    page.goto(f"{base}/jobs/new/")
    page.get_by_role("button", name=re.compile("contrastive decoding")).click()
    assert page.locator("#id_kind").input_value() == "cd_generate"
    assert page.locator("#id_weak_base").input_value() == str(live_stack.registered["models"]["weak_base"].pk)
    page.locator("#id_alpha").fill("0.3")
    assert page.locator("#alpha-value").inner_text() == "0.30"  # live slider value
    page.fill("#id_max_prompts", "24")
    page.fill("#id_max_new_tokens", "24")
    page.fill("#id_params_json", '{"batch_size": 1}')
    save_screenshot(page, tmp_path, "1_new_job")
    page.click("#submit-job")
    page.wait_for_url(re.compile(rf"{re.escape(base)}/jobs/\d+/$"))
    job_id = int(page.url.rstrip("/").rsplit("/", 1)[1])
    job = Job.objects.get(pk=job_id)
    assert job.config["alpha"] == 0.3 and job.config["params"]["max_prompts"] == 24

    # 3. Live updates without a reload: a marker set now survives only if the page is never reloaded.
    page.evaluate("""() => {
        window.__e2eMarker = 1; window.__seen = [];
        setInterval(() => { const s = window.congLive.stages.get('cd_generate');
                            if (s) window.__seen.push(s.done); }, 30);
    }""")
    page.wait_for_function(
        """() => window.__e2eMarker === 1
             && document.querySelectorAll('#samples .sample-card').length >= 2
             && new Set(window.__seen).size >= 2""", timeout=90_000)
    seen = page.evaluate("window.__seen")
    assert sorted(seen) == seen and seen[-1] > seen[0], seen  # the bar advanced, never went back
    card = page.locator("#samples .sample-card").first
    assert card.locator('[data-col="prompt"]').inner_text().strip() != "prompt"
    assert card.locator('[data-col="cd"] .sample-text').count() == 1  # the CD column got the response
    bar = page.locator('.stage-row[data-stage="cd_generate"] .bar')
    assert int(bar.get_attribute("aria-valuenow")) > 0
    save_screenshot(page, tmp_path, "2_job_live")

    # 4. The job finishes; the page (reloaded once by itself) shows it succeeded, events all applied in order.
    with page.expect_navigation(timeout=90_000):  # the reload that brings the server-rendered results
        page.wait_for_function("() => document.getElementById('status').textContent === 'succeeded'",
                               timeout=90_000)
    page.wait_for_function("() => window.congLive && window.congLive.stages.size > 0", timeout=20_000)
    assert page.evaluate("window.__e2eMarker") is None  # this is the reloaded page
    job.refresh_from_db()
    assert job.status == "succeeded", (job.error, live_stack.worker.tail())
    n_events = job.events.count()
    page.wait_for_function(f"() => window.congLive.lastSeq === {n_events}", timeout=20_000)
    assert page.locator('.stage-row[data-stage="cd_generate"] .bar').get_attribute("aria-valuenow") == "100"
    save_screenshot(page, tmp_path, "3_job_done")

    # 5. Review in the admin: open one of the job's pairs and reject it.
    pairs = GeneratedPair.objects.filter(job=job).order_by("prompt_index")
    assert pairs.count() == 24
    page.goto(f"{base}/admin/jobs/generatedpair/?job__id__exact={job_id}")
    assert page.locator("#result_list tbody tr").count() == 24
    save_screenshot(page, tmp_path, "4_admin_list")
    target = pairs[3]
    page.goto(f"{base}/admin/jobs/generatedpair/{target.pk}/change/")
    assert page.locator("#pair-columns .pair-col").count() == 4
    save_screenshot(page, tmp_path, "5_admin_pair")
    page.click("input[name=_reject]")
    page.wait_for_url(re.compile(r"/admin/jobs/generatedpair/"))
    target.refresh_from_db()
    assert target.review_status == "rejected" and target.reviewer.username == "ada"
    assert page.console_errors == [], page.console_errors
    assert time.monotonic() - t0 < 150
