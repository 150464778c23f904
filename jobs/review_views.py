"""The review desk: one job's pairs reviewed one at a time by keyboard or buttons (docs/UI.md "Review desk").

The page (/jobs/<id>/review/) is for whoever may see the job, its owner or staff; anyone else gets a 404, as on
the job page. Its script (static/jobs/review.js) moves between pairs and reviews them through the small JSON
endpoints below, which take the page's filter as query parameters, so "next" follows the filter. Every write
goes through jobs.services (pair_review, and jobs.services.review for bulk actions and the guidelines).
Errors come back as 400 {"errors": {field: [message]}}.
"""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import Http404, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from jobs import selectors, services
from jobs.api.json_checks import UnsafeJSON, loads
from jobs.models import GeneratedPair, Job
from jobs.services import review

# The desk's keys: (keys, the action the page's script binds them to, what the legend says). The legend and
# the script's bindings both come from this list; the edit box's own keys follow it in EDITOR_KEYS.
SHORTCUTS = (
    (("a",), "approve", "approve"),
    (("r",), "reject", "reject"),
    (("e",), "edit", "edit the chosen text"),
    (("j", "ArrowRight"), "next", "next pair"),
    (("k", "ArrowLeft"), "prev", "previous pair"),
    (("n",), "next_pending", "next pending pair"),
)
EDITOR_KEYS = ((("Ctrl+Enter", "Cmd+Enter"), "save the edit"), (("Esc",), "cancel the edit"))


def _job_or_404(user, job_id) -> Job:
    job = selectors.job_get(user=user, job_id=job_id)
    if job is None:
        raise Http404("no such job")
    return job


def _pair_or_404(job: Job, pair_id) -> GeneratedPair:
    try:
        pair = GeneratedPair.objects.select_related("reviewer").filter(job=job, pk=int(pair_id)).first()
    except (TypeError, ValueError):
        pair = None
    if pair is None:
        raise Http404("no such pair in this job")
    return pair


def _bad(exc: ValidationError) -> JsonResponse:
    errors = exc.message_dict if hasattr(exc, "error_dict") else {"__all__": exc.messages}
    return JsonResponse({"errors": errors}, status=400)


def _body(request) -> dict:
    """The request's JSON object (ValidationError when it is not one, or holds what cannot be stored)."""
    try:
        data = loads(request.body or b"{}")
    except (UnsafeJSON, ValueError) as exc:
        raise ValidationError({"body": [f"the body must be a JSON object: {exc}"]}) from None
    if not isinstance(data, dict):
        raise ValidationError({"body": ["the body must be a JSON object"]})
    return data


def _config(job: Job, flt: review.ReviewFilter, state: dict) -> dict:
    return {
        "job_id": job.pk,
        "state": state,
        "filter": flt.query(),
        "shortcuts": [{"keys": list(keys), "action": action} for keys, action, _ in SHORTCUTS],
        "urls": {
            "page": reverse("review_desk", args=[job.pk]),
            "state": reverse("review_state", args=[job.pk]),
            "act": reverse("review_act", args=[job.pk]),
            "bulk": reverse("review_bulk", args=[job.pk]),
            "guidelines": reverse("review_guidelines", args=[job.pk]),
        },
    }


@login_required
@require_GET
def review_desk(request, job_id: int):
    job = _job_or_404(request.user, job_id)
    errors: dict[str, list[str]] = {}
    try:
        flt = review.ReviewFilter.parse(request.GET)
    except ValidationError as exc:
        flt, errors = review.ReviewFilter(), exc.message_dict
    pair = _pair_or_404(job, request.GET["pair"]) if request.GET.get("pair") else review.review_start(job=job, flt=flt)
    state = review.review_state(job=job, flt=flt, pair=None if errors else pair)
    given = request.GET
    return render(
        request,
        "jobs/review.html",
        {
            "job": job,
            "state": state,
            "counts": state["counts"],
            "count_items": [(s, state["counts"][s]) for s in GeneratedPair.Review.values],
            "statuses": GeneratedPair.Review.values,
            "status": given.get("status", ""),
            "q": given.get("q", ""),
            "ranges": [
                {
                    "label": label,
                    "bounds": [(f"{prefix}_{end}", end, given.get(f"{prefix}_{end}", "")) for end in review.BOUNDS],
                }
                for prefix, (_, label) in review.REWARD_RANGES.items()
            ],
            "filtered": bool(flt.query()),
            "errors": errors,
            "shortcuts": [(keys, label) for keys, _, label in SHORTCUTS] + list(EDITOR_KEYS),
            "guidelines_max": review.GUIDELINES_MAX_CHARS,
            "config": _config(job, flt, state),
        },
        status=400 if errors else 200,
    )


@require_GET
def review_state(request, job_id: int):
    """One pair (?pair=ID; else where the desk opens) with its neighbours under the filter and the counts."""
    job = _job_or_404(request.user, job_id)
    try:
        flt = review.ReviewFilter.parse(request.GET)
    except ValidationError as exc:
        return _bad(exc)
    pair = _pair_or_404(job, request.GET["pair"]) if request.GET.get("pair") else review.review_start(job=job, flt=flt)
    return JsonResponse(review.review_state(job=job, flt=flt, pair=pair))


@require_POST
def review_act(request, job_id: int):
    """{"pair": ID, "action": "approve" | "reject" | "edit", "edited_text": "..."}: review it, then answer the
    state of the next pending pair under the filter (the same pair when none is left), with "reviewed"."""
    job = _job_or_404(request.user, job_id)
    try:
        flt = review.ReviewFilter.parse(request.GET)
        data = _body(request)
        pair = _pair_or_404(job, data.get("pair"))
        text = data.get("edited_text", "")
        if not isinstance(text, str):
            raise ValidationError({"edited_text": ["edited_text must be text"]})
        pair = services.pair_review(pair=pair, user=request.user, action=str(data.get("action")), edited_text=text)
    except ValidationError as exc:
        return _bad(exc)
    nxt = review.review_after(job=job, flt=flt, pair=pair)
    return JsonResponse({"reviewed": review.pair_view(pair), **review.review_state(job=job, flt=flt, pair=nxt)})


@require_POST
def review_bulk(request, job_id: int):
    """{"action": "approve" | "reject", "expect": N}: every pair the filter matches, when it still matches the N
    the user confirmed; answers {"done": count} and the desk's state at its start under the filter."""
    job = _job_or_404(request.user, job_id)
    try:
        flt = review.ReviewFilter.parse(request.GET)
        data = _body(request)
        expect = data.get("expect")
        if expect is not None and (not isinstance(expect, int) or isinstance(expect, bool)):
            raise ValidationError({"expect": ["expect must be the number of pairs confirmed"]})
        done = review.pairs_review_bulk(
            job=job, flt=flt, user=request.user, action=str(data.get("action")), expect=expect
        )
    except ValidationError as exc:
        return _bad(exc)
    state = review.review_state(job=job, flt=flt, pair=review.review_start(job=job, flt=flt))
    return JsonResponse({"done": done, **state})


@require_POST
def review_guidelines(request, job_id: int):
    """Save the job's review guidelines: JSON {"guidelines": "..."} from the page's script, or the page's form
    (without JavaScript), which goes back to the desk."""
    job = _job_or_404(request.user, job_id)
    is_json = request.content_type == "application/json"
    try:
        text = _body(request).get("guidelines", "") if is_json else request.POST.get("guidelines", "")
        if not isinstance(text, str):
            raise ValidationError({"guidelines": ["guidelines must be text"]})
        job = review.job_guidelines_set(job=job, text=text)
    except ValidationError as exc:
        if is_json:
            return _bad(exc)
        messages.error(request, "; ".join(exc.messages))
    if is_json:
        return JsonResponse({"guidelines": job.review_guidelines})
    return redirect("review_desk", job_id=job.pk)
