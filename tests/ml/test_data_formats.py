"""ml.data_formats: every format (JSONL, JSON, CSV, Parquet, Arrow) x every shape (prompt, prompt/response,
preferences as strings and as UltraFeedback message lists, OpenAI messages, ShareGPT conversations, Alpaca) is read
through `datasets` into the rows the stages read; the column mapping; the preview; errors that name the row and the
column. The files are written by the tests (tests/ml/_data_files.py)."""

from __future__ import annotations

import json

import pytest

from ml.data_formats import FORMATS, PREVIEW_ROWS, DataFormatError, load_rows, preview, render_turns

from ._data_files import FORMAT_FILES, SHAPE_CASES, SHAPE_NAMES, encode


def _file(tmp_path, fmt, rows, name=None):
    path = tmp_path / (name or FORMAT_FILES.get(fmt, "d.arrow"))
    path.write_bytes(encode(fmt, rows))
    return path


def _error(path, **kw) -> DataFormatError:
    with pytest.raises(DataFormatError) as info:
        load_rows(path, **kw)
    return info.value


@pytest.mark.parametrize("shape", list(SHAPE_CASES))
@pytest.mark.parametrize("fmt", [*FORMATS, "arrow_stream"])
def test_every_format_and_shape_parses_to_the_stored_rows(tmp_path, fmt, shape):
    kind, rows, expected = SHAPE_CASES[shape]
    parsed = load_rows(_file(tmp_path, fmt, rows), kind=kind)  # the format from the extension
    assert parsed.rows == expected
    assert parsed.shape == SHAPE_NAMES[shape]
    assert parsed.format == ("arrow" if fmt == "arrow_stream" else fmt)
    assert parsed.columns == list(dict.fromkeys(k for r in rows for k in r))


@pytest.mark.parametrize("fmt", FORMATS)
def test_format_from_content_when_the_name_says_nothing(tmp_path, fmt):
    _, rows, expected = SHAPE_CASES["prompt_response"]
    path = _file(tmp_path, fmt, rows, name="upload.bin")
    if fmt == "csv":  # text that is not JSON: the format must be given
        assert _error(path).field == "format"
        assert load_rows(path, "csv").rows == expected
    else:
        assert load_rows(path).rows == expected


def test_a_json_file_with_one_object_per_line_reads_as_jsonl(tmp_path):
    path = _file(tmp_path, "jsonl", SHAPE_CASES["prompt"][1], name="lines.json")
    parsed = load_rows(path)
    assert parsed.format == "jsonl" and parsed.rows == SHAPE_CASES["prompt"][2]


@pytest.mark.parametrize("fmt", FORMATS)
def test_mapping_renames_columns_first(tmp_path, fmt):
    rows = [
        {"question": "2+2?", "answer": "4", "prompt": "ignored: mapped over"},
        {"question": "1+1?", "answer": "2", "prompt": "x"},
    ]
    path = _file(tmp_path, fmt, rows)
    parsed = load_rows(path, mapping={"prompt": "question", "response": "answer", "chosen": ""})
    assert parsed.shape == "prompt_response"
    assert parsed.rows == [{"prompt": "2+2?", "response": "4"}, {"prompt": "1+1?", "response": "2"}]
    # The same file without the mapping: its own `prompt` column, prompt-only.
    assert load_rows(path).rows == [{"prompt": "ignored: mapped over"}, {"prompt": "x"}]


def test_mapping_errors_name_the_mapping(tmp_path):
    path = _file(tmp_path, "jsonl", [{"q": "a"}])
    assert "'nope'" in str(e := _error(path, mapping={"prompt": "nope"})) and e.field == "mapping" and "'q'" in str(e)
    assert "unknown column 'question'" in str(e := _error(path, mapping={"question": "q"})) and e.field == "mapping"
    assert _error(path, mapping=["prompt"]).field == "mapping"
    assert _error(path, mapping={"prompt": "q", "response": "q"}).field == "mapping"
    assert load_rows(path, mapping={"prompt": "q"}).rows == [{"prompt": "a"}]


def test_preview_is_the_first_rows_as_stored_with_the_count(tmp_path):
    rows = [{"instruction": f"task {i}", "input": "", "output": f"done {i}"} for i in range(12)]
    out = preview(_file(tmp_path, "parquet", rows))
    assert out["row_count"] == 12 and out["format"] == "parquet" and out["shape"] == "alpaca"
    assert out["rows"] == [{"prompt": f"task {i}", "response": f"done {i}"} for i in range(PREVIEW_ROWS)]
    assert out["columns"] == ["instruction", "input", "output"] and "Alpaca" in out["shape_label"]


def test_kind_decides_what_is_kept(tmp_path):
    _, rows, _ = SHAPE_CASES["preferences_messages"]
    path = _file(tmp_path, "jsonl", rows)
    assert load_rows(path, kind="prompts").rows == [{"prompt": "Greet me"}, {"prompt": "2+2?"}]
    e = _error(_file(tmp_path, "csv", SHAPE_CASES["alpaca"][1]), kind="preferences")
    assert "missing field" in str(e) and "'chosen' and 'rejected'" in str(e) and "Alpaca" in str(e)


def test_ultrafeedback_without_a_prompt_column_takes_the_chosen_sides_turns(tmp_path):
    rows = [{k: v for k, v in r.items() if k != "prompt"} for r in SHAPE_CASES["preferences_messages"][1]]
    assert load_rows(_file(tmp_path, "arrow", rows), kind="preferences").rows == SHAPE_CASES["preferences_messages"][2]
    # The two sides must answer the same conversation, else which prompt is meant is unknown.
    rows[1]["rejected"][0]["content"] = "3+3?"
    e = _error(_file(tmp_path, "parquet", rows), kind="preferences")
    assert str(e).startswith("row 2, column 'rejected': its turns before the answer differ")


def test_render_turns():
    assert render_turns([("user", "hi")]) == "hi"
    assert render_turns([("system", "s"), ("user", "u")]) == "System: s\n\nUser: u"


# --- errors name the row and the column ------------------------------------------------------------------------------
PREFS = [{"prompt": f"p{i}", "chosen": f"c{i}", "rejected": f"r{i}"} for i in range(4)]


@pytest.mark.parametrize("fmt", FORMATS)
def test_an_empty_cell_is_named_by_row_and_column(tmp_path, fmt):
    rows = [dict(r) for r in PREFS]
    rows[2]["chosen"] = "  "
    e = _error(_file(tmp_path, fmt, rows), kind="preferences")
    assert str(e) == "row 3, column 'chosen': is empty; every row needs text here"
    assert (e.row, e.column) == (3, "chosen")


@pytest.mark.parametrize("fmt", ["jsonl", "json", "parquet", "arrow"])
def test_a_missing_value_is_named_by_row_and_column(tmp_path, fmt):
    rows = [dict(r) for r in PREFS]
    del rows[3]["rejected"]
    e = _error(_file(tmp_path, fmt, rows), kind="preferences")
    assert str(e) == "row 4, column 'rejected': expected a string or a list of messages, got null (or a missing value)"


@pytest.mark.parametrize("fmt", ["jsonl", "json"])
def test_a_wrong_type_is_named_by_row_and_column(tmp_path, fmt):
    rows = [dict(r) for r in PREFS]
    rows[1]["chosen"] = 7
    e = _error(_file(tmp_path, fmt, rows), kind="preferences")
    assert str(e) == "row 2, column 'chosen': expected a string or a list of messages, got int"
    rows = [{"prompt": "a"}, {"prompt": ["not", "messages"]}]
    assert str(_error(_file(tmp_path, fmt, rows))).startswith("row 2, column 'prompt': message 1 must be an object")


@pytest.mark.parametrize("fmt", FORMATS)
def test_bad_messages_are_named_by_row_and_column(tmp_path, fmt):
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    bad = {"messages": [{"role": "user", "content": "hi"}, {"role": "robot", "content": "beep"}]}
    e = _error(_file(tmp_path, fmt, [good, good, bad]))
    assert str(e).startswith("row 3, column 'messages': message 2 has role 'robot'; known roles: user, human")
    only_answer = {"messages": [{"role": "assistant", "content": "yo"}]}
    e = _error(_file(tmp_path, fmt, [good, only_answer]))
    assert str(e) == "row 2, column 'messages': has only an assistant turn; a prompt needs at least one turn before it"


def test_ultrafeedback_side_without_an_answer(tmp_path):
    rows = [dict(r) for r in SHAPE_CASES["preferences_messages"][1]]
    rows[0] = {**rows[0], "rejected": [{"role": "user", "content": "Greet me"}]}
    e = _error(_file(tmp_path, "jsonl", rows), kind="preferences")
    assert str(e) == "row 1, column 'rejected': the message list does not end with an assistant turn (the answer)"


def test_jsonl_errors_also_give_the_file_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"prompt": "a"}\n\n\n{"prompt": "b"}\n{"prompt": ""}\n')
    e = _error(path)
    assert str(e) == "row 3 (line 5), column 'prompt': is empty; every row needs text here"
    assert (e.row, e.line) == (3, 5)


@pytest.mark.parametrize(
    "payload,message",
    [
        (b"", "the file is empty: a dataset needs at least one row"),
        (b"\n  \n", "the file is empty: a dataset needs at least one row"),
        (b'{"prompt": "a"}\n{"prompt": "\xff"}\n', "line 2 is not valid UTF-8 (byte 12); save the file as UTF-8"),
        (b'{"prompt": "a"}\nnot json\n', "line 2 is not valid JSON (Expecting value at column 1)"),
        (b'{"prompt": "a"}\n["prompt"]\n', 'line 2 must be a JSON object like {"prompt": "..."}'),
        (b'{"prompt": "' + b"y" * 200 + b'"}\n', "line 1 is longer than 100 bytes (1 MB per row at most)"),
        (b'{"prompt": "a\\ud800"}\n', "line 1 contains a lone UTF-16 surrogate; send valid Unicode"),
    ],
)
def test_jsonl_line_errors(tmp_path, payload, message):
    path = tmp_path / "d.jsonl"
    path.write_bytes(payload)
    assert str(_error(path, line_limit=100)) == message


def test_stored_rows_over_the_line_limit(tmp_path):
    # A parquet file has no lines, but each stored row is one: the limit applies to it.
    rows = [{"prompt": "short"}, {"prompt": "x" * 300}]
    e = _error(_file(tmp_path, "parquet", rows), line_limit=200)
    assert str(e) == "row 2: is longer than 200 bytes once stored (1 MB per row at most)"


def test_text_format_errors(tmp_path):
    assert str(_error(_file(tmp_path, "json", [{"prompt": "a"}, "b"]))) == "row 2: expected a JSON object, got str"
    bad = tmp_path / "d.json"
    bad.write_bytes(b'[{"prompt": "a"},')
    assert str(_error(bad)).startswith("not valid JSON (Expecting value at line 1")
    header_only = tmp_path / "h.csv"
    header_only.write_bytes(b"prompt,response\n\n")
    assert str(_error(header_only)) == "the file is empty: a dataset needs at least one row after the CSV's header"
    csv_bad = tmp_path / "d.csv"
    csv_bad.write_bytes(b"prompt\nok\n" + b"caf\xe9\n")
    assert str(_error(csv_bad)) == "line 3 is not valid UTF-8 (byte 3); save the file as UTF-8"


@pytest.mark.parametrize("fmt", ["parquet", "arrow"])
def test_a_file_that_is_not_its_format(tmp_path, fmt):
    path = tmp_path / FORMAT_FILES[fmt]
    path.write_bytes(b"this is not a binary table at all")
    assert str(_error(path)).startswith(f"the file could not be read as {fmt.upper()}: ")


def test_unknown_shape_names_the_columns(tmp_path):
    e = _error(_file(tmp_path, "csv", [{"question": "a", "answer": "b"}]))
    assert "missing field" in str(e) and "'question', 'answer'" in str(e) and "mapping" in str(e)


def test_nothing_is_left_in_the_temporary_folder(tmp_path, monkeypatch):
    import tempfile

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the reader's cache folder goes
    load_rows(_file(tmp_path, "parquet", SHAPE_CASES["prompt"][1]))
    assert list(scratch.iterdir()) == []


def test_rows_round_trip_as_json(tmp_path):
    """The stored rows are plain strings (no numpy or arrow scalars): json.dumps takes them as they are."""
    parsed = load_rows(_file(tmp_path, "parquet", SHAPE_CASES["messages"][1]))
    assert json.loads(json.dumps(parsed.rows)) == SHAPE_CASES["messages"][2]
