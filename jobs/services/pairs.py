"""Artifacts and generated pairs: mirror rows, review, export."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from typing import Any

from asgiref.sync import sync_to_async
from django.utils import timezone

from jobs.models import Artifact, GeneratedPair, Job
from jobs.services._common import _err
from ml.io import finite_number, is_empty_response


def artifact_record(*, job_id: int, stage: str, kind: str, path: str, partial: bool = False) -> Artifact:
    art, _ = Artifact.objects.update_or_create(
        job_id=job_id, stage=stage, kind=kind, defaults={"path": str(path), "partial": partial}
    )
    return art


def _count(x: Any) -> int | None:
    # PositiveIntegerField: 0 .. 2**31 - 1 on every backend.
    return x if isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 2**31 else None


def pair_is_empty(chosen: Any, rejected: Any) -> bool:
    """No usable pair: the chosen response, or the rejected one it is paired with (when there is one), is empty
    or whitespace only (ml.io.is_empty_response; the training stages drop the same rows)."""
    return is_empty_response(chosen) or (rejected is not None and is_empty_response(rejected))


def pair_store(
    *, job_id: int, row: dict[str, Any], index_offset: int = 0, shard: int | None = None, worker: str = ""
) -> tuple[GeneratedPair, bool]:
    """Mirror one generated row (samples.jsonl, ml.stages.generate) as a GeneratedPair; never duplicates.

    The row's ``implicit_reward_sum`` and ``implicit_reward_mean`` are stored under those names; a row with only
    an unnamed ``implicit_reward`` stores neither (which one it is cannot be told). ``shard`` and ``worker`` say
    who generated it (jobs.sharding)."""
    chosen = str(row.get("response", ""))
    rejected, plain = row.get("rejected"), row.get("plain")
    return GeneratedPair.objects.get_or_create(
        job_id=job_id,
        prompt_index=int(row["index"]) + index_offset,
        defaults={
            "prompt": str(row.get("prompt", "")),
            "chosen": chosen,
            "rejected": rejected,
            "plain": plain,
            "implicit_reward_sum": finite_number(row.get("implicit_reward_sum")),
            "implicit_reward_mean": finite_number(row.get("implicit_reward_mean")),
            "n_tokens": _count(row.get("n_tokens")),
            "empty_response": pair_is_empty(chosen, rejected if rejected is not None else plain),
            "gold_reward": finite_number(row.get("gold")),
            "score_error": str(row.get("score_error") or ""),
            "alpha": finite_number(row.get("alpha")),
            "shard": shard,
            "worker": worker[:200],
        },
    )


# Each review action and the state it leaves a pair in (the review desk's bulk actions read the same table).
REVIEW_ACTIONS = {
    "approve": GeneratedPair.Review.APPROVED,
    "reject": GeneratedPair.Review.REJECTED,
    "edit": GeneratedPair.Review.EDITED,
}


def pair_side_store(*, job_id: int, prompt_index: int, side: str, text: Any) -> bool:
    """Fill one side of one stored pair (pair_sides_store for one row); False when the job has no such pair."""
    return pair_sides_store(job_id=job_id, side=side, texts={prompt_index: text}) == 1


def pair_sides_store(*, job_id: int, side: str, texts: Mapping[int, Any]) -> int:
    """Fill one side of stored pairs from a later stage (ml.io.PAIR_SIDES), {prompt index: text}: ``plain`` (a plain
    pi_post sample for the same prompt) or ``rejected`` (the strong model's own sample: ConG's DPO pair as trained).
    Two queries for any number of rows (a select and a bulk update). Returns how many pairs were filled: an index
    whose pair was never made (its CD row) is skipped, so the caller can count it."""
    if side not in ("plain", "rejected"):
        raise ValueError(f"side must be plain or rejected, not {side!r}")
    pairs = list(GeneratedPair.objects.filter(job_id=job_id, prompt_index__in=list(texts)))
    for pair in pairs:
        setattr(pair, side, str(texts[pair.prompt_index]))
        # The empty rule reads the side the export pairs the chosen response with (rejected first, else plain).
        pair.empty_response = pair_is_empty(pair.chosen, pair.rejected if pair.rejected is not None else pair.plain)
    GeneratedPair.objects.bulk_update(pairs, [side, "empty_response"], batch_size=500)
    return len(pairs)


def pair_review(*, pair: GeneratedPair, user, action: str, edited_text: str = "") -> GeneratedPair:
    """approve / reject / edit one generated pair (edit keeps the text used in exports)."""
    if action not in REVIEW_ACTIONS:
        raise _err("action", f"action must be one of {', '.join(REVIEW_ACTIONS)}")
    if action == "edit" and not (edited_text or "").strip():
        raise _err("edited_text", "an edit needs the new response text")
    pair.review_status = REVIEW_ACTIONS[action]
    pair.edited_text = edited_text if action == "edit" else pair.edited_text
    pair.reviewer = user
    pair.reviewed_at = timezone.now()
    pair.save(update_fields=["review_status", "edited_text", "reviewer", "reviewed_at"])
    return pair


def pending_included(*, job: Job, include_pending: bool | None = None) -> bool:
    """Whether a job's pending pairs go into its export and its training rows: as asked, else only while none of
    its pairs has been reviewed (once a reviewer has started, what they have not seen is left out)."""
    if include_pending is not None:
        return include_pending
    return not GeneratedPair.objects.filter(job=job).exclude(review_status=GeneratedPair.Review.PENDING).exists()


def _as_row(p: GeneratedPair, include_empty: bool) -> dict[str, str] | None:
    chosen = p.edited_text if p.review_status == GeneratedPair.Review.EDITED and p.edited_text else p.chosen
    rejected = p.rejected if p.rejected is not None else p.plain
    if rejected is None or (not include_empty and pair_is_empty(chosen, rejected)):
        return None
    return {"prompt": p.prompt, "chosen": chosen, "rejected": rejected}


def _reviewed(job: Job, pending: bool) -> Any:
    pairs = GeneratedPair.objects.filter(job=job).exclude(review_status=GeneratedPair.Review.REJECTED)
    return (pairs if pending else pairs.exclude(review_status=GeneratedPair.Review.PENDING)).order_by("prompt_index")


def preference_rows(
    *, job: Job, include_empty: bool = False, include_pending: bool | None = None
) -> Iterator[dict[str, str]]:
    """The job's pairs as reviewed, as TRL preference rows {"prompt", "chosen", "rejected"}: what its export
    writes and what a train job's ``pairs_from`` trains on (one definition for both).

    Rejected-by-review pairs are skipped, edits applied to the chosen side; pending pairs follow
    ``pending_included``. The rejected side is the pair's own (ConG's DPO pair: the strong model's sample), else its
    plain pi_post sample; a pair with neither (a job run with plain=false) is no preference data and is left out.
    Rows with an empty side are left out unless ``include_empty`` (they teach nothing but "stop now"); the rule
    reads the texts written, so a reviewer's edit that gives an empty chosen response text brings its pair back.
    """
    for p in _reviewed(job, pending_included(job=job, include_pending=include_pending)).iterator():
        row = _as_row(p, include_empty)
        if row is not None:
            yield row


EXPORT_PAGE = 1000  # pairs read per step of an ASGI export


async def pairs_export_async(
    *, job: Job, include_empty: bool = False, include_pending: bool | None = None
) -> AsyncIterator[bytes]:
    """``pairs_export`` for an ASGI server: the same lines, read a page of pairs at a time (on the thread Django's
    database connection lives on) and sent as each page is ready, where Django would read a synchronous iterator
    into one list first."""
    pending = await sync_to_async(pending_included)(job=job, include_pending=include_pending)

    def page(after: int) -> tuple[bytes, int | None]:
        pairs = list(_reviewed(job, pending).filter(prompt_index__gt=after)[:EXPORT_PAGE])
        rows = (_as_row(p, include_empty) for p in pairs)
        body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows if r is not None).encode()
        return body, (pairs[-1].prompt_index if pairs else None)

    after: int | None = -1
    while after is not None:
        body, after = await sync_to_async(page)(after)
        if body:
            yield body


def pairs_export(*, job: Job, include_empty: bool = False, include_pending: bool | None = None) -> Iterable[str]:
    """TRL preference JSONL of the job's pairs as reviewed (``preference_rows``), one object per line."""
    for row in preference_rows(job=job, include_empty=include_empty, include_pending=include_pending):
        yield json.dumps(row, ensure_ascii=False) + "\n"
