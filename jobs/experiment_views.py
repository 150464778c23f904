"""The experiments pages (docs/UI.md "Experiments"): the list, and one experiment's aggregate table, plots and its
cells' metric curves; cancel and retry every cell. Experiments are made through the API (docs/EXPERIMENTS.md).
An experiment the user may not see is a 404, as in the API."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from jobs import compare_data
from jobs import experiment_selectors as reads
from jobs.models import Experiment
from jobs.services import experiments as service

API = "/api/v1"


def _experiment_or_404(user, experiment_id) -> Experiment:
    exp = reads.experiment_get(user=user, experiment_id=experiment_id)
    if exp is None:
        raise Http404("no such experiment")
    return exp


@login_required
def experiments(request):
    rows = [
        {"exp": e, "cells": len(e.jobs.all()), "counts": sorted(reads.status_counts(e).items())}
        for e in reads.experiments_visible(user=request.user)[:200]
    ]
    return render(request, "jobs/experiments.html", {"rows": rows})


@login_required
def experiment_detail(request, experiment_id: int):
    exp = _experiment_or_404(request.user, experiment_id)
    summary = service.experiment_summary(exp)
    jobs = service.experiment_jobs(exp)
    by_id = {j.pk: j for j in jobs}
    for cell in summary["cells"]:
        cell["name"] = by_id[cell["job"]].name if cell["job"] in by_id else ""
    labels = {c["job"]: f"job {c['job']} ({c['label']})" for c in summary["cells"] if c["job"] is not None}
    data = {"plots": summary["plots"], "metrics": compare_data.metric_series(jobs, labels)}
    return render(
        request,
        "jobs/experiment_detail.html",
        {
            "exp": exp,
            "summary": summary,
            "data": data,
            "compare_ids": ",".join(str(j.pk) for j in jobs),
            "active": any(not j.is_finished for j in jobs),
            "api_url": f"{API}/experiments/{exp.pk}/",
        },
    )


def _act(request, experiment_id: int, action, done: str):
    exp = _experiment_or_404(request.user, experiment_id)
    result = action(experiment=exp, user=request.user)
    messages.info(
        request, f"{done}: {len(result['changed'])} of {len(result['changed']) + len(result['unchanged'])} jobs."
    )
    return redirect("experiment_detail", experiment_id=exp.pk)


@login_required
@require_POST
def experiment_cancel(request, experiment_id: int):
    return _act(request, experiment_id, service.experiment_cancel, "Cancel requested")


@login_required
@require_POST
def experiment_retry(request, experiment_id: int):
    return _act(request, experiment_id, service.experiment_retry, "Queued again")
