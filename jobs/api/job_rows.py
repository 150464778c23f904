"""GET /api/v1/jobs/'s rows, built from ``values()`` instead of through a ModelSerializer per job.

Profiled with 200 jobs (docs/BENCHMARKS.md, "Web tier"), a page of 50 spent about half its time building
50 Job and 50 User model instances and the other half in DRF's per-object, per-field machinery
(get_attribute, SkipField checks, an OrderedDict per row). The rows are what JobSummarySerializer says,
field for field: its own field objects turn each value into JSON (so datetimes, floats and choices come
out exactly as before, a test compares the two), only fed straight from one ``values()`` query.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

from rest_framework import serializers

from jobs.api.serializers import JobSummarySerializer

# Method fields the rows know how to fill: each from the annotation of the same name (jobs.selectors.job_list).
ANNOTATED = {"pair_count"}

Column = tuple[str, str, serializers.Field]


@functools.cache
def _columns() -> tuple[Column, ...] | None:
    """(output name, values() lookup, field) for each of JobSummarySerializer's fields, in its order; None when
    it has a method field not in ANNOTATED (one that needs the model: the list then goes through the serializer)."""
    out: list[Column] = []
    for name, field in JobSummarySerializer().fields.items():
        if isinstance(field, serializers.SerializerMethodField):
            if name not in ANNOTATED:
                return None
            out.append((name, name, serializers.IntegerField()))
        else:
            out.append((name, str(field.source).replace(".", "__"), field))
    return tuple(out)


def available() -> bool:
    """Whether rows() can build every field (else list through JobSummarySerializer, as before)."""
    return _columns() is not None


def lookups() -> list[str]:
    """What to pass to ``values()``."""
    cols = _columns()
    assert cols is not None, "check available() first"
    return [lookup for _, lookup, _ in cols]


def rows(values: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    cols = _columns()
    assert cols is not None, "check available() first"
    return [
        {name: None if row[lookup] is None else field.to_representation(row[lookup]) for name, lookup, field in cols}
        for row in values
    ]
