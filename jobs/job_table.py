"""The dashboard's job table (docs/UI.md "Dashboard"): its columns read in one query, filters, sorting, and the
headline score; and the name/tag filters the job list API shares.

Every column comes from ``values()`` with JSON key lookups (config__alpha, results__methods, ...), so the page
reads a fixed number of queries and never decodes a job's whole config or results (tests/jobs/test_list_queries.py).
"""

from __future__ import annotations

import functools
from typing import Any

from django.db.models import Q, QuerySet

from jobs.models import Job
from ml.results import method_rows


def filter_labels(qs: QuerySet[Job], *, tag: str | None = None, search: str | None = None) -> QuerySet[Job]:
    """``tag``: jobs carrying that tag; ``search``: text in the name or a tag (case-insensitive). A tag is matched
    in the stored list's JSON text with its quotes: tags are lowercase ASCII without quotes
    (jobs.services.creation.TAG_PATTERN), so the text of one is exactly ``"tag"`` wherever the list is stored."""
    if tag:
        qs = qs.filter(tags__icontains=f'"{tag.strip().lower()}"')
    if search:
        qs = qs.filter(Q(name__icontains=search) | Q(tags__icontains=search.strip().lower()))
    return qs


@functools.cache
def _size_stages() -> dict[str, str]:
    """kind -> the stage whose max_prompts caps its prompts (pipelines: the top-level setting, 'top')."""
    from ml.spec import registry

    return {k: "top" if ks.pipeline else next(iter(ks.stages)) for k, ks in registry().items()}


def _size_lookups() -> dict[str, str]:
    return {
        stage: "config__spec__top__max_prompts" if stage == "top" else f"config__spec__stages__{stage}__max_prompts"
        for stage in sorted(set(_size_stages().values()))
    }


# Each extra column's lookup (the dashboard's base columns are jobs.views.DASHBOARD_COLUMNS).
LABEL_COLUMNS = {
    "alpha": "config__alpha",
    "methods": "config__methods",
    "method": "config__method",
    "rows": "config__prompts__row_count",
    "r_methods": "results__methods",
    "r_gold": "results__gold_mean",
    "r_alphas": "results__alphas",
}


def table_lookups() -> list[str]:
    return ["name", "tags", "started", *LABEL_COLUMNS.values(), *_size_lookups().values()]


def headline(kind: str, results: dict[str, Any]) -> tuple[float | None, str]:
    """(gold mean, what it is): the best gold mean among the job's evaluated rows (its methods, the evaluated model,
    a sweep's alphas; ml.results.method_rows), labelled with the row's name; (None, "") when it has none."""
    rows = [r for r in method_rows(kind, results) if r.gold_mean is not None]
    if not rows:
        return None, ""
    best = max(rows, key=lambda r: r.gold_mean or 0.0)
    return best.gold_mean, best.method


def table_row(j: dict[str, Any]) -> dict[str, Any]:
    """A values() row with the table's computed columns added (alpha, methods, size, duration, headline)."""
    col = {name: j.get(lookup) for name, lookup in LABEL_COLUMNS.items()}
    kind = j["kind"]
    methods = col["methods"] if isinstance(col["methods"], list) else ([col["method"]] if col["method"] else [])
    cap = j.get(_size_lookups().get(_size_stages().get(kind, ""), ""))
    sizes = [v for v in (col["rows"], cap) if isinstance(v, int) and not isinstance(v, bool)]
    results = {"methods": col["r_methods"], "gold_mean": col["r_gold"], "alphas": col["r_alphas"]}
    score, score_of = headline(kind, {k: v for k, v in results.items() if v is not None})
    end = j.get("finished")
    seconds = (end - j["started"]).total_seconds() if end and j.get("started") else None
    j.update(
        alpha=col["alpha"] if isinstance(col["alpha"], (int, float)) else None,
        methods=", ".join(str(m) for m in methods),
        size=min(sizes) if sizes else None,
        seconds=seconds,
        duration=_duration(seconds),
        score=score,
        score_of=score_of,
        tags=j.get("tags") if isinstance(j.get("tags"), list) else [],
    )
    return j


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    s = int(round(seconds))
    return f"{s // 3600}h {s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m {s % 60:02d}s" if s >= 60 else f"{s}s"


# The sortable columns: ?sort=<key> (ascending) or ?sort=-<key>; rows without a value go last either way.
SORTS = {
    "id": "id",
    "name": "name",
    "kind": "kind",
    "alpha": "alpha",
    "methods": "methods",
    "size": "size",
    "duration": "seconds",
    "status": "status",
    "score": "score",
    "created": "created",
}


def sort_rows(rows: list[dict[str, Any]], sort: str) -> list[dict[str, Any]]:
    key = SORTS.get(sort.lstrip("-"))
    if key is None:
        return rows
    have = [r for r in rows if r.get(key) not in (None, "")]
    missing = [r for r in rows if r.get(key) in (None, "")]
    have.sort(key=lambda r: (r[key].lower() if isinstance(r[key], str) else r[key], r["id"]), reverse=sort[0] == "-")
    return have + missing
