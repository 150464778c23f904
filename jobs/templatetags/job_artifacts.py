"""{% job_artifact_list job as artifacts %}: the job page's "Models and files", the same rows as
GET /api/v1/jobs/{id}/artifacts/ (jobs.services.artifacts.job_artifacts)."""

from __future__ import annotations

from django import template

from jobs.models import Job
from jobs.services.artifacts import Listed, job_artifacts

register = template.Library()


@register.simple_tag
def job_artifact_list(job: Job) -> list[Listed]:
    return job_artifacts(job)
