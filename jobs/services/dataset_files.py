"""Dataset uploads in every format ml.data_formats reads (JSONL, JSON, CSV, Parquet, Arrow; the shapes there).

The web app's own limits come first (UPLOAD_MAX_BYTES on the file as sent, the JSON checks of
jobs.api.json_checks on JSON text, naming the line), then ml.data_formats converts the file to the rows the
stages read, and jobs.services.catalog.dataset_create stores those as JSONL. A preview runs the same steps and
stores nothing. Errors are ValidationErrors keyed by the form field at fault (file, format, mapping, kind).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from django.conf import settings

from jobs.api import json_checks
from jobs.models import Dataset
from jobs.services._common import _err
from jobs.services.catalog import dataset_create
from jobs.validation import MAX_LINE_BYTES
from ml import data_formats
from ml.data_formats import DataFormatError, Parsed


def parse_mapping(raw: Any) -> dict[str, str]:
    """A column mapping as an object, or as the JSON text of one (a form field); {} when empty."""
    if isinstance(raw, str):
        if not raw.strip():
            return {}
        try:
            raw = json_checks.loads(raw)
        except ValueError as exc:
            raise _err("mapping", f'mapping must be a JSON object like {{"prompt": "question"}}: {exc}') from None
    try:
        return data_formats.check_mapping(raw)
    except DataFormatError as exc:
        raise _err("mapping", str(exc)) from None


def _save(file: Any, folder: Path) -> Path:
    """The upload copied into ``folder``, refused past UPLOAD_MAX_BYTES (counted as it is read)."""
    limit = settings.UPLOAD_MAX_BYTES
    path = folder / "upload"
    total = 0
    with path.open("wb") as out:
        for chunk in file.chunks():
            total += len(chunk)
            if total > limit:
                raise _err("file", f"file is larger than the upload limit of {limit} bytes")
            out.write(chunk)
    return path


def _check_json_text(path: Path) -> None:
    """What json_checks refuses in JSON text (lone surrogates, nesting deeper than JSON_MAX_DEPTH, integers
    beyond 64 bits), line by line for JSONL; text that is not JSON at all is ml.data_formats' to report."""
    data = path.read_bytes()
    try:
        if data_formats.json_layout(data) == "jsonl":
            json_checks.check_jsonl([data], line_limit=MAX_LINE_BYTES)
        else:
            json_checks.loads(data)
    except json_checks.UnsafeJSON as exc:
        raise _err("file", str(exc)) from None
    except ValueError:
        pass


def dataset_parse(*, file: Any, kind: str, fmt: str = "", mapping: Any = None) -> Parsed:
    """Read an uploaded file (a Django UploadedFile) as a dataset of ``kind``: format ``fmt`` or detected,
    columns renamed by ``mapping`` (an object or its JSON text). Raises ValidationError; stores nothing."""
    if kind not in Dataset.Kind.values:
        raise _err("kind", f"kind must be one of {', '.join(Dataset.Kind.values)}")
    if fmt and fmt not in data_formats.FORMATS:
        raise _err("format", f"format must be one of {', '.join(data_formats.FORMATS)} (or empty: detected)")
    columns = parse_mapping(mapping)
    with tempfile.TemporaryDirectory(prefix="congweb-upload-") as folder:
        path = _save(file, Path(folder))
        try:
            fmt = fmt or data_formats.detect_format(path, getattr(file, "name", None))
            if fmt in ("jsonl", "json"):
                _check_json_text(path)
            return data_formats.load_rows(path, fmt, columns, kind, line_limit=MAX_LINE_BYTES)
        except DataFormatError as exc:
            raise _err(exc.field or "file", str(exc)) from None


def dataset_preview(*, file: Any, kind: str, fmt: str = "", mapping: Any = None) -> dict[str, Any]:
    """The first rows as they would be stored, the format, shape and row count; nothing is stored."""
    return dataset_parse(file=file, kind=kind, fmt=fmt, mapping=mapping).preview()


def dataset_upload(
    *, name: str, kind: str, file: Any, fmt: str = "", mapping: Any = None, gold: str = "", owner: Any = None
) -> Dataset:
    """Parse the upload (dataset_parse) and store its rows (catalog.dataset_create)."""
    if not (name or "").strip():
        raise _err("name", "give the dataset a name")  # before reading the file
    parsed = dataset_parse(file=file, kind=kind, fmt=fmt, mapping=mapping)
    return dataset_create(name=name, kind=kind, rows=parsed.rows, format=parsed.format, gold=gold, owner=owner)
