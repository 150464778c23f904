"""The new-job page's "Memory per device" panel: the GPU memory each training stage of the job being filled in
would need per device (ml.memory), answered as JSON while the user edits the form (static/jobs/memory.js).

The job is built exactly as submitting would build it: the page's own form (jobs.forms.JobForm) parses the post,
and jobs.services.job_create validates it and resolves the spec, inside a transaction rolled back before it
commits, so no job is stored or sent and every rule stays in one place. A form that submit would refuse is a 400
carrying the same errors the page would show.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.db import transaction
from django.http import JsonResponse
from django.views.decorators.http import require_POST

from jobs import services
from jobs.forms import JobForm

FIX_FORM = "Fix the form to see an estimate."


class _Built(Exception):
    """Carries the stored config of the job job_create made out of the transaction that is then rolled back."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__("preview")
        self.config = config


def _job_config(user: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The config (spec included) job_create stores for these arguments, without keeping the job: the savepoint is
    rolled back, which also drops the on-commit send to the workers."""
    try:
        with transaction.atomic():
            job = services.job_create(user=user, **kwargs)
            raise _Built(job.config)
    except _Built as built:
        return built.config


def _invalid(form: JobForm) -> JsonResponse:
    errors = {k: [str(m) for m in v] for k, v in form.errors.items()}
    return JsonResponse({"text": FIX_FORM, "errors": errors}, status=400)


@login_required
@require_POST
def job_memory_estimate(request):
    """Per training stage: the breakdown in bytes (weights, gradients, optimizer, activations, logits...), the
    biggest stage as "max", and one line of text; {"stages": {}} with a text saying so for a kind that trains
    nothing."""
    from ml.memory import estimate_spec

    form = JobForm(request.POST, user=request.user)
    if not form.is_valid():
        return _invalid(form)
    try:
        config = _job_config(request.user, form.service_kwargs())
    except ValidationError as exc:
        form.add_service_errors(exc)
        return _invalid(form)
    except services.JobQuotaExceeded as exc:
        return JsonResponse({"text": f"No estimate: {exc}."}, status=429)
    inputs = services.job_inputs(config, str(Path(settings.RUNS_DIR) / "pending"))
    return JsonResponse({"kind": config["kind"], **estimate_spec(config["spec"], inputs)})
