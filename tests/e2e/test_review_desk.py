"""The review desk in a real browser, by keyboard only (issue 18): approve one pair, reject one, edit one (the
edit box opens with the current text; new text typed, Ctrl+Enter saves it), the desk moving to the next pending
pair each time and the per-job counts following; then the rows in the database say the same. Last, the rest
approved in bulk under a filter, after the confirmation. No worker: the pairs are stored as a finished job leaves
them."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import login

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.django_db(transaction=True), pytest.mark.timeout(150)]

PASSWORD = "pw-e2e-review-123"
GUIDELINES = "Approve on-topic reviews. Reject off-topic ones. Fix typos by editing."
NEW_TEXT = "a fixed and much clearer review"
# prompt_index -> (prompt, chosen, rejected, plain, implicit sum, gold, review status)
ROWS = {
    0: ("review hotel :", "great stay , clean rooms", None, "plain hotel text", 1.23456, 0.8, "pending"),
    1: ("review movie :", "already approved one", "weak movie text", None, 0.5, 0.5, "approved"),
    2: ("review book :", "off topic rambling", "weak book text", "plain book text", -0.25, 0.1, "pending"),
    3: ("review song :", "a nise tune wiht typos", None, None, 2.0, None, "pending"),
    4: ("review food :", "tasty dishes", None, "plain food text", 0.75, 0.6, "pending"),
}


def test_review_three_pairs_by_keyboard(web_stack, browser_page, screenshot, django_user_model, monkeypatch):
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    from playwright.sync_api import expect

    from jobs.models import GeneratedPair, Job

    user = django_user_model.objects.create_user(username="rita", password=PASSWORD)
    job = Job.objects.create(
        owner=user, kind="cd_generate", config={}, status="succeeded", review_guidelines=GUIDELINES
    )
    for i, (prompt, chosen, rejected, plain, implicit, gold, status) in ROWS.items():
        GeneratedPair.objects.create(
            job=job,
            prompt_index=i,
            prompt=prompt,
            chosen=chosen,
            rejected=rejected,
            plain=plain,
            implicit_reward_sum=implicit,
            implicit_reward_mean=implicit / 4,
            gold_reward=gold,
            review_status=status,
        )
    page, base = browser_page, web_stack.base_url
    login(page, base, "rita", PASSWORD)
    page.goto(f"{base}/jobs/{job.pk}/review/")

    def count(state: str):
        return page.locator(f'[data-count="{state}"]')

    def side(name: str):
        return page.locator(f'[data-side="{name}"] > .review-text')

    # Opens on the first pending pair: both sides, the missing one labelled, rewards to 3 decimals.
    expect(page.locator("#pair-index")).to_have_text("0")
    expect(page.locator("#guidelines-text")).to_have_text(GUIDELINES)
    expect(count("pending")).to_have_text("4")
    expect(side("chosen")).to_have_text(ROWS[0][1])
    expect(side("rejected")).to_have_text("not generated")
    expect(side("plain")).to_have_text("plain hotel text")
    expect(page.locator("#pair-implicit-sum")).to_have_text("1.235")
    expect(page.locator("#pair-implicit-mean")).to_have_text("0.309")
    expect(page.locator("#pair-gold")).to_have_text("0.800")
    expect(page.locator("#review-legend")).to_contain_text("next pending pair")
    screenshot(page, "review_desk_1_start")

    # a: approve pair 0; the desk skips 1 (approved already) and shows 2.
    page.keyboard.press("a")
    expect(count("approved")).to_have_text("2")
    expect(count("pending")).to_have_text("3")
    expect(page.locator("#pair-index")).to_have_text("2")
    expect(page.locator("#review-msg")).to_have_text("#0 approved")

    # r: reject pair 2; on to 3, whose gold reward is missing.
    page.keyboard.press("r")
    expect(count("rejected")).to_have_text("1")
    expect(count("pending")).to_have_text("2")
    expect(page.locator("#pair-index")).to_have_text("3")
    expect(page.locator("#pair-gold")).to_have_text("-")

    # e: the edit box opens holding the chosen text; typed over, Ctrl+Enter saves it as edited.
    page.keyboard.press("e")
    box = page.locator("#edit-text")
    expect(box).to_be_focused()
    expect(box).to_have_value(ROWS[3][1])
    page.keyboard.press("Control+a")
    page.keyboard.type(NEW_TEXT)
    screenshot(page, "review_desk_2_editing")
    page.keyboard.press("Control+Enter")
    expect(count("edited")).to_have_text("1")
    expect(count("pending")).to_have_text("1")
    expect(page.locator("#pair-index")).to_have_text("4")
    expect(box).to_be_hidden()

    # k goes back to the edited pair (its edit shown); e reopens the box with the edit; Esc closes it unsaved.
    page.keyboard.press("k")
    expect(page.locator("#pair-index")).to_have_text("3")
    expect(page.locator("#pair-status")).to_have_text("edited")
    expect(page.locator("#pair-edited .review-text")).to_have_text(NEW_TEXT)
    page.keyboard.press("e")
    expect(box).to_have_value(NEW_TEXT)
    page.keyboard.press("Escape")
    expect(box).to_be_hidden()
    # n: the next pending pair.
    page.keyboard.press("n")
    expect(page.locator("#pair-index")).to_have_text("4")
    expect(count("pending")).to_have_text("1")
    screenshot(page, "review_desk_3_done")

    rows = {p.prompt_index: p for p in GeneratedPair.objects.filter(job=job).select_related("reviewer")}
    assert {i: p.review_status for i, p in rows.items()} == {
        0: "approved",
        1: "approved",
        2: "rejected",
        3: "edited",
        4: "pending",
    }
    assert rows[3].edited_text == NEW_TEXT and rows[3].chosen == ROWS[3][1]
    assert all(rows[i].reviewer == user and rows[i].reviewed_at for i in (0, 2, 3))

    # Filter to what is still pending, then approve all of it: the question names the count first.
    page.select_option("#review-filters select[name=status]", "pending")
    page.click("#review-filters button[type=submit]")
    expect(page.locator("#bulk-count")).to_have_text("(1 matches the filter)")
    page.click('[data-bulk="approve"]')
    expect(page.locator("#bulk-question")).to_have_text("Approve all 1 pair matching the filter?")
    page.click("#bulk-yes")
    expect(count("pending")).to_have_text("0")
    expect(count("approved")).to_have_text("3")
    expect(page.locator("#review-none")).to_have_text("No pair matches this filter.")
    screenshot(page, "review_desk_4_bulk")
    assert GeneratedPair.objects.get(job=job, prompt_index=4).review_status == "approved"
    assert not page.console_errors, page.console_errors
