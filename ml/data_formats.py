"""Dataset files in the shapes people have, normalised to the JSONL rows the stages read.

Files are read with the ``datasets`` library (offline: its packaged json/csv/parquet/arrow builders on a local
file, with a throw-away cache folder), in one of ``FORMATS``. The columns decide the shape (``SHAPES``), after an
optional column mapping ({"prompt": "question"}: the file's column ``question`` is read as ``prompt``):

- ``prompt``: a string ``prompt`` column;
- ``prompt_response``: ``prompt`` and ``response`` strings;
- ``preferences``: ``prompt``, ``chosen``, ``rejected`` strings;
- ``preferences_messages`` (UltraFeedback style): ``chosen``/``rejected`` are message lists; each side's answer is
  its last assistant turn, and the prompt is the ``prompt`` column or else the chosen side's turns before it;
- ``messages`` (OpenAI ``role``/``content``) or ``conversations`` (ShareGPT ``from``/``value``): the last assistant
  turn is the response and the turns before it the prompt (a chat ending in a user turn is all prompt);
- ``alpaca``: prompt = ``instruction`` (+ a blank line + ``input`` when that is not empty), response = ``output``.

The stages take a prompt as one string (the chat template wraps it as one user turn), so turns become text: a
single user turn is its content; anything longer (a system turn, earlier exchanges) is each turn on its own
paragraph, ``"User: ..."``, ``"Assistant: ..."``, ``"System: ..."`` (``render_turns``). A row's rules live in
ml.data_rows; this module reads the files.

Output rows hold the kind's fields only: ``prompts`` keeps ``prompt`` (and ``response`` where the shape has one),
``preferences`` ``prompt``/``chosen``/``rejected``. Every failure is a DataFormatError naming the row (data rows
counted from 1, a CSV header not counted; for JSONL also the file line) and the column. This module never imports
Django; the web app adds its own checks on top (jobs.services.dataset_files).
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ml.data_rows import CHAT_COLUMNS, PREFERENCE_SHAPES, SURROGATE, Row, normalise, type_name
from ml.data_rows import DataFormatError as DataFormatError  # re-exported: callers catch it from here
from ml.data_rows import render_turns as render_turns

FORMATS = ("jsonl", "json", "csv", "parquet", "arrow")
EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
EXTENSIONS |= {".arrow": "arrow", ".feather": "arrow"}
SHAPES = {
    "prompt": "prompt only",
    "prompt_response": "prompt and response",
    "preferences": "prompt, chosen and rejected strings",
    "preferences_messages": "chosen and rejected message lists (UltraFeedback)",
    "messages": "chats (messages / ShareGPT conversations)",
    "alpaca": "Alpaca (instruction, input, output)",
}
KIND_FIELDS = {"prompts": ("prompt",), "preferences": ("prompt", "chosen", "rejected")}
# The names a mapping may set: every column some shape reads.
MAPPABLE = ("prompt", "response", "chosen", "rejected", "messages", "conversations", "instruction", "input", "output")
PREVIEW_ROWS = 5
_BATCH = 1024  # rows per read from the loaded table


@dataclass
class Parsed:
    """A file read and normalised: its format and shape, the source columns, the rows as they will be stored."""

    format: str
    shape: str
    columns: list[str]
    rows: list[dict[str, str]] = field(default_factory=list)

    def preview(self, n: int = PREVIEW_ROWS) -> dict[str, Any]:
        return {
            "format": self.format,
            "shape": self.shape,
            "shape_label": SHAPES[self.shape],
            "columns": self.columns,
            "row_count": len(self.rows),
            "rows": self.rows[:n],
        }


def detect_format(path: str | Path, name: str | None = None) -> str:
    """The format from the file name's extension (``name``, else ``path``'s), else from the first bytes."""
    for candidate in (name, str(path)):
        if candidate:
            ext = Path(candidate).suffix.lower()
            if ext in EXTENSIONS:
                return EXTENSIONS[ext]
    with open(path, "rb") as fh:
        head = fh.read(4096)
    if head.startswith(b"PAR1"):
        return "parquet"
    if head.startswith(b"ARROW1") or head.startswith(b"\xff\xff\xff\xff"):
        return "arrow"  # the IPC file format, or the stream format `datasets` saves
    if head.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] in (b"[", b"{"):
        return json_layout(head)
    raise DataFormatError(
        f"could not tell the file's format from its name or content; give format: one of {', '.join(FORMATS)}",
        field="format",
    )


def json_layout(data: bytes) -> str:
    """Whether JSON text is one array ("json") or one object per line ("jsonl"): its first character decides."""
    return "json" if data.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"[") else "jsonl"


# ----------------------------------------------------------------------------------------------
# Checks the `datasets` readers cannot word: they fail on a whole file, these name the line.


def _check_utf8(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1)
        raise DataFormatError(f"line {line} is not valid UTF-8 (byte {col}); save the file as UTF-8") from None


def _jsonl_lines(data: bytes, line_limit: int | None) -> list[int]:
    """Check every line of a JSONL file; return the file line of each data row (blank lines hold none)."""
    lines: list[int] = []
    for n, raw in enumerate(data.split(b"\n"), start=1):
        if line_limit is not None and len(raw) > line_limit:
            raise DataFormatError(f"line {n} is longer than {line_limit} bytes (1 MB per row at most)")
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataFormatError(f"line {n} is not valid UTF-8 (byte {exc.start}); save the file as UTF-8") from None
        try:
            row = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataFormatError(f"line {n} is not valid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(row, dict):
            raise DataFormatError(f'line {n} must be a JSON object like {{"prompt": "..."}}')
        # Strict UTF-8 has no surrogates: only a \u escape can make one. The JSON reader refuses the whole file on
        # one, so say where.
        if b"\\u" in raw and _has_surrogate(row):
            raise DataFormatError(f"line {n} contains a lone UTF-16 surrogate; send valid Unicode")
        lines.append(n)
    return lines


def _has_surrogate(value: Any) -> bool:
    """Whether a parsed JSON value holds a lone surrogate in any key or string (iterative: any depth)."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            if SURROGATE.search(v):
                return True
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return False


def _check_json_array(data: bytes) -> None:
    try:
        value = json.loads(_check_utf8(data))
    except json.JSONDecodeError as exc:
        raise DataFormatError(f"not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    if not isinstance(value, list):
        raise DataFormatError(
            "a JSON file must be an array of objects, [{...}, {...}]; for one object per line use JSONL"
        )
    for i, item in enumerate(value, start=1):
        if not isinstance(item, dict):
            raise DataFormatError(f"expected a JSON object, got {type_name(item)}", row=i)
        if _has_surrogate(item):
            raise DataFormatError("contains a lone UTF-16 surrogate; send valid Unicode", row=i)


# ----------------------------------------------------------------------------------------------
# Reading through `datasets`


def _load(path: Path, fmt: str, data: bytes | None) -> Any:
    """The file as a ``datasets.Dataset`` (in memory; the builder's cache lives in a folder removed afterwards)."""
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    with tempfile.TemporaryDirectory(prefix="congweb-datasets-") as cache:
        kw: dict[str, Any] = {"split": "train", "keep_in_memory": True, "cache_dir": cache}
        if fmt in ("jsonl", "json"):
            # Agent-trace detection would rewrite rows that happen to have type/message columns.
            return datasets.load_dataset("json", data_files=str(path), parse_agent_traces=False, **kw)
        if fmt == "csv":
            # Every cell as text, an empty cell as "": a CSV has no types, and "42" stays a prompt.
            header = next(csv.reader(io.StringIO(_check_utf8(data or b""))), [])
            features = datasets.Features({c: datasets.Value("string") for c in header})
            return datasets.load_dataset(
                "csv", data_files=str(path), features=features, keep_default_na=False, na_filter=False, **kw
            )
        return datasets.load_dataset(fmt, data_files=str(path), **kw)


def _iter_rows(ds: Any) -> Iterator[dict[str, Any]]:
    for batch in ds.iter(batch_size=_BATCH):
        cols = list(batch)
        yield from (dict(zip(cols, values)) for values in zip(*(batch[c] for c in cols)))


def detect_shape(columns: list[str]) -> str:
    cols = set(columns)
    if {"chosen", "rejected"} <= cols:
        return "preferences"  # ..._messages when the rows hold message lists (decided on the first row)
    if cols & set(CHAT_COLUMNS):
        return "messages"
    if {"instruction", "output"} <= cols:
        return "alpaca"
    if {"prompt", "response"} <= cols:
        return "prompt_response"
    if "prompt" in cols:
        return "prompt"
    raise DataFormatError(
        f"missing field(s): no column the known shapes read; the file has {', '.join(map(repr, columns)) or 'none'}. "
        "Expected prompt (+ response), prompt/chosen/rejected, messages or conversations, or instruction/output "
        '(Alpaca); map your columns with mapping, e.g. {"prompt": "question"}'
    )


def check_mapping(mapping: Any) -> dict[str, str]:
    """A mapping {shape column: file column}; anything else is a DataFormatError on the ``mapping`` field."""
    if mapping in (None, ""):
        return {}
    if not isinstance(mapping, dict):
        raise DataFormatError(
            f'mapping must be an object like {{"prompt": "question"}}, got {type_name(mapping)}', field="mapping"
        )
    out: dict[str, str] = {}
    for target, source in mapping.items():
        if target not in MAPPABLE:
            raise DataFormatError(
                f"mapping: unknown column {target!r}; map one of {', '.join(MAPPABLE)}", field="mapping"
            )
        if source in (None, ""):
            continue  # an empty field of the page's form: no mapping for that column
        if not isinstance(source, str):
            raise DataFormatError(
                f"mapping: {target!r} must name a column (a string), got {type_name(source)}", field="mapping"
            )
        out[target] = source
    return out


def _rename(columns: list[str], mapping: dict[str, str]) -> dict[str, str]:
    """{file column: name read as}; a mapped column replaces a file column already called like its target."""
    missing = [s for s in mapping.values() if s not in columns]
    if missing:
        raise DataFormatError(
            f"mapping names column(s) {', '.join(map(repr, missing))} that the file does not have; it has "
            f"{', '.join(map(repr, columns)) or 'none'}",
            field="mapping",
        )
    sources = {s: t for t, s in mapping.items()}
    if len(sources) < len(mapping):
        raise DataFormatError("mapping reads one file column as two columns; map each column once", field="mapping")
    targets = set(mapping)
    return {c: sources.get(c, c) for c in columns if c in sources or c not in targets}


def load_rows(
    path: str | Path,
    fmt: str | None = None,
    mapping: Any = None,
    kind: str = "prompts",
    *,
    name: str | None = None,
    line_limit: int | None = None,
) -> Parsed:
    """Read ``path`` (format ``fmt``, else from ``name``/``path``'s extension, else its first bytes), apply the
    column ``mapping`` and normalise every row for a dataset of ``kind``. ``line_limit``: bytes per JSONL line and
    per stored row (None: no limit). Raises DataFormatError."""
    if kind not in KIND_FIELDS:
        raise DataFormatError(f"unknown dataset kind {kind!r}; use one of {', '.join(KIND_FIELDS)}", field="kind")
    if fmt and fmt not in FORMATS:
        raise DataFormatError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}", field="format")
    renames_to = check_mapping(mapping)
    path = Path(path)
    fmt = fmt or detect_format(path, name)
    data = path.read_bytes() if fmt in ("jsonl", "json", "csv") else None
    if data is not None and not data.strip() or data is None and path.stat().st_size == 0:
        raise DataFormatError("the file is empty: a dataset needs at least one row")
    lines: list[int] | None = None
    if data is not None and fmt in ("jsonl", "json"):
        # `datasets` reads both; which one a file is comes from its first character.
        fmt = json_layout(data)
        if fmt == "jsonl":
            lines = _jsonl_lines(data, line_limit)
        else:
            _check_json_array(data)
    elif data is not None:  # a CSV: its first record is the header
        if len(list(itertools.islice((r for r in csv.reader(io.StringIO(_check_utf8(data))) if r), 2))) < 2:
            raise DataFormatError("the file is empty: a dataset needs at least one row after the CSV's header")
    try:
        ds = _load(path, fmt, data)
    except DataFormatError:
        raise
    except Exception as exc:  # the readers' own errors (pyarrow, pandas): say which reader and why
        while exc.__cause__ is not None:  # `datasets` wraps the reader's error in a generic one
            exc = exc.__cause__  # type: ignore[assignment]
        raise DataFormatError(f"the file could not be read as {fmt.upper()}: {exc}") from None
    columns = list(ds.column_names)
    names = _rename(columns, renames_to)
    shape = detect_shape(list(names.values()))
    if kind == "preferences" and shape not in PREFERENCE_SHAPES:
        raise DataFormatError(
            "missing field(s): a preferences dataset needs columns 'chosen' and 'rejected' (strings or message "
            f"lists) and a prompt; this file reads as {SHAPES[shape]} (columns {', '.join(map(repr, columns))}); "
            "map yours with mapping"
        )
    rows: list[dict[str, str]] = []
    for i, source in enumerate(_iter_rows(ds)):
        values = {names[c]: v for c, v in source.items() if c in names}
        r = Row(i + 1, lines[i] if lines else None, values, json_cells=fmt == "csv")
        if i == 0 and shape == "preferences" and r.message_list(values.get("chosen")) is not None:
            shape = "preferences_messages"  # the label; each row may hold either form
        row = normalise(shape, kind, r)
        # JSON text is at most 6 bytes a character (\u escapes): only a row near the limit is measured.
        near = line_limit is not None and 6 * sum(len(v) for v in row.values()) + 100 > line_limit
        if near and len(json.dumps(row, ensure_ascii=False).encode("utf-8")) > (line_limit or 0):
            raise r.error(None, f"is longer than {line_limit} bytes once stored (1 MB per row at most)")
        rows.append(row)
    if not rows:
        raise DataFormatError("the file is empty: a dataset needs at least one row")
    return Parsed(format=fmt, shape=shape, columns=columns, rows=rows)


def preview(
    path: str | Path, fmt: str | None = None, mapping: Any = None, kind: str = "prompts", **kw: Any
) -> dict[str, Any]:
    """The first PREVIEW_ROWS rows as they would be stored, with the format, shape and row count."""
    return load_rows(path, fmt, mapping, kind, **kw).preview()
