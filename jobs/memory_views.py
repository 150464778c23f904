"""The new-job page's "Memory per device" panel: the GPU memory each training stage of the job being filled in
would need per device (ml.memory), answered as JSON while the user edits the form (static/jobs/memory.js).

The job is built exactly as submitting would build it: the page's own form (jobs.forms.JobForm) parses the post,
and jobs.services.job_build (what job_create stores) validates it and resolves the spec; nothing is stored or sent
and every rule stays in one place. A form that submit would refuse is answered with ``"valid": false`` and the
same errors the page would show, as a 200: a form being filled in is incomplete most of the time, which is an
answer, not a failed request (a 400 per keystroke would fill the browser's console with errors).
"""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import JsonResponse
from django.views.decorators.http import require_POST

from jobs import services
from jobs.forms import JobForm

FIX_FORM = "Fix the form to see an estimate."


def _invalid(form: JobForm) -> JsonResponse:
    errors = {k: [str(m) for m in v] for k, v in form.errors.items()}
    return JsonResponse({"valid": False, "text": FIX_FORM, "errors": errors})


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
        config = services.job_build(user=request.user, **form.service_kwargs())
    except ValidationError as exc:
        form.add_service_errors(exc)
        return _invalid(form)
    inputs = services.job_inputs(config, str(Path(settings.RUNS_DIR) / "pending"))
    return JsonResponse({"valid": True, "kind": config["kind"], **estimate_spec(config["spec"], inputs)})
