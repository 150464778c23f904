"""The new-dataset page in headless Chromium: Preview shows the first rows as they will be stored without leaving
the page (static/jobs/dataset_new.js, under the page's CSP), an error names the row and the column under the file
field, and Save stores the file still chosen."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import login
from tests.ml._data_files import SHAPE_CASES, encode

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.django_db(transaction=True), pytest.mark.timeout(240)]

PASSWORD = "pw-e2e-data-123"


def test_preview_then_save(web_stack, browser_page, screenshot, django_user_model, monkeypatch):
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # Playwright's loop is on this thread; the ORM is sync
    from jobs.models import Dataset

    user = django_user_model.objects.create_user(username="du", password=PASSWORD)
    page, base = browser_page, web_stack.base_url
    login(page, base, "du", PASSWORD)
    page.get_by_role("link", name="New dataset").click()
    expect(page).to_have_url(f"{base}/datasets/new/")

    # A chat file with a bad role on row 2: the error comes back under the file field, the page stays.
    bad = [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}] * 2
    bad[1] = {"messages": [{"role": "user", "content": "Hi"}, {"role": "robot", "content": "beep"}]}
    page.set_input_files(
        "#id_file", {"name": "chat.jsonl", "mimeType": "application/json", "buffer": encode("jsonl", bad)}
    )
    page.click("#preview-btn")
    err = page.locator('#field-file ul.errorlist[data-field="file"]')
    expect(err).to_contain_text("row 2, column 'messages': message 2 has role 'robot'")
    expect(page.locator("#preview-panel")).to_be_hidden()

    # ShareGPT in Parquet: the preview shows the rows as stored; the file stays chosen.
    _, rows, expected = SHAPE_CASES["sharegpt"]
    page.set_input_files(
        "#id_file", {"name": "sg.parquet", "mimeType": "application/octet-stream", "buffer": encode("parquet", rows)}
    )
    page.click("#preview-btn")
    expect(page.locator("#preview-summary")).to_contain_text(f"{len(expected)} rows, read as PARQUET")
    expect(page.locator("#preview-table tr")).to_have_count(1 + len(expected))
    expect(page.locator("#preview-table")).to_contain_text("Knock knock")
    expect(err).to_have_count(0)  # the earlier error is gone
    assert page.url == f"{base}/datasets/new/" and not Dataset.objects.filter(owner=user).exists()
    screenshot(page, "dataset-preview")

    page.fill("#id_name", "jokes")
    page.click("#save-btn")
    expect(page).to_have_url(f"{base}/jobs/new/")
    expect(page.locator("ul.messages")).to_contain_text("Dataset 'jokes' saved: 2 prompts rows from PARQUET")
    ds = Dataset.objects.get(name="jokes")
    assert (ds.owner_id, ds.format, ds.row_count) == (user.pk, "parquet", 2)
    # The one 400 is the bad file's preview, on purpose; nothing else failed (no CSP refusal, no script error).
    assert page.console_errors == [f"HTTP 400 {base}/datasets/new/"], page.console_errors
