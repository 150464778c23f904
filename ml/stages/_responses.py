"""Generated responses as training data: the rows with an empty response, and the setting that keeps them.

A generation stage can write an empty response (the model emitted EOS at once, or only whitespace): a toy CD
run left 5 of 24 chosen responses empty. SFT on one teaches nothing but "stop now", and a DPO pair with an
empty side is no preference, so the stages that train on generated samples (SFT, DPO, WSPO, AuxConf) drop
them unless ``keep_empty_responses`` says otherwise, log how many, and return the count in their result as
``n_empty_dropped``. ``ml.io.is_empty_response`` says what "empty" means (the web app flags pairs with it).
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
