"""Artifacts and generated pairs: mirror rows, review, export."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from django.utils import timezone

from jobs.models import Artifact, GeneratedPair, Job
from jobs.services._common import _err, _is_number


def artifact_record(*, job_id: int, stage: str, kind: str, path: str, partial: bool = False) -> Artifact:
    art, _ = Artifact.objects.update_or_create(
        job_id=job_id, stage=stage, kind=kind, defaults={"path": str(path), "partial": partial}
    )
    return art


def pair_store(*, job_id: int, row: dict[str, Any], index_offset: int = 0) -> tuple[GeneratedPair, bool]:
    """Mirror one generated row (samples.jsonl) as a GeneratedPair; never duplicates."""
    reward = row.get("implicit_reward_mean", row.get("implicit_reward"))
    return GeneratedPair.objects.get_or_create(
        job_id=job_id,
        prompt_index=int(row["index"]) + index_offset,
        defaults={
            "prompt": str(row.get("prompt", "")),
            "chosen": str(row.get("response", "")),
            "rejected": row.get("rejected"),
            "plain": row.get("plain"),
            "implicit_reward": float(reward) if reward is not None and _is_number(reward) else None,
            "gold_reward": float(row["gold"]) if _is_number(row.get("gold")) else None,
            "score_error": str(row.get("score_error") or ""),
            "alpha": float(row["alpha"]) if _is_number(row.get("alpha")) else None,
        },
    )


def pair_review(*, pair: GeneratedPair, user, action: str, edited_text: str = "") -> GeneratedPair:
    """approve / reject / edit one generated pair (edit keeps the text used in exports)."""
    actions = {
        "approve": GeneratedPair.Review.APPROVED,
        "reject": GeneratedPair.Review.REJECTED,
        "edit": GeneratedPair.Review.EDITED,
    }
    if action not in actions:
        raise _err("action", f"action must be one of {', '.join(actions)}")
    if action == "edit" and not (edited_text or "").strip():
        raise _err("edited_text", "an edit needs the new response text")
    pair.review_status = actions[action]
    pair.edited_text = edited_text if action == "edit" else pair.edited_text
    pair.reviewer = user
    pair.reviewed_at = timezone.now()
    pair.save(update_fields=["review_status", "edited_text", "reviewer", "reviewed_at"])
    return pair


def pairs_export(*, job: Job) -> Iterable[str]:
    """TRL preference JSONL: prompt/chosen/rejected; rejected-by-review pairs skipped, edits applied.

    Pairs without a rejected response (plain CD generation) export prompt/completion-style
    prompt/chosen rows with rejected set to the plain sample when there is one.
    """
    for p in (
        GeneratedPair.objects.filter(job=job)
        .exclude(review_status=GeneratedPair.Review.REJECTED)
        .order_by("prompt_index")
        .iterator()
    ):
        chosen = p.edited_text if p.review_status == GeneratedPair.Review.EDITED and p.edited_text else p.chosen
        rejected = p.rejected if p.rejected is not None else p.plain
        row = {"prompt": p.prompt, "chosen": chosen}
        if rejected is not None:
            row["rejected"] = rejected
        yield json.dumps(row, ensure_ascii=False) + "\n"
