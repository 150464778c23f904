"""The playground (/jobs/<id>/playground/): chat with a model a succeeded job trained, or with its weak pair (CD
beside plain pi_post), tokens streaming over a websocket (docs/UI.md "Playground").

For whoever may see the job (its owner, staff: jobs.selectors.job_get); anyone else, and a job that has not
succeeded, gets a 404. The page's script (static/jobs/playground.js) POSTs the prompt and knobs as JSON to
``start`` (CSRF), which answers the session and its socket path; the rules are jobs.services.playground's.
Errors: 400 {"errors": {field: [message]}}, 429 {"errors": {"__all__": [...]}} for a user with a session running
or too many this minute, 503 when the broker cannot take the task.
"""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import Http404, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from jobs import selectors
from jobs.api.json_checks import UnsafeJSON, loads
from jobs.models import Job
from jobs.services import playground


def _job_or_404(user, job_id) -> Job:
    job = selectors.job_get(user=user, job_id=job_id)
    if job is None or job.status != Job.Status.SUCCEEDED:
        raise Http404("no such job, or it has not succeeded")
    return job


@login_required
@require_GET
def playground_page(request, job_id: int):
    job = _job_or_404(request.user, job_id)
    targets = playground.job_targets(job)
    config = {
        "job_id": job.pk,
        "targets": targets,
        "knobs": playground.knob_fields(),
        "prompt_max": playground.PROMPT_MAX_CHARS,
        "urls": {"start": reverse("playground_start", args=[job.pk])},
    }
    return render(request, "jobs/playground.html", {"job": job, "targets": targets, "config": config})


@require_POST
def playground_start(request, job_id: int):
    """{"target": "pair" | "model:<artifact id>", "prompt": "...", knobs...} -> {"session", "ws_path", "streams"}."""
    job = _job_or_404(request.user, job_id)
    try:
        data = loads(request.body or b"{}")
    except (UnsafeJSON, ValueError) as exc:
        return JsonResponse({"errors": {"body": [f"the body must be a JSON object: {exc}"]}}, status=400)
    if not isinstance(data, dict):
        return JsonResponse({"errors": {"body": ["the body must be a JSON object"]}}, status=400)
    try:
        started = playground.playground_start(user=request.user, job=job, data=data)
    except ValidationError as exc:
        return JsonResponse({"errors": exc.message_dict}, status=400)
    except playground.PlaygroundBusy as exc:
        return JsonResponse({"errors": {"__all__": [str(exc)]}}, status=429)
    except Exception as exc:  # the broker (Redis) is down: nothing was started
        return JsonResponse({"errors": {"__all__": [f"could not start the session: {exc}"]}}, status=503)
    return JsonResponse(started)
