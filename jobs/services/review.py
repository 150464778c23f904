"""The review desk (/jobs/<id>/review/): one job's pairs reviewed one at a time, in the order of a filter.

Reviewing itself is jobs.services.pairs.pair_review (reviewer and time recorded); this module adds what the
desk needs around it: the filter (review status, reward ranges, text), the counts per review state, the
neighbours of a pair in the filter's order, the bulk approve/reject of everything a filter matches, and the
job's review guidelines. Callers check that the user may see the job (jobs.selectors.job_get) first.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Count, QuerySet
from django.utils import timezone

from jobs import selectors
from jobs.models import GeneratedPair, Job
from jobs.services._common import _err
from jobs.services.pairs import REVIEW_ACTIONS

# The number filters: query prefix -> (the field it bounds, its label). Each gives <prefix>_min and
# <prefix>_max, both inclusive; a pair without the number never passes a bound on it.
REWARD_RANGES: dict[str, tuple[str, str]] = {
    "implicit": ("implicit_reward_sum", "implicit reward (sum)"),
    "mean": ("implicit_reward_mean", "implicit reward per token"),
    "gold": ("gold_reward", "gold reward"),
}
BOUNDS = {"min": "gte", "max": "lte"}
BULK_ACTIONS = ("approve", "reject")  # an edit is one pair's new text: never in bulk
SEARCH_MAX_CHARS = 200
GUIDELINES_MAX_CHARS = 20_000
PENDING = GeneratedPair.Review.PENDING


@dataclass
class ReviewFilter:
    """Which of a job's pairs the desk walks through. ``ranges`` maps a query name (``gold_min``) to its bound."""

    status: str = ""
    q: str = ""
    ranges: dict[str, float] = field(default_factory=dict)

    @classmethod
    def range_names(cls) -> list[str]:
        return [f"{prefix}_{end}" for prefix in REWARD_RANGES for end in BOUNDS]

    @classmethod
    def parse(cls, params: Mapping[str, Any]) -> ReviewFilter:
        """From query parameters; empty ones are unset. ValidationError keyed by parameter, all at once."""
        errors: dict[str, list[str]] = {}
        status = str(params.get("status") or "").strip()
        if status and status not in GeneratedPair.Review.values:
            errors["status"] = [f"status must be one of {', '.join(GeneratedPair.Review.values)}"]
        q = str(params.get("q") or "").strip()
        if len(q) > SEARCH_MAX_CHARS:
            errors["q"] = [f"search text is limited to {SEARCH_MAX_CHARS} characters"]
        ranges: dict[str, float] = {}
        for name in cls.range_names():
            raw = str(params.get(name) or "").strip()
            if not raw:
                continue
            try:
                value = float(raw)
            except ValueError:
                value = math.nan
            if not math.isfinite(value):
                errors[name] = [f"{name} must be a number (got {raw[:40]!r})"]
            else:
                ranges[name] = value
        if errors:
            raise ValidationError(errors)
        return cls(status=status, q=q, ranges=ranges)

    def query(self) -> dict[str, str]:
        """The query parameters that give this filter back (for links and the page's script)."""
        out = {"status": self.status, "q": self.q}
        out.update({name: f"{value:g}" for name, value in self.ranges.items()})
        return {k: v for k, v in out.items() if v}


def review_pairs(*, job: Job, flt: ReviewFilter) -> QuerySet[GeneratedPair]:
    """The job's pairs the filter matches, by prompt index: the desk's order. Status and text search are the
    pairs list's (jobs.selectors.job_pairs: the text is looked for in the prompt and the chosen response)."""
    qs = selectors.job_pairs(job=job, review_status=flt.status or None, search=flt.q or None)
    for name, value in flt.ranges.items():
        prefix, end = name.rsplit("_", 1)
        qs = qs.filter(**{f"{REWARD_RANGES[prefix][0]}__{BOUNDS[end]}": value})
    return qs.select_related("reviewer").order_by("prompt_index")


def review_counts(*, job: Job) -> dict[str, int]:
    """How many of the job's pairs are in each review state (every state named, zeros included), and the total."""
    counts = dict.fromkeys(GeneratedPair.Review.values, 0)
    rows = GeneratedPair.objects.filter(job=job).order_by().values("review_status").annotate(n=Count("*"))
    for row in rows:
        counts[row["review_status"]] = row["n"]
    counts["total"] = sum(counts.values())
    return counts


def _first_pk(qs: QuerySet[GeneratedPair]) -> int | None:
    return qs.values_list("pk", flat=True).first()


def review_start(*, job: Job, flt: ReviewFilter) -> GeneratedPair | None:
    """Where the desk opens: the first pending pair the filter matches, else its first pair."""
    qs = review_pairs(job=job, flt=flt)
    return qs.filter(review_status=PENDING).first() or qs.first()


def review_nav(*, job: Job, flt: ReviewFilter, pair: GeneratedPair) -> dict[str, Any]:
    """The pair's neighbours in the filter's order, and the next pending one after it (wrapping round to the
    first, so none is skipped; never the pair itself). The pair need not match the filter (it may just have
    been reviewed out of a "pending" filter): the neighbours are those around its place in the order.
    ``position`` is its 1-based place among the ``matching`` pairs, None when it does not match."""
    qs = review_pairs(job=job, flt=flt)
    after = qs.filter(prompt_index__gt=pair.prompt_index)
    before = qs.filter(prompt_index__lt=pair.prompt_index)
    matches = qs.filter(pk=pair.pk).exists()
    return {
        "prev": _first_pk(before.order_by("-prompt_index")),
        "next": _first_pk(after),
        "next_pending": _first_pk(after.filter(review_status=PENDING))
        or _first_pk(before.filter(review_status=PENDING)),
        "position": before.count() + 1 if matches else None,
        "matching": qs.count(),
    }


def edit_prefill(pair: GeneratedPair) -> str:
    """The text an edit starts from: the reviewer's last edit when there is one, else the CD response."""
    return pair.edited_text or pair.chosen


def pair_view(pair: GeneratedPair) -> dict[str, Any]:
    """One pair as the desk shows it: both sides (rejected and plain are None when not generated) and the
    numbers as stored (the page rounds them)."""
    return {
        "id": pair.pk,
        "prompt_index": pair.prompt_index,
        "prompt": pair.prompt,
        "chosen": pair.chosen,
        "rejected": pair.rejected,
        "plain": pair.plain,
        "implicit_reward_sum": pair.implicit_reward_sum,
        "implicit_reward_mean": pair.implicit_reward_mean,
        "n_tokens": pair.n_tokens,
        "gold_reward": pair.gold_reward,
        "score_error": pair.score_error,
        "alpha": pair.alpha,
        "empty_response": pair.empty_response,
        "review_status": pair.review_status,
        "edited_text": pair.edited_text,
        "edit_prefill": edit_prefill(pair),
        "reviewer": pair.reviewer.get_username() if pair.reviewer_id and pair.reviewer else None,
        "reviewed_at": pair.reviewed_at.isoformat() if pair.reviewed_at else None,
    }


def review_state(*, job: Job, flt: ReviewFilter, pair: GeneratedPair | None) -> dict[str, Any]:
    """Everything the desk shows about one pair: the pair, its neighbours under the filter, the job's counts."""
    empty_nav = {"prev": None, "next": None, "next_pending": None, "position": None}
    return {
        "pair": pair_view(pair) if pair else None,
        "nav": review_nav(job=job, flt=flt, pair=pair)
        if pair
        else {**empty_nav, "matching": review_pairs(job=job, flt=flt).count()},
        "counts": review_counts(job=job),
    }


def review_after(*, job: Job, flt: ReviewFilter, pair: GeneratedPair) -> GeneratedPair:
    """Where the desk goes once a pair is reviewed: the next pending one in the filter's order, else stay."""
    pk = review_nav(job=job, flt=flt, pair=pair)["next_pending"]
    nxt = GeneratedPair.objects.select_related("reviewer").filter(job=job, pk=pk).first() if pk else None
    return nxt or pair


def pairs_review_bulk(*, job: Job, flt: ReviewFilter, user, action: str, expect: int | None = None) -> int:
    """Approve or reject every pair the filter matches, recording the reviewer and time as pair_review does.
    ``expect``: the count the user confirmed; when the filter now matches another number (pairs were added or
    reviewed meanwhile) nothing changes and the error says how many it matches now. Returns the count."""
    if action not in BULK_ACTIONS:
        raise _err("action", f"a bulk action is one of {', '.join(BULK_ACTIONS)}")
    with transaction.atomic():
        pks = list(review_pairs(job=job, flt=flt).values_list("pk", flat=True))
        if expect is not None and expect != len(pks):
            raise _err("expect", f"the filter now matches {len(pks)} pairs, not {expect}: look again, then confirm")
        GeneratedPair.objects.filter(pk__in=pks).update(
            review_status=REVIEW_ACTIONS[action], reviewer=user, reviewed_at=timezone.now()
        )
    return len(pks)


def job_guidelines_set(*, job: Job, text: str) -> Job:
    """Replace the job's review guidelines (plain text; empty clears them)."""
    text = str(text or "").replace("\r\n", "\n").strip()
    if len(text) > GUIDELINES_MAX_CHARS:
        raise _err("guidelines", f"guidelines are limited to {GUIDELINES_MAX_CHARS} characters (got {len(text)})")
    job.review_guidelines = text
    job.save(update_fields=["review_guidelines"])
    return job
