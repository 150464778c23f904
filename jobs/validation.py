"""Checks on what users hand us: model folder paths and uploaded JSONL datasets.

Every failure raises django.core.exceptions.ValidationError keyed by the field it is about, with a
message a person can act on; the API turns those into 400 responses.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError

from ml.data_formats import KIND_FIELDS

MAX_LINE_BYTES = 1024 * 1024  # one JSONL row may not exceed 1 MB
REQUIRED_FIELDS = KIND_FIELDS  # each dataset kind's fields, declared once in ml.data_formats


def model_roots() -> list[Path]:
    return [Path(p).resolve() for p in getattr(settings, "MODEL_ROOTS", [])]


def runs_dir() -> Path | None:
    raw = getattr(settings, "RUNS_DIR", None)
    return Path(raw).resolve() if raw else None


def run_folder_allowed(path: str | Path, user) -> bool:
    """Whether ``user`` may use the model folder ``path`` as far as job run folders go.

    RUNS_DIR is a model root (a weak_align job registers its pi_post from there), so every user's job
    outputs sit under a root. A folder under RUNS_DIR belongs to the job whose id is its first component
    (RUNS_DIR/<job_id>/...): only that job's owner and staff may use it. ``user`` None is the app itself
    (toy world, offline install), which may use any folder. The path is resolved first, so a symlink
    cannot point into someone else's run folder. See docs/SECURITY.md section 2.
    """
    runs = runs_dir()
    resolved = Path(path).resolve()
    if user is None or getattr(user, "is_staff", False) or runs is None:
        return True
    if resolved != runs and not resolved.is_relative_to(runs):
        return True
    parts = resolved.relative_to(runs).parts
    # Only a canonical job folder name (str(job.pk)) counts: "007" or "7x" belongs to no job.
    if not parts or not parts[0].isdigit() or str(int(parts[0])) != parts[0]:
        return False
    from jobs.models import Job

    return Job.objects.filter(pk=int(parts[0]), owner=user).exists()


def resolve_model_path(raw: str, *, user, field: str = "path") -> Path:
    """The resolved folder for ``raw`` if it is an HF model folder inside a model root that ``user`` may
    use (``user`` None: the app itself; see run_folder_allowed).

    ``..`` components are refused outright (even when they would land inside a root), and the path is
    resolved (following every symlink) before the containment check, so a symlink inside a root that
    points outside it is refused too. Another user's run folder is refused before anything is said about
    what is on disk there, so the answer does not tell whether their job wrote that folder.
    """
    roots = model_roots()
    if not raw or not str(raw).strip():
        raise ValidationError({field: ["give the path of a Hugging Face model folder"]})
    p = Path(str(raw).strip())
    if ".." in p.parts:
        raise ValidationError({field: ["'..' is not allowed in model paths; give the folder's real path"]})
    if not p.is_absolute():
        raise ValidationError(
            {field: [f"give an absolute path under one of the model roots: {', '.join(map(str, roots))}"]}
        )
    resolved = p.resolve()
    if not any(resolved == r or resolved.is_relative_to(r) for r in roots):
        why = " (it is a symlink that points outside them)" if resolved != p else ""
        raise ValidationError(
            {
                field: [
                    f"{p} is not under a model root{why}; allowed roots: "
                    f"{', '.join(map(str, roots)) or '(none configured: set MODEL_ROOTS)'}"
                ]
            }
        )
    if not run_folder_allowed(resolved, user):
        raise ValidationError(
            {
                field: [
                    f"{p} is in the job runs folder ({runs_dir()}) but not in a folder of one "
                    "of your jobs; give a folder under runs/<id of your job>/"
                ]
            }
        )
    if not resolved.is_dir():
        raise ValidationError({field: [f"{p} is not a folder"]})
    if not (resolved / "config.json").is_file():
        raise ValidationError({field: [f"{p} is not a Hugging Face model folder (no config.json)"]})
    return resolved


def _lines(chunks: Iterable[bytes], limit: int) -> Iterator[bytes]:
    """Split a byte stream into lines without holding more than one (bounded) line in memory."""
    buf = b""
    for chunk in chunks:
        buf += chunk
        while True:
            nl = buf.find(b"\n")
            if nl < 0:
                break
            yield buf[:nl]
            buf = buf[nl + 1 :]
        if len(buf) > limit:
            yield buf  # an over-long line: the caller refuses it by length
            return
    if buf:
        yield buf


def validate_jsonl(
    chunks: Iterable[bytes], *, kind: str, max_bytes: int | None = None, field: str = "file"
) -> tuple[bytes, int]:
    """Validate an uploaded JSONL and return (normalised bytes, row count).

    Rules: total size <= UPLOAD_MAX_BYTES, each line <= 1 MB, UTF-8, a JSON object per line, the
    kind's required fields present as non-empty strings, at least one row. Blank lines are dropped.
    """
    if kind not in REQUIRED_FIELDS:
        raise ValidationError({"kind": [f"unknown dataset kind {kind!r}; use one of {', '.join(REQUIRED_FIELDS)}"]})
    max_bytes = max_bytes if max_bytes is not None else getattr(settings, "UPLOAD_MAX_BYTES", 50 * 1024 * 1024)
    required = REQUIRED_FIELDS[kind]
    total = 0
    out: list[bytes] = []

    def counted(it: Iterable[bytes]) -> Iterator[bytes]:
        nonlocal total
        for c in it:
            total += len(c)
            if total > max_bytes:
                raise ValidationError({field: [f"file is larger than the upload limit of {max_bytes} bytes"]})
            yield c

    for n, raw in enumerate(_lines(counted(chunks), MAX_LINE_BYTES), start=1):
        if len(raw) > MAX_LINE_BYTES:
            raise ValidationError({field: [f"line {n} is longer than {MAX_LINE_BYTES} bytes (1 MB per row at most)"]})
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValidationError(
                {field: [f"line {n} is not valid UTF-8 (byte {exc.start}); save the file as UTF-8"]}
            ) from None
        try:
            row = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValidationError({field: [f"line {n} is not valid JSON ({exc.msg} at column {exc.colno})"]}) from None
        if not isinstance(row, dict):
            raise ValidationError({field: [f'line {n} must be a JSON object like {{"prompt": "..."}}']})
        missing = [k for k in required if not isinstance(row.get(k), str) or not str(row[k]).strip()]
        if missing:
            raise ValidationError(
                {
                    field: [
                        f"line {n} is missing field(s) {', '.join(missing)} "
                        f"(non-empty strings required for a {kind} dataset)"
                    ]
                }
            )
        out.append(json.dumps(row, ensure_ascii=False).encode("utf-8"))
    if not out:
        raise ValidationError({field: ["the file is empty: a dataset needs at least one JSON line"]})
    return b"\n".join(out) + b"\n", len(out)
