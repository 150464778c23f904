"""Generated responses as training data: the rows with an empty response, the rows cut at the length limit, and the
settings that keep them.

A generation stage can write an empty response (the model emitted EOS at once, or only whitespace): a toy CD
run left 5 of 24 chosen responses empty. SFT on one teaches nothing but "stop now", and a DPO pair with an
empty side is no preference, so the stages that train on generated samples (SFT, DPO, WSPO, AuxConf) drop
them unless ``keep_empty_responses`` says otherwise, log how many, and return the count in their result as
``n_empty_dropped``. ``ml.io.is_empty_response`` says what "empty" means (the web app flags pairs with it).

A response cut at ``max_new_tokens`` (``finish_reason`` "length") is not an answer the model finished: trained on
with an EOS after it, it teaches the strong model to stop mid-sentence. The same stages leave such rows out
(``drop_truncated``, on by default; ``n_truncated_dropped`` in their result), and when they are kept no EOS is
appended to them (``ends_complete``). Rows without a finish reason (a user's data) count as complete.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ml.io import is_empty_response
from ml.reporter import Reporter


@dataclass(kw_only=True)
class EmptyResponses:
    """Mixed into the config of each stage that trains on generated samples, so the setting, its default and
    its help are declared once (and reach the job registry, the CLI and the form through ml.spec)."""

    keep_empty_responses: bool = field(
        default=False,
        metadata={
            "help": "Train on empty (whitespace-only) responses too. Off: rows with an empty response (for DPO, "
            "pairs with either side empty) are dropped; the count is logged and returned as n_empty_dropped."
        },
    )
    drop_truncated: bool = field(
        default=True,
        metadata={
            "help": "Leave out responses cut at the length limit (finish_reason 'length'; for DPO, pairs with either "
            "side cut): counted as n_truncated_dropped. Off: they are trained on, with no EOS after them."
        },
    )


TRUNCATED = "length"  # the finish_reason of a response cut at max_new_tokens (ml.contrastive, ml.stages._train)


def finish_key(response_field: str = "response") -> str:
    """Where a row says how its ``response_field`` ended: ``finish_reason`` in a samples file, ``chosen_finish_reason``
    / ``rejected_finish_reason`` for the sides of a preference row (weak_align writes them, DPO and WSPO read them)."""
    return "finish_reason" if response_field == "response" else f"{response_field}_finish_reason"


def ends_complete(row: dict[str, Any], finish_field: str = "finish_reason") -> bool:
    """Whether a response ended by itself (EOS or a stop string): only those get an EOS appended in training."""
    return row.get(finish_field) != TRUNCATED


def truncated_rate(rows: Sequence[dict[str, Any]], finish_field: str = "finish_reason") -> float | None:
    """The share of rows cut at the length limit, among those that say how they ended (None when none say)."""
    told = [r for r in rows if finish_field in r]
    return sum(not ends_complete(r, finish_field) for r in told) / len(told) if told else None


def drop_truncated(
    rows: list[dict[str, Any]], finish_fields: Sequence[str], *, drop: bool, stage: str, reporter: Reporter
) -> tuple[list[dict[str, Any]], int]:
    """(rows none of whose ``finish_fields`` says the response was cut, how many were dropped); all when not
    ``drop``."""
    if not drop:
        return rows, 0
    kept = [r for r in rows if all(ends_complete(r, f) for f in finish_fields)]
    dropped = len(rows) - len(kept)
    if dropped:
        reporter.log(
            f"{stage}: dropped {dropped} of {len(rows)} rows cut at the length limit (raise max_new_tokens, or set "
            "drop_truncated false to train on them without an EOS)"
        )
    return kept, dropped


def drop_empty(
    rows: list[dict[str, Any]], text_fields: Sequence[str], *, keep: bool, stage: str, reporter: Reporter
) -> tuple[list[dict[str, Any]], int]:
    """(rows without an empty value in any of ``text_fields``, how many were dropped); all rows when ``keep``."""
    if keep:
        return rows, 0
    kept = [r for r in rows if not any(is_empty_response(r[f]) for f in text_fields)]
    dropped = len(rows) - len(kept)
    if dropped:
        reporter.log(
            f"{stage}: dropped {dropped} of {len(rows)} rows with an empty response "
            "(set keep_empty_responses to train on them)"
        )
    return kept, dropped
