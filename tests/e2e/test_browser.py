"""End to end in a real browser: sign in, start a toy contrastive-decoding job from the new-job page,
watch progress and sample cards arrive live (no reload), reject one of its pairs in the admin, then train on the
rest (the admin's "train on reviewed pairs" action, a train job with pairs_from, run by the worker).

Real processes throughout: daphne (HTTP + websockets), a Celery worker, Redis, the shared test database
and headless Chromium. Screenshots land in the e2e artifacts folder (tests/e2e/conftest.py: a temporary
folder, or $E2E_ARTIFACTS).
"""

from __future__ import annotations

import json
import re

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import login

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.django_db(transaction=True), pytest.mark.timeout(240)]

PASSWORD = "pw-e2e-admin-123"


def test_job_live_in_browser_then_review_in_admin(live_stack, browser_page, screenshot, django_user_model, monkeypatch):
    # Playwright's sync API keeps an event loop on this thread; the ORM calls below are plain sync code.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    from jobs.models import GeneratedPair, Job

    django_user_model.objects.create_superuser(username="ada", password=PASSWORD)
    page, base = browser_page, live_stack.base_url

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
    # The preset's params are in the kind's setting inputs; each setting has its own (knobs: Common settings).
    assert page.locator("#id_cd_generate-p__max_prompts").input_value() == "64"
    page.fill("#id_cd_generate-p__max_prompts", "24")
    page.fill("#id_cd_generate-p__max_new_tokens", "24")
    page.fill("#id_cd_generate-p__batch_size", "1")
    screenshot(page, "1_new_job")
    page.click("#submit-job")
    page.wait_for_url(re.compile(rf"{re.escape(base)}/jobs/\d+/$"))
    job_id = int(page.url.rstrip("/").rsplit("/", 1)[1])
    job = Job.objects.get(pk=job_id)
    assert job.config["alpha"] == 0.3
    assert job.config["params"] == {"max_prompts": 24, "max_new_tokens": 24, "batch_size": 1}  # only what was filled

    # 3. Live updates without a reload: a marker set now survives only if the page is never reloaded.
    page.evaluate("""() => {
        window.__e2eMarker = 1; window.__seen = [];
        setInterval(() => { const s = window.congLive.stages.get('cd_generate');
                            if (s) window.__seen.push(s.done); }, 30);
    }""")
    page.wait_for_function(
        """() => window.__e2eMarker === 1
             && document.querySelectorAll('#samples .sample-card').length >= 2
             && new Set(window.__seen).size >= 2""",
        timeout=90_000,
    )
    seen = page.evaluate("window.__seen")
    assert sorted(seen) == seen and seen[-1] > seen[0], seen  # the bar advanced, never went back
    card = page.locator("#samples .sample-card").first
    assert card.locator('[data-col="prompt"]').inner_text().strip() != "prompt"
    assert card.locator('[data-col="cd"] .sample-text').count() == 1  # the CD column got the response
    bar = page.locator('.stage-row[data-stage="cd_generate"] .bar')
    assert int(bar.get_attribute("aria-valuenow")) > 0
    screenshot(page, "2_job_live")

    # 4. The job finishes; the page (reloaded once by itself) shows it succeeded, events all applied in order.
    with page.expect_navigation(timeout=90_000):  # the reload that brings the server-rendered results
        page.wait_for_function("() => document.getElementById('status').textContent === 'succeeded'", timeout=90_000)
    page.wait_for_function("() => window.congLive && window.congLive.stages.size > 0", timeout=20_000)
    assert page.evaluate("window.__e2eMarker") is None  # this is the reloaded page
    job.refresh_from_db()
    assert job.status == "succeeded", (job.error, live_stack.worker.tail())
    n_events = job.events.count()
    page.wait_for_function(f"() => window.congLive.lastSeq === {n_events}", timeout=20_000)
    assert page.locator('.stage-row[data-stage="cd_generate"] .bar').get_attribute("aria-valuenow") == "100"
    screenshot(page, "3_job_done")

    # 5. Review in the admin: open one of the job's pairs and reject it.
    pairs = GeneratedPair.objects.filter(job=job).order_by("prompt_index")
    assert pairs.count() == 24
    page.goto(f"{base}/admin/jobs/generatedpair/?job__id__exact={job_id}")
    assert page.locator("#result_list tbody tr").count() == 24
    screenshot(page, "4_admin_list")
    target = pairs[3]
    page.goto(f"{base}/admin/jobs/generatedpair/{target.pk}/change/")
    assert page.locator("#pair-columns .pair-col").count() == 4
    screenshot(page, "5_admin_pair")
    page.click("input[name=_reject]")
    page.wait_for_url(re.compile(r"/admin/jobs/generatedpair/"))
    target.refresh_from_db()
    assert target.review_status == "rejected" and target.reviewer.username == "ada"
    row = page.locator(f'#result_list tr:has(input[value="{target.pk}"])')
    assert "rejected" in row.locator(".pair-status").inner_text() and "by ada" in row.inner_text()
    screenshot(page, "5b_admin_after_reject")
    assert target.plain is not None  # a CD job's pair has its plain pi_post side too (issue 14)

    # 6. Train on the rest: the admin's action opens the new-job page as a train job on this job's reviewed pairs.
    page.locator(f'#result_list input[name=_selected_action][value="{target.pk}"]').check()
    page.select_option("select[name=action]", "train_on_reviewed")
    page.click("button[name=index]")
    page.wait_for_url(re.compile(rf"/jobs/new/\?pairs_from={job_id}$"))
    assert page.locator("#id_kind").input_value() == "train" and page.locator("#id_method").input_value() == "dpo"
    assert page.locator("#id_pairs_from").input_value() == str(job_id)
    models, datasets = live_stack.registered["models"], live_stack.registered["datasets"]
    for field, entry in (
        ("weak_base", models["weak_base"]),
        ("weak_aligned", models["weak_aligned"]),
        ("strong", models["strong_base"]),
        ("prompts", datasets["train"]),
    ):
        page.select_option(f"#id_{field}", str(entry.pk))
    page.select_option("#id_include_pending", "yes")  # one pair is reviewed: the pending rest only when asked
    page.fill("#id_train-p__train_max_steps", "1")
    page.fill("#id_train-p__max_eval_prompts", "2")
    page.fill("#id_train-p__max_new_tokens", "4")
    screenshot(page, "6_train_on_reviewed")
    page.click("#submit-job")
    page.wait_for_url(re.compile(rf"{re.escape(base)}/jobs/\d+/$"))
    trained = Job.objects.get(pk=int(page.url.rstrip("/").rsplit("/", 1)[1]))
    assert trained.config["pairs_from"] == {"jobs": [{"id": job_id, "kind": "cd_generate"}], "include_pending": True}
    expect(page.locator("#status")).to_have_text("succeeded", timeout=150_000)
    trained.refresh_from_db()
    assert trained.status == "succeeded", (trained.error, live_stack.worker.tail())
    from django.conf import settings

    from jobs.services.pairs import preference_rows
    from ml.io import read_jsonl

    rows = read_jsonl(settings.RUNS_DIR / str(trained.pk) / "reviewed_pairs.jsonl")
    assert rows == list(preference_rows(job=job, include_pending=True))  # the rest, as the export gives them
    assert trained.results["train_examples"] == len(rows) and target.prompt not in {r["prompt"] for r in rows}
    assert trained.results["review"][str(job_id)]["rejected"] == 1
    screenshot(page, "7_trained_on_reviewed")
    assert page.console_errors == [], page.console_errors


def test_live_page_misses_nothing_across_a_dropped_socket(
    web_stack, browser_page, django_user_model, monkeypatch, settings, redis_url
):
    """Events written while the socket is down still show up, each exactly once, in seq order."""
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    from jobs.models import Job
    from jobs.notify import notify
    from jobs.services import event_append

    settings.CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [redis_url]}}
    }
    user = django_user_model.objects.create_user(username="bo", password=PASSWORD)
    job = Job.objects.create(owner=user, kind="cd_generate", config={}, status="running", stage="cd_generate")

    def emit(type_, data):
        notify(job.pk, event_append(job_id=job.pk, type=type_, data=data))

    emit("log", {"message": "line 1 before the page"})
    page, base = browser_page, web_stack.base_url
    login(page, base, "bo", PASSWORD)
    page.goto(f"{base}/jobs/{job.pk}/")
    page.wait_for_function("() => document.getElementById('conn').textContent === 'live'", timeout=20_000)
    for i in range(2, 6):
        emit("log", {"message": f"line {i} live"})
        emit("progress", {"stage": "cd_generate", "done": i, "total": 10})
    page.wait_for_function("() => window.congLive.lastSeq === 9", timeout=20_000)

    page.evaluate("window.congLive.dropSocket()")
    page.wait_for_function("() => !window.congLive.socketOpen", timeout=10_000)
    for i in range(6, 11):  # written while the page has no socket
        emit("log", {"message": f"line {i} while down"})
        emit("progress", {"stage": "cd_generate", "done": i, "total": 10})
    emit("sample", {"stage": "cd_generate", "prompt": "review hotel :", "response": "it was great"})
    page.wait_for_function("() => window.congLive.lastSeq === 20 && window.congLive.socketOpen", timeout=30_000)

    log = page.locator("#log").inner_text()
    lines = [ln.split("  ", 1)[1] for ln in log.splitlines() if "line " in ln]
    assert lines == ["line 1 before the page"] + [f"line {i} live" for i in range(2, 6)] + [
        f"line {i} while down" for i in range(6, 11)
    ]
    assert page.locator('.stage-row[data-stage="cd_generate"] .bar').get_attribute("aria-valuenow") == "100"
    assert page.locator("#samples .sample-card").count() == 1

    # A reload starts from the embedded events and catches up the rest: still each once.
    emit("log", {"message": "line 11 after reload"})
    page.reload()
    page.wait_for_function("() => window.congLive.lastSeq === 21", timeout=20_000)
    assert page.locator("#log").inner_text().count("line ") == 11

    # Cancel posts to the REST API with the session and the CSRF token; the status event follows.
    page.once("dialog", lambda d: d.accept())
    page.click("#cancel-form button")
    page.wait_for_function("() => document.getElementById('status').textContent === 'cancelling'", timeout=10_000)
    page.wait_for_function(
        "() => document.getElementById('log').textContent.includes('cancel requested')", timeout=10_000
    )
    job.refresh_from_db()
    assert job.status == "cancelling" and job.cancel_requested
    assert page.locator("#cancel-form").is_hidden()
    assert page.console_errors == [], page.console_errors


def _points(page, selector: str) -> list[int]:
    """The points per series of the chart at ``selector`` (static/jobs/charts.js draws on a canvas and says what
    it drew in data-series), once it is drawn."""
    expect(page.locator(f"{selector} canvas").first).to_be_visible()
    return [s["points"] for s in json.loads(page.locator(selector).get_attribute("data-series") or "[]")]


def test_results_and_compare_pages_draw_tables_and_plots(
    web_stack, browser_page, screenshot, django_user_model, monkeypatch
):
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    from jobs.models import Job

    user = django_user_model.objects.create_user(username="cy", password=PASSWORD)
    methods = {
        name: {
            "label": label,
            "gold_mean": g,
            "gold_ci": [g - 0.05, g + 0.05],
            "valid_rate": v,
            "implicit_mean": imp,
            "n": 16,
            "win_rate_vs_weak_sft": w,
        }
        for name, label, g, v, imp, w in [
            ("weak_sft", "WeakSFT", 0.31, 0.94, -0.4, 0.5),
            ("cong_s", "ConG-S", 0.44, 1.0, 0.9, 0.66),
            ("cong", "ConG", 0.52, 1.0, 1.4, 0.75),
        ]
    }
    a = Job.objects.create(
        owner=user,
        kind="cong",
        status="succeeded",
        config={"alpha": 0.4, "methods": list(methods)},
        results={"methods": methods},
    )
    sweep = [
        {
            "alpha": x,
            "name": f"a{x:.2f}",
            "gold_mean": 0.2 + 0.5 * x * (1.2 - x),
            "implicit_mean": 3 - 2.5 * x,
            "valid_rate": 1.0,
        }
        for x in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    ]
    b = Job.objects.create(owner=user, kind="alpha_sweep", status="succeeded", config={}, results={"alphas": sweep})
    page, base = browser_page, web_stack.base_url
    login(page, base, "cy", PASSWORD)

    page.goto(f"{base}/jobs/{a.pk}/")
    assert page.locator("#results tbody tr").count() == 3
    assert _points(page, "#scatter") == [3]  # implicit vs gold, one point per method
    screenshot(page, "6_results_pipeline")
    page.goto(f"{base}/jobs/{b.pk}/")
    assert page.locator("#results tbody tr").count() == 6
    assert _points(page, "#sweep-gold") == [6]  # one series, every alpha (tests/e2e/test_charts.py: the rest)
    assert _points(page, "#sweep-implicit") == [6]
    screenshot(page, "7_results_sweep")

    page.goto(f"{base}/jobs/compare/?a={a.pk}&b={b.pk}")
    assert page.locator("#merged tbody tr").count() == 9  # 3 methods + 6 alphas
    assert page.locator(".side").count() == 2
    assert page.locator('.sweep[data-side="b"] canvas').count() == 2  # gold and implicit
    assert page.locator('.sweep[data-side="a"]').count() == 0  # no sweep in job A: no empty charts
    screenshot(page, "8_compare")
    assert page.console_errors == [], page.console_errors


def test_new_job_settings_fields_and_the_spec_table(
    web_stack, browser_page, screenshot, django_user_model, monkeypatch
):
    """The settings inputs follow the kind and the methods; a bad value comes back on its input; the job page
    shows the spec with the changed values highlighted."""
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    from jobs.models import Job

    django_user_model.objects.create_user(username="di", password=PASSWORD)
    page, base = browser_page, web_stack.base_url
    login(page, base, "di", PASSWORD)
    page.goto(f"{base}/jobs/new/")
    page.get_by_role("button", name=re.compile("full ConG pipeline")).click()
    assert page.locator("#id_kind").input_value() == "cong"
    cong, cd = page.locator("#settings-cong"), page.locator("#settings-cd_generate")
    assert cong.is_visible() and not cd.is_visible()
    assert page.evaluate("document.getElementById('settings-cd_generate').disabled") is True  # so not sent
    # Stage groups follow the methods: DPO and self-sampling run only for ConG.
    dpo = cong.locator('details[data-group="dpo"]')
    page.locator("input[name=methods][value=cong]").check()
    assert dpo.is_visible()
    page.locator("input[name=methods][value=cong]").uncheck()
    assert not dpo.is_visible() and cong.locator('details[data-group="sft"]').is_visible()
    sft = cong.locator('details[data-group="sft"]')
    sft.locator("summary").click()
    page.fill("#id_cong-p__sft__num_train_epochs", "3")
    page.select_option("#id_cong-p__sft__gradient_checkpointing", "true")
    assert sft.locator("[data-filled]").inner_text() == "2 set"
    assert page.locator("#id_cong-p__sft__learning_rate").get_attribute("placeholder") == "1e-05"
    # The memory panel follows the form: an estimate per training stage, then the form's error once it has one.
    expect(page.locator("#memory-text")).to_contain_text("per GPU", timeout=20_000)
    assert "sft_cong_s" in page.locator("#memory-stages").inner_text()
    cong.locator('details[data-group="cd_generate"] summary').click()
    page.fill("#id_cong-p__cd_generate__temperature", "-1")
    expect(page.locator("#memory-text")).to_contain_text("Fix the form", timeout=20_000)
    assert page.locator("#memory-stages").is_hidden()
    screenshot(page, "9_new_job_settings")
    page.click("#submit-job")
    page.wait_for_load_state()
    err = page.locator('ul.errorlist[data-field="p__cd_generate__temperature"]')
    assert err.is_visible() and "temperature must be > 0" in err.inner_text()
    assert "params.cd_generate.temperature" in page.locator("#form-errors").inner_text()
    assert page.locator("#id_cong-p__sft__num_train_epochs").input_value() == "3"  # what was typed is kept
    screenshot(page, "9b_new_job_error")
    assert not Job.objects.exists()
    assert page.console_errors == [f"HTTP 400 {base}/jobs/new/"], page.console_errors  # the form, re-rendered
    page.console_errors.clear()
    page.fill("#id_cong-p__cd_generate__temperature", "")
    page.click("#submit-job")
    page.wait_for_url(re.compile(rf"{re.escape(base)}/jobs/\d+/$"))
    job = Job.objects.get()
    assert job.config["params"] == {"sft": {"num_train_epochs": 3.0, "gradient_checkpointing": True}}

    spec = page.locator("#spec")
    assert spec.locator('#spec-top tr[data-field="kind"]').inner_text().split() == ["kind", "cong"]
    stage = spec.locator('details[data-stage="sft"]')
    stage.locator("summary").click()
    row = stage.locator('tr[data-field="num_train_epochs"]')
    assert row.get_attribute("class") == "changed" and row.locator("td").nth(1).inner_text() == "3.0"
    assert "sft.num_train_epochs = 3.0" in page.inner_text("#request-params")  # the request, as key = value lines
    screenshot(page, "10_job_spec")
    assert page.console_errors == [], page.console_errors


def test_api_docs_render_with_the_network_cut_off(web_stack, browser_page, screenshot):
    """Swagger UI (/api/v1/docs/) and Redoc (/api/v1/redoc/) draw the API's operations while every request to
    a host other than this machine is refused: their files come from /static/ (drf_spectacular_sidecar), and
    their Content-Security-Policy lets them run (a refusal would be a console error)."""
    import ipaddress
    from urllib.parse import urlsplit

    page, base = browser_page, web_stack.base_url
    offsite: list[str] = []

    def local_only(route):
        url = urlsplit(route.request.url)
        host = (url.hostname or "").strip("[]")
        loopback = host == "localhost"
        if not loopback:
            try:
                loopback = ipaddress.ip_address(host).is_loopback
            except ValueError:
                pass
        if url.scheme in ("http", "https", "ws", "wss") and not loopback:
            offsite.append(route.request.url)
            route.abort()
        else:
            route.continue_()

    page.route("**/*", local_only)
    page.goto(f"{base}/api/v1/docs/")
    jobs = page.locator('.opblock-summary-path[data-path="/api/v1/jobs/"]')
    jobs.first.wait_for(timeout=30_000)
    assert jobs.count() == 2  # GET (list) and POST (create)
    assert page.locator(".opblock").count() > 10  # every operation, not only the first
    screenshot(page, "11_api_docs_swagger")
    assert page.console_errors == [], page.console_errors

    page.goto(f"{base}/api/v1/redoc/")
    page.locator('[data-section-id="tag/jobs"]').first.wait_for(timeout=30_000)
    assert page.get_by_text("/api/v1/jobs/", exact=True).count() >= 1
    screenshot(page, "12_api_docs_redoc")
    assert offsite == [], offsite
    # Redoc's sidebar shows Redocly's logo from Redocly's CDN (built into its bundle, no option turns it off):
    # the page's policy refuses it, Redoc drops the broken image, and no request leaves the machine. That
    # refusal is the one console error allowed.
    logo = "https://cdn.redoc.ly/redoc/logo-mini.svg"
    assert all(logo in e and "Content Security Policy" in e for e in page.console_errors), page.console_errors
