"""The review loop closed: a ``train`` job's ``pairs_from`` names jobs whose pairs, as reviewed, become its training
data. The rows are ``jobs.services.pairs.preference_rows``, the same function the export writes, so a job trains on
exactly what its sources' exports give. They are written once, when the job first runs (a retry resumes on the same
file), with the review counts they were taken under."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from jobs.models import GeneratedPair, Job
from jobs.services._common import _err

REVIEWED_PAIRS = "reviewed_pairs.jsonl"  # in the train job's run folder (ml.resolve.JobInputs.pairs)
PAIRS_FROM_MAX = 50  # source jobs per request
# kind=train's methods that train on pairs (ml.pipeline.PAIRS_METHODS through ml.spec.TRAIN_METHODS).
PAIRS_TRAIN_METHODS = ("sft", "dpo")


def pairs_from_check(*, user, kind: str, method: Any, pairs_from: Any, include_pending: Any) -> dict[str, Any]:
    """The ``pairs_from`` part of a job's config, or a ValidationError naming what to change: the jobs exist, the
    user may see them, and they have pairs; only kind=train with a method that trains on pairs takes them."""
    from jobs.selectors import job_get

    if kind != Job.Kind.TRAIN:
        raise _err("pairs_from", "pairs_from is only used by kind=train (method sft or dpo)")
    if method not in PAIRS_TRAIN_METHODS:
        raise _err(
            "method",
            f"training on reviewed pairs takes method {' or '.join(PAIRS_TRAIN_METHODS)} (SFT on the chosen side; "
            f"dpo: then DPO on the pairs), not {method!r}",
        )
    if include_pending not in (None, True, False):
        raise _err("include_pending", "include_pending must be true, false or absent (absent: pending pairs count "
                   "only for a job none of whose pairs was reviewed)")  # fmt: skip
    if not isinstance(pairs_from, list) or not pairs_from or len(pairs_from) > PAIRS_FROM_MAX:
        raise _err("pairs_from", f"pairs_from must be a list of 1 to {PAIRS_FROM_MAX} job ids")
    jobs, problems = [], []
    for ident in pairs_from:
        job = job_get(user=user, job_id=ident) if isinstance(ident, int) and not isinstance(ident, bool) else None
        if job is None:
            problems.append(f"job {ident!r} does not exist or is not yours")
        elif not GeneratedPair.objects.filter(job=job).exists():
            problems.append(f"job {ident} ({job.kind}) has no generated pairs")
        else:
            jobs.append({"id": job.pk, "kind": job.kind})
    if problems:
        raise _err("pairs_from", "; ".join(problems))
    if len({j["id"] for j in jobs}) != len(jobs):
        raise _err("pairs_from", "a job is named twice")
    return {"jobs": jobs, "include_pending": include_pending}


def pairs_training_file(*, job: Job, path: str | Path) -> dict[str, Any]:
    """Write the training rows of ``job``'s pairs_from into ``path`` (once: a retry keeps the first attempt's file
    and counts) and return {"train_examples", "review": {source id: review counts, "pending_included"}}."""
    from jobs.selectors import job_get
    from jobs.services.pairs import pending_included, preference_rows
    from jobs.services.review import review_counts

    path = Path(path)
    counts_path = path.with_suffix(".counts.json")
    if path.exists() and counts_path.exists():
        out: dict[str, Any] = json.loads(counts_path.read_text(encoding="utf-8"))
        return out
    spec = (job.config or {}).get("pairs_from") or {}
    include_pending = spec.get("include_pending")
    review: dict[str, Any] = {}
    n = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for ref in spec.get("jobs", []):
            source = job_get(user=job.owner, job_id=ref["id"])
            if source is None:  # deleted or no longer the owner's since submit (cf. job_check_access)
                raise ValueError(f"pairs_from: job {ref['id']} no longer exists or is not available to the owner")
            for row in preference_rows(job=source, include_pending=include_pending):
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                n += 1
            review[str(source.pk)] = {
                **review_counts(job=source),
                "pending_included": pending_included(job=source, include_pending=include_pending),
            }
    if n == 0:
        tmp.unlink()
        raise ValueError(
            "pairs_from: no pair is left to train on (all rejected, pending ones left out, or one-sided); review "
            "some as approved or set include_pending"
        )
    out = {"train_examples": n, "review": review}
    counts_path.write_text(json.dumps(out), encoding="utf-8")
    os.replace(tmp, path)
    return out
