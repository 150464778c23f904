"""The new-job form as a new user meets it, in headless Chromium: the alpha box and its slider move together,
the Kind select shows its whole label, and one bad submit brings every error back at once, each next to its own
field (a setting's on its input, a model's on its select, alpha's under the box still holding what was typed)."""

from __future__ import annotations

import re

import pytest

from tests.e2e.conftest import login

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.django_db(transaction=True), pytest.mark.timeout(240)]

PASSWORD = "pw-e2e-form-123"


def _errors(page, field: str) -> str:
    """The error list under a field (data-field is the input's name), which must sit inside its field's box."""
    err = page.locator(f'ul.errorlist[data-field="{field}"]')
    assert err.count() == 1 and err.is_visible(), field
    return err.inner_text()


def test_alpha_box_and_every_error_next_to_its_field(
    web_stack, browser_page, screenshot, django_user_model, monkeypatch
):
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # Playwright's loop is on this thread; the ORM is sync
    from jobs.models import Job

    django_user_model.objects.create_user(username="nu", password=PASSWORD)
    page, base = browser_page, web_stack.base_url
    login(page, base, "nu", PASSWORD)
    page.goto(f"{base}/jobs/new/")

    # The Kind select is as wide as its longest label (nothing cut off), measured with the select's own font.
    fits = page.evaluate("""() => {
        const el = document.getElementById("id_kind"), cs = getComputedStyle(el);
        const ctx = document.createElement("canvas").getContext("2d");
        ctx.font = `${cs.fontWeight} ${cs.fontSize} ${cs.fontFamily}`;
        const text = Math.max(...Array.from(el.options).map(o => ctx.measureText(o.text).width));
        return {text, box: el.clientWidth - parseFloat(cs.paddingLeft) - parseFloat(cs.paddingRight)};
    }""")
    assert fits["box"] >= fits["text"], fits

    # Method labels are words, not identifiers.
    methods = page.locator("#field-methods").inner_text()
    assert "Strong (untrained)" in methods and "ConG-S" in methods and "strong_base" not in methods

    # alpha: any value in [0, 1] in the box moves the slider; the slider fills the box.
    page.get_by_role("button", name=re.compile("full ConG pipeline")).click()
    box, slider = page.locator("#id_alpha"), page.locator("#alpha-slider")
    box.fill("0.37")
    assert slider.input_value() == "0.37"
    slider.fill("0.8")
    assert box.input_value() == "0.8"
    box.fill("1.5")
    assert slider.input_value() == "1"  # at its end; the box keeps what was typed

    # A bad submit: alpha out of range, a job-level setting over the server's limit (the service's error keyed
    # params.max_prompts), no strong model, no method (the form's own error: the service's come back with it).
    # Every one comes back, each on its own field.
    strong_pk = page.locator("#id_strong").input_value()
    assert strong_pk
    page.select_option("#id_strong", "")
    page.locator("input[name=methods]").evaluate_all("els => els.forEach(e => { e.checked = false; })")
    page.fill("#id_cong-p__max_prompts", "200000")
    page.click("#submit-job")
    page.wait_for_load_state()
    screenshot(page, "new_job_form_errors")

    assert "between 0 and 1" in _errors(page, "alpha")
    assert page.locator("#field-alpha ul.errorlist").count() == 1
    assert box.input_value() == "1.5" and slider.input_value() == "1"
    assert "100000" in _errors(page, "p__max_prompts").replace(",", "").replace("_", "")
    strong = _errors(page, "strong")
    assert "needs this model" in strong and "strong model" in strong and " id" not in strong
    assert "at least one method" in _errors(page, "methods")
    assert page.locator("#field-strong ul.errorlist").count() == 1
    assert page.locator("#field-methods ul.errorlist").count() == 1
    assert not Job.objects.exists()
    page.console_errors.clear()

    # Fixed, the same form starts the job with the alpha typed in the box.
    page.select_option("#id_strong", strong_pk)
    page.locator("input[name=methods][value=cong_s]").check()
    page.fill("#id_cong-p__max_prompts", "")
    box.fill("0.37")
    page.click("#submit-job")
    page.wait_for_url(re.compile(rf"{re.escape(base)}/jobs/\d+/$"))
    job = Job.objects.get()
    assert job.config["alpha"] == 0.37 and job.config["methods"] == ["cong_s"]
