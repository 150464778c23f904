"""The playground in a real browser (issue 16): a toy contrastive-decoding job runs to the end on a real Celery worker,
its page links to the playground, and a prompt sent there streams CD and plain pi_post side by side over the
websocket: both columns grow token by token (every change of their text is recorded as it happens) and end with
the text that non-streamed decoding of the same models gives. Screenshots land in the e2e artifacts folder."""

from __future__ import annotations

import time

import pytest

from tests.e2e.conftest import login

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.django_db(transaction=True), pytest.mark.timeout(180)]

PASSWORD = "pw-e2e-playground-123"
PROMPT = "review hike ticket boat :"
MAX_NEW = 24  # the tiny toy models hold 64 positions

# Every text the two columns show, in order: each delta replaces the column's text node, so the added nodes are the
# column's successive texts (a callback may get several at once; none is lost).
RECORD_GROWTH = """() => {
    window.__growth = {cd: [], plain: []};
    new MutationObserver(records => {
        for (const r of records) {
            const col = r.target.closest && r.target.closest('.pg-col');
            if (!col || !r.target.classList.contains('pg-text')) continue;
            for (const n of r.addedNodes) window.__growth[col.dataset.stream].push(n.textContent.length);
        }
    }).observe(document.getElementById('pg-columns'), {childList: true, subtree: true});
}"""


def _succeeded(job, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job.refresh_from_db()
        if job.status in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.3)
    assert job.status == "succeeded", (job.status, job.error)


def _expected(stack) -> dict[str, str]:
    """CD (contrastive_generate) and plain pi_post (ml.plain_sampling), greedy, not streamed."""
    from ml.contrastive import CDConfig, contrastive_generate
    from ml.modeling import load_causal_lm, load_tokenizer

    models = stack.registered["models"]
    aligned_path, base_path = models["weak_aligned"].path, models["weak_base"].path
    tok = load_tokenizer(aligned_path)
    aligned, base = load_causal_lm(aligned_path, device="cpu"), load_causal_lm(base_path, device="cpu")
    cfg = CDConfig(do_sample=False, max_new_tokens=MAX_NEW)
    [cd] = contrastive_generate(aligned=aligned, base=base, tokenizer=tok, prompts=[PROMPT], config=cfg)
    from ml.plain_sampling import sample_plain

    # Plain pi_post by its one definition (ml.plain_sampling: CD at alpha 1), as plain_generate samples it.
    [(_, plain, _)], _ = sample_plain(aligned, tok, [PROMPT], cfg, seed=0)
    return {"cd": cd.text, "plain": plain}


def test_playground_streams_cd_and_plain_side_by_side(
    live_stack, browser_page, screenshot, django_user_model, monkeypatch
):
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # Playwright's loop is on this thread; the ORM is sync
    from playwright.sync_api import expect

    from jobs import services

    page, base = browser_page, live_stack.base_url
    user = django_user_model.objects.create_user(username="pia", password=PASSWORD)
    reg = live_stack.registered
    job = services.job_create(
        user=user,
        kind="cd_generate",
        weak_base=reg["models"]["weak_base"].pk,
        weak_aligned=reg["models"]["weak_aligned"].pk,
        prompts=reg["datasets"]["train"].pk,
        params={"max_prompts": 2, "max_new_tokens": 8},
    )
    _succeeded(job)
    expected = _expected(live_stack)
    assert len(expected["cd"].split()) >= 3 and len(expected["plain"].split()) >= 3, expected

    login(page, base, "pia", PASSWORD)
    page.goto(f"{base}/jobs/{job.pk}/")
    page.click("#playground-link")
    page.wait_for_url(f"{base}/jobs/{job.pk}/playground/")
    expect(page.locator("#pg-target option")).to_have_count(1)  # a CD job trains no model: the weak pair only
    expect(page.locator("#pg-target")).to_have_value("pair")
    expect(page.locator('[data-knob="alpha"]')).to_be_visible()  # CD's knob, shown for the pair
    page.fill("#pg-prompt", PROMPT)
    page.fill('[name="max_new_tokens"]', str(MAX_NEW))
    page.uncheck('[name="do_sample"]')
    screenshot(page, "playground_1_ready")

    page.evaluate(RECORD_GROWTH)
    page.click("#pg-send")
    expect(page.locator("#pg-stop")).to_be_enabled()  # a session is running: Stop is offered, Send is not
    expect(page.locator("#pg-send")).to_be_disabled()
    screenshot(page, "playground_2_streaming")
    expect(page.locator("#pg-status")).to_have_text("done", timeout=60_000)
    screenshot(page, "playground_3_done")

    growth = page.evaluate("window.__growth")
    for stream in ("cd", "plain"):
        seen = growth[stream]
        assert len(set(seen)) >= 3 and seen == sorted(seen), (stream, seen)  # grew at least twice, never shrank
        text = page.locator(f'.pg-col[data-stream="{stream}"] .pg-text')
        expect(text).to_have_text(expected[stream])
        expect(page.locator(f'.pg-col[data-stream="{stream}"] .pg-meta')).to_contain_text("ended by")
    expect(page.locator(".pg-col h2")).to_have_text(["CD (pi_post vs pi_pre)", "plain pi_post"])
    expect(page.locator("#pg-send")).to_be_enabled()
    assert page.console_errors == [], page.console_errors

    # A knob past the job limit is refused by the server, under its field, and nothing starts.
    page.fill('[name="max_new_tokens"]', "999999")
    page.evaluate("document.querySelector('[name=max_new_tokens]').removeAttribute('max')")  # the browser's own check
    page.click("#pg-send")
    expect(page.locator('[data-error="max_new_tokens"]')).to_contain_text("at most")
    expect(page.locator("#pg-status")).to_have_text("not started")
    page.console_errors.clear()  # the refused start's HTTP 400 was logged as a failed request
    screenshot(page, "playground_4_refused")
