"""Dataset uploads in every format (docs/DATA.md "What you bring"): the API's upload stores each format and shape as
the JSONL the stages read, the preview answers the same rows and stores nothing, errors are 400s naming the row and
the column; and the /datasets/new/ page does the same through the same services (Django's test client)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rest_framework.test import APIClient

from jobs.models import Dataset
from ml.data_formats import FORMATS, PREVIEW_ROWS
from ml.io import read_jsonl
from tests.ml._data_files import FORMAT_FILES, SHAPE_CASES, SHAPE_NAMES, encode

pytestmark = pytest.mark.django_db


def _client(user) -> APIClient:
    c = APIClient()
    c.force_authenticate(user)
    return c


def _file(fmt: str, rows: list[dict], name: str | None = None) -> io.BytesIO:
    f = io.BytesIO(encode(fmt, rows))
    f.name = name or FORMAT_FILES[fmt]
    return f


def _stored(pk: int) -> list[dict]:
    return read_jsonl(Dataset.objects.get(pk=pk).path)


def _files_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


@pytest.mark.parametrize("shape", ["prompt", "preferences_messages", "messages", "sharegpt", "alpaca"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_upload_stores_every_format_as_the_jsonl_the_stages_read(user, model_root, fmt, shape):
    kind, rows, expected = SHAPE_CASES[shape]
    res = _client(user).post(
        "/api/v1/datasets/", {"name": f"{fmt}-{shape}", "kind": kind, "file": _file(fmt, rows)}, format="multipart"
    )
    assert res.status_code == 201, res.json()
    body = res.json()
    assert (body["format"], body["row_count"], body["kind"]) == (fmt, len(expected), kind)
    assert _stored(body["id"]) == expected
    assert Dataset.objects.get(pk=body["id"]).format == fmt


def test_upload_with_a_mapping_and_an_explicit_format(user, model_root):
    rows = [{"question": "2+2?", "answer": "4"}, {"question": "1+1?", "answer": "2"}]
    form = {
        "name": "qa",
        "format": "csv",
        "mapping": json.dumps({"prompt": "question", "response": "answer"}),
        "file": _file("csv", rows, name="qa.txt"),  # the name says nothing: the format field does
    }
    res = _client(user).post("/api/v1/datasets/", form, format="multipart")
    assert res.status_code == 201, res.json()
    assert _stored(res.json()["id"]) == [{"prompt": "2+2?", "response": "4"}, {"prompt": "1+1?", "response": "2"}]


@pytest.mark.parametrize("fmt", FORMATS)
def test_preview_answers_the_first_rows_and_stores_nothing(user, model_root, settings, fmt):
    rows = [{"instruction": f"task {i}", "input": "", "output": f"done {i}"} for i in range(PREVIEW_ROWS + 3)]
    res = _client(user).post("/api/v1/datasets/preview/", {"file": _file(fmt, rows)}, format="multipart")
    assert res.status_code == 200, res.json()
    body = res.json()
    assert (body["format"], body["shape"], body["row_count"]) == (fmt, "alpaca", PREVIEW_ROWS + 3)
    assert body["rows"] == [{"prompt": f"task {i}", "response": f"done {i}"} for i in range(PREVIEW_ROWS)]
    assert body["columns"] == ["instruction", "input", "output"]
    assert not Dataset.objects.exists()
    assert _files_in(Path(settings.VAR_DIR) / "datasets") == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_errors_are_400s_naming_row_and_column(user, model_root, fmt):
    rows = [{"prompt": f"p{i}", "chosen": f"c{i}", "rejected": f"r{i}"} for i in range(5)]
    rows[3]["chosen"] = ""
    c = _client(user)
    for url, extra in (("/api/v1/datasets/", {"name": "bad"}), ("/api/v1/datasets/preview/", {})):
        form = {**extra, "kind": "preferences", "file": _file(fmt, rows)}
        res = c.post(url, form, format="multipart")
        assert res.status_code == 400
        assert res.json() == {"file": ["row 4, column 'chosen': is empty; every row needs text here"]}
    assert not Dataset.objects.exists()


def test_error_fields(user, model_root):
    c = _client(user)
    rows = [{"q": "a"}]

    def post(**form):
        return c.post("/api/v1/datasets/preview/", {"file": _file("jsonl", rows), **form}, format="multipart")

    res = post(mapping=json.dumps({"prompt": "question"}))
    assert res.status_code == 400 and "'question'" in res.json()["mapping"][0] and "'q'" in res.json()["mapping"][0]
    res = post(mapping="{not json")
    assert res.status_code == 400 and "mapping must be a JSON object" in res.json()["mapping"][0]
    res = post(format="xlsx")
    assert res.status_code == 400 and "format" in res.json()
    res = post(kind="preferences", mapping='{"prompt": "q"}')
    assert res.status_code == 400 and "'chosen' and 'rejected'" in res.json()["file"][0]
    res = c.post(
        "/api/v1/datasets/preview/", {"file": _file("jsonl", [{"prompt": "a"}], name="up")}, format="multipart"
    )
    assert res.status_code == 200 and res.json()["format"] == "jsonl"  # told by its first character


def test_wrong_types_in_json_name_row_and_column(user, model_root):
    rows = [{"prompt": "a", "chosen": "c", "rejected": "r"}] * 6 + [{"prompt": "b", "chosen": 3, "rejected": "r"}]
    res = _client(user).post(
        "/api/v1/datasets/", {"name": "x", "kind": "preferences", "file": _file("json", rows)}, format="multipart"
    )
    assert res.json() == {"file": ["row 7, column 'chosen': expected a string or a list of messages, got int"]}


def test_upload_limits_apply_to_every_format(user, model_root, settings):
    settings.UPLOAD_MAX_BYTES = 200
    rows = [{"prompt": f"prompt number {i}"} for i in range(40)]
    res = _client(user).post("/api/v1/datasets/", {"name": "big", "file": _file("parquet", rows)}, format="multipart")
    assert res.status_code == 400 and "upload limit of 200 bytes" in res.json()["file"][0]
    assert not Dataset.objects.exists()


# --- the page --------------------------------------------------------------------------------------------------
def _page_form(fmt: str, rows: list[dict], **fields) -> dict:
    return {"kind": "prompts", "format": "", "name": "", "gold": "", "file": _file(fmt, rows), **fields}


def test_page_is_linked_from_the_nav(client, user):
    client.force_login(user)
    page = client.get("/")
    assert b'href="/datasets/new/"' in page.content
    res = client.get("/datasets/new/")
    assert res.status_code == 200 and b'id="dataset-form"' in res.content and b"dataset_new.js" in res.content


def test_page_preview_without_javascript_renders_the_rows(client, user, model_root):
    client.force_login(user)
    _, rows, expected = SHAPE_CASES["sharegpt"]
    res = client.post("/datasets/new/", _page_form("parquet", rows, action="preview"))
    assert res.status_code == 200
    html = res.content.decode()
    assert f"{len(expected)} rows, read as PARQUET" in html and "Knock knock" in html and "Tell a joke" in html
    assert not Dataset.objects.exists()


def test_page_preview_as_json_for_the_script(client, user, model_root):
    client.force_login(user)
    kind, rows, expected = SHAPE_CASES["preferences_messages"]
    form = _page_form("arrow", rows, kind=kind, action="preview")
    res = client.post("/datasets/new/", form, HTTP_ACCEPT="application/json")
    assert res.status_code == 200
    preview = res.json()["preview"]
    assert preview["rows"] == expected and preview["shape"] == SHAPE_NAMES["preferences_messages"]
    assert not Dataset.objects.exists()
    # An error comes back keyed by the field, the message naming row and column.
    rows = [dict(r) for r in rows]
    rows[1] = {**rows[1], "chosen": [{"role": "user", "content": "2+2?"}, {"role": "robot", "content": "4"}]}
    res = client.post(
        "/datasets/new/", _page_form("jsonl", rows, kind=kind, action="preview"), HTTP_ACCEPT="application/json"
    )
    assert res.status_code == 400
    assert res.json()["errors"]["file"][0].startswith("row 2, column 'chosen': message 2 has role 'robot'")


def test_page_save_with_mapping_and_gold(client, user, model_root):
    client.force_login(user)
    rows = [{"question": "2+2?", "answer": "4"}, {"question": "1+1?", "answer": "2"}]
    form = _page_form("csv", rows, name="qa", gold="toy:review", map_prompt="question", map_response="answer")
    res = client.post("/datasets/new/", {**form, "action": "save"})
    assert res.status_code == 302 and res["Location"] == "/jobs/new/"
    ds = Dataset.objects.get(name="qa")
    assert (ds.owner, ds.format, ds.row_count, ds.gold) == (user, "csv", 2, "toy:review")
    assert read_jsonl(ds.path) == [{"prompt": "2+2?", "response": "4"}, {"prompt": "1+1?", "response": "2"}]
    assert "saved: 2 prompts rows from CSV" in client.get("/jobs/new/").content.decode()


def test_page_save_errors_stay_on_the_page(client, user, model_root):
    client.force_login(user)
    rows = [{"question": "a"}]
    res = client.post("/datasets/new/", {**_page_form("jsonl", rows, name="x"), "action": "save"})
    assert res.status_code == 400 and "missing field" in res.content.decode()
    res = client.post("/datasets/new/", {**_page_form("jsonl", rows, map_prompt="nope"), "action": "save"})
    assert res.status_code == 400 and "give the dataset a name" in res.content.decode()
    res = client.post("/datasets/new/", {**_page_form("jsonl", rows, name="x", map_prompt="nope"), "action": "save"})
    assert res.status_code == 400 and "mapping names column(s) &#x27;nope&#x27;" in res.content.decode()
    assert not Dataset.objects.exists()


@pytest.mark.parametrize(
    "name,payload,form,field",
    [
        ("d.csv", b"prompt\n", {}, "file"),  # a header and no rows
        ("d.csv", b'prompt,x\n"a,1\n', {}, "file"),  # an unclosed quote
        ("d.csv", b"\x89PNG\r\n\x1a\n\x00\x00", {}, "file"),  # not text
        ("d.bin", b"\x00\x01\x02", {}, "format"),  # no extension, no known first bytes
        ("d.bin", b"\x00\x01\x02", {"format": "arrow"}, "file"),
        ("d.json", b"{}", {}, "file"),  # one object, no rows
        ("d.json", b'{"prompt": 1}', {}, "file"),
        ("d.jsonl", b'{"prompt": "a"}', {"mapping": "[1]"}, "mapping"),
        ("d.jsonl", b'{"prompt": "a"}', {"mapping": '{"prompt": 5}'}, "mapping"),
        ("d.jsonl", b'{"prompt": "a"}', {"mapping": "[" * 200 + "]" * 200}, "mapping"),
        ("d.jsonl", b'{"prompt": {"nested": "x"}}', {}, "file"),
        ("d.jsonl", b'{"messages": "not a list"}', {}, "file"),
        ("d.jsonl", b'{"messages": [{"role": "user"}]}', {}, "file"),
    ],
)
def test_odd_files_are_400s_never_500s(user, model_root, name, payload, form, field):
    f = io.BytesIO(payload)
    f.name = name
    res = _client(user).post("/api/v1/datasets/preview/", {"file": f, **form}, format="multipart")
    assert res.status_code == 400 and list(res.json()) == [field], res.content[:400]
