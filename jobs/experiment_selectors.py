"""Reads of experiments: a user sees their own; staff see everyone's (as with jobs, jobs.selectors)."""

from __future__ import annotations

from django.db.models import Prefetch, QuerySet

from jobs.models import Experiment, Job


def experiments_visible(*, user) -> QuerySet[Experiment]:
    qs = Experiment.objects.select_related("owner").prefetch_related(
        # Each experiment's jobs' states in one more query, for the list's counts (never a query per experiment).
        Prefetch("jobs", queryset=Job.objects.only("id", "status", "experiment_id").order_by("id"))
    )
    if user is None or not user.is_authenticated:
        return qs.none()
    return qs.order_by("-created", "-id") if user.is_staff else qs.filter(owner=user).order_by("-created", "-id")


def experiment_get(*, user, experiment_id) -> Experiment | None:
    """The experiment if this user may see it; None otherwise (callers answer 404 either way)."""
    try:
        return experiments_visible(user=user).filter(pk=int(experiment_id)).first()
    except (TypeError, ValueError, OverflowError):
        return None


def status_counts(exp: Experiment) -> dict[str, int]:
    """How many of its jobs are in each status (from the prefetched jobs)."""
    out: dict[str, int] = {}
    for job in exp.jobs.all():
        out[job.status] = out.get(job.status, 0) + 1
    return out
