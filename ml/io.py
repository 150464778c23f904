"""Files the stages read and write: JSONL that survives crashes, atomic JSON, stage completion markers.

Why append-only JSONL: generation stages append one line per finished prompt and flush it, so a
crash loses at most the batch in flight and a rerun resumes after the last complete line (a torn
last line, from a kill mid-write, is dropped on read and rewritten).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

DONE_MARKER = "DONE.json"
SAMPLES = "samples.jsonl"  # every generation/evaluation stage writes its rows here
# The side of a reviewable pair that each generation stage's rows fill, by stage function name: the CD response is
# the chosen side, a plain pi_post sample for the same prompt the comparison, and the strong model's own sample the
# rejected side of ConG's DPO pair. The web worker's mirror and its shards read it from here.
PAIR_SIDES = {"cd_generate": "chosen", "plain_generate": "plain", "self_sample": "rejected"}


def read_jsonl(path: str | Path, *, required: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Read a JSONL file; a torn final line is ignored, any other bad line raises with its number."""
    path = Path(path)
    rows: list[dict[str, Any]] = []
    required = tuple(required)
    with path.open("rb") as fh:
        lines = fh.read().split(b"\n")
    for n, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            if n == len(lines) or (n == len(lines) - 1 and not lines[-1]):
                break  # torn last line from an interrupted append
            raise ValueError(f"{path}:{n}: not valid UTF-8 JSON ({exc}); fix or remove that line") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{n}: each line must be a JSON object")
        missing = [k for k in required if k not in row]
        if missing:
            raise ValueError(f"{path}:{n}: missing field(s) {', '.join(missing)}")
        rows.append(row)
    return rows


def iter_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    yield from read_jsonl(path)


def repair_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read what is complete and rewrite the file without a torn tail, so appends start clean."""
    path = Path(path)
    if not path.exists():
        return []
    rows = read_jsonl(path)
    data = path.read_bytes()
    if data and not data.endswith(b"\n") or len(rows) != sum(1 for line in data.split(b"\n") if line.strip()):
        write_jsonl(path, rows)
    return rows


def append_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def is_empty_response(text: Any) -> bool:
    """A response with no text but whitespace (the model stopped at once). One definition for the training
    stages, which drop such rows (ml.stages._responses), and the web app, which flags and skips them in export."""
    return text is None or not str(text).strip()


def finite_number(x: Any) -> float | None:
    """``x`` as a float when it is a finite JSON number (not a bool, not NaN/inf, not an integer beyond float
    range such as 10**400), else None: what reading a number out of a results or samples row needs."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    try:
        f = float(x)
    except OverflowError:
        return None
    return f if math.isfinite(f) else None


def jsonable(value: Any) -> Any:
    """value as plain JSON: NaN/inf become None (JSON has neither), numpy/torch scalars become floats, tuples
    lists, anything else its string. One home for results, events and manifests."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, bool)):
        return value
    try:
        return float(value)  # numpy / torch scalars
    except (TypeError, ValueError):
        return str(value)


def write_json(path: str | Path, obj: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
    os.replace(tmp, path)


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def stage_done(output_dir: str | Path) -> dict[str, Any] | None:
    """The summary a finished stage left behind, or None if it has not finished."""
    marker = Path(output_dir) / DONE_MARKER
    return read_json(marker) if marker.exists() else None


def mark_done(output_dir: str | Path, summary: dict[str, Any]) -> dict[str, Any]:
    write_json(Path(output_dir) / DONE_MARKER, summary)
    return summary


def read_prompts(path: str | Path, limit: int | None = None) -> list[str]:
    """Prompt files are JSONL with a ``prompt`` field (other fields are kept by callers that need them)."""
    rows = read_jsonl(path, required=("prompt",))
    prompts = [str(r["prompt"]) for r in rows]
    return prompts[:limit] if limit else prompts
