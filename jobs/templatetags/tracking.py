"""{% mlflow_run_url job as url %}: the job's run in the MLflow UI (MLFLOW_UI_URL), or None (jobs.tracking.run_url)."""

from __future__ import annotations

from django import template

from jobs.models import Job
from jobs.tracking import run_url

register = template.Library()


@register.simple_tag
def mlflow_run_url(job: Job) -> str | None:
    return run_url(job)
