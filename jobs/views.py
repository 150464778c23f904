"""Server-rendered pages. Thin: reads through jobs.selectors / jobs.page_selectors, writes through
jobs.services; a job the user may not see is a 404, exactly as in the API."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import LoginView
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import connection
from django.http import Http404, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_POST

from jobs import page_selectors, selectors, services
from jobs.forms import JobForm, ThrottledAuthenticationForm, stages_by_method
from jobs.models import GeneratedPair, Job

# Events embedded in the job page; the page fetches the rest from the API (events?after=).
INITIAL_EVENTS = 2000
API = "/api/v1"


def healthz(request):
    """Liveness + database check, for load balancers and `make demo`'s wait loop."""
    with connection.cursor() as cur:
        cur.execute("SELECT 1")
    return JsonResponse({"ok": True})


def _job_or_404(user, job_id) -> Job:
    job = selectors.job_get(user=user, job_id=job_id)
    if job is None:
        raise Http404("no such job")
    return job


# The dashboard's rows: at most this many, newest first, each only the columns it shows. Plain values(), not
# models: 200 Job and User instances, with their config and results JSON decoded, cost more than the page's
# whole template did (docs/BENCHMARKS.md, "Web tier").
DASHBOARD_ROWS = 200
DASHBOARD_COLUMNS = ("id", "kind", "status", "partial", "stage", "progress", "created", "finished", "owner__username")
KIND_LABELS = dict(Job.Kind.choices)


@login_required
def dashboard(request):
    status = request.GET.get("status") or None
    jobs = list(selectors.job_list(user=request.user, status=status).values(*DASHBOARD_COLUMNS)[:DASHBOARD_ROWS])
    # One reverse() for the page, not two {% url %} per row; the id in the middle is what changes.
    url_head, url_tail = reverse("job_detail", args=[0]).rsplit("/0/", 1)
    for j in jobs:
        # Strings where the template would otherwise localize numbers one by one.
        j["pk"] = str(j["id"])
        j["url"] = f"{url_head}/{j['id']}/{url_tail}"
        j["kind_label"] = KIND_LABELS.get(j["kind"], j["kind"])
        j["pct"] = "100" if j["status"] == Job.Status.SUCCEEDED else str(round(j["progress"] * 100))
        j["created_iso"] = timezone.localtime(j["created"]).isoformat()  # what |date:'c' gave, at a tenth the cost
    return render(
        request,
        "jobs/dashboard.html",
        {
            "jobs": jobs,
            "active": any(j["status"] in Job.ACTIVE for j in jobs),
            "status_filter": request.GET.get("status", ""),
            "statuses": Job.Status.choices,
        },
    )


@login_required
def job_new(request):
    presets = page_selectors.job_presets(user=request.user)
    if request.method == "POST":
        form = JobForm(request.POST, user=request.user)
        if form.is_valid():
            try:
                job = services.job_create(user=request.user, **form.service_kwargs())
            except ValidationError as exc:
                form.add_service_errors(exc)
            except services.JobQuotaExceeded as exc:
                form.add_error(None, str(exc))
            else:
                messages.success(request, f"Job {job.pk} queued.")
                return redirect("job_detail", job_id=job.pk)
        elif form.can_check:
            # Every error at once: the service judges what did parse (job_build stores nothing), so a typo in
            # one setting does not hide that, say, a model is missing.
            try:
                services.job_build(user=request.user, **form.service_kwargs())
            except ValidationError as exc:
                form.add_service_errors(exc)
    else:
        initial = {}
        chosen = next((p for p in presets if p["name"] == request.GET.get("preset")), None)
        if chosen:
            req = chosen["request"]
            initial = {
                k: req[k]
                for k in (
                    "kind",
                    "weak_base",
                    "weak_aligned",
                    "strong",
                    "prompts",
                    "alpha",
                    "methods",
                    "method",
                    "params",
                )
                if req.get(k) is not None
            }
        if request.GET.get("pairs_from"):  # "Train on reviewed pairs" (job page, review desk, admin)
            initial = {"kind": Job.Kind.TRAIN, "method": "dpo", "pairs_from": request.GET["pairs_from"]}
        form = JobForm(user=request.user, initial=initial or None)
    offline = None
    if request.user.is_staff:  # the install button and its state (jobs.services.offline_install_request)
        offline = {
            "status": services.offline_install_status(),
            "registered": any(
                p["request"].get("kind") == "weak_align" and p["name"].startswith("SmolLM2") for p in presets
            ),
        }
    return render(
        request,
        "jobs/job_new.html",
        {"form": form, "presets": presets, "offline": offline, "stages_by_method": stages_by_method()},
        status=400 if request.method == "POST" else 200,
    )


@login_required
@require_POST
def offline_install(request):
    """Staff: queue the offline models' install + registration (a Celery task; it takes minutes)."""
    if not request.user.is_staff:
        raise PermissionDenied("only staff can install the offline models")
    try:
        services.offline_install_request(user=request.user, size=request.POST.get("size") or "cpu")
        messages.info(
            request,
            "Installing the offline models in the background; reload this page to follow it. "
            "The SmolLM2 -> Gemma presets appear when it is done.",
        )
    except ValidationError as exc:
        messages.error(request, "; ".join(exc.messages))
    return redirect("job_new")


@login_required
def job_detail(request, job_id: int):
    job = _job_or_404(request.user, job_id)
    # The seq the rendered header covers. Read BEFORE the job row: every change of the row is stored before
    # the event that records it, so the row read next reflects every event up to here; the page lets only
    # later events move its header (a replayed "cancelled" of an earlier attempt must not).
    render_seq = selectors.job_events(job=job).order_by("-seq").values_list("seq", flat=True).first() or 0
    job.refresh_from_db()
    events = [e.as_message() for e in selectors.job_events(job=job, after=0, limit=INITIAL_EVENTS)]
    live = {
        "job_id": job.pk,
        "kind": job.kind,
        "finished": job.is_finished,
        "render_seq": render_seq,
        "header": {
            "status": job.status,
            "attempt": job.attempts,
            "max_attempts": job.max_attempts,
            "worker": job.worker,
            "stage": job.stage,
            "progress": job.progress,
            "partial": job.partial,
            "error": job.error,
            "finished": job.finished.isoformat() if job.finished else None,
            "waiting_for": job.waiting_for,
        },
        "events": events,
        "events_url": f"{API}/jobs/{job.pk}/events/",
        "ws_path": f"/ws/jobs/{job.pk}/",
        "cancel_url": f"{API}/jobs/{job.pk}/cancel/",
        "retry_url": f"{API}/jobs/{job.pk}/retry/",
        "sweep": page_selectors.sweep_with_pair_implicit(job=job),
        "scatter": page_selectors.scatter(job=job),
        "samples_running": page_selectors.SAMPLES_RUNNING,
        "pairs_url": f"{API}/jobs/{job.pk}/pairs/",
    }
    return render(
        request,
        "jobs/job_detail.html",
        {
            "job": job,
            "live": live,
            "models": page_selectors.job_models(job),
            "results": page_selectors.results_table(job.kind, job.results),
            "pair_count": GeneratedPair.objects.filter(job=job).count(),
            "shards": list(selectors.job_shards(job=job)),
            "spec": page_selectors.spec_view(job=job),
            "samples_note": page_selectors.samples_note(job=job),
            "request_lines": page_selectors.request_lines((job.config or {}).get("params")),
            "can_cancel": job.status in (Job.Status.QUEUED, Job.Status.RUNNING),
            "can_retry": job.status in (Job.Status.FAILED, Job.Status.CANCELLED),
        },
    )


def _job_action(request, job_id: int, service, done: str):
    """POST fallbacks for browsers without JavaScript (the page's buttons POST to the API): run the
    service, say what happened, and go back to the job page."""
    job = _job_or_404(request.user, job_id)
    try:
        service(job=job, user=request.user)
        messages.info(request, done)
    except ValidationError as exc:
        messages.error(request, "; ".join(exc.messages))
    return redirect("job_detail", job_id=job.pk)


@login_required
@require_POST
def job_cancel(request, job_id: int):
    return _job_action(request, job_id, services.job_cancel, "Cancel requested.")


@login_required
@require_POST
def job_retry(request, job_id: int):
    return _job_action(request, job_id, services.job_retry, "Job queued again.")


@login_required
def compare(request):
    a_id, b_id = request.GET.get("a"), request.GET.get("b")
    choices = selectors.job_list(user=request.user)[:200]
    if not a_id or not b_id:
        return render(request, "jobs/compare.html", {"choices": choices, "a_id": a_id or "", "b_id": b_id or ""})
    sides = []
    for job in (_job_or_404(request.user, a_id), _job_or_404(request.user, b_id)):
        sides.append(
            {
                "job": job,
                "models": page_selectors.job_models(job),
                "results": page_selectors.results_table(job.kind, job.results),
                "url": reverse("job_detail", args=[job.pk]),
            }
        )
    # One merged table: each method once, both jobs' gold mean side by side.
    methods = list(dict.fromkeys(r["method"] for s in sides for r in s["results"]))
    merged = []
    for m in methods:
        a = next((r for r in sides[0]["results"] if r["method"] == m), None)
        b = next((r for r in sides[1]["results"] if r["method"] == m), None)
        diff = (
            (b["gold_mean"] - a["gold_mean"])
            if a and b and a["gold_mean"] is not None and b["gold_mean"] is not None
            else None
        )
        merged.append({"method": m, "a": a, "b": b, "diff": diff})
    sweeps = {
        key: page_selectors.alpha_sweep(side["job"].kind, side["job"].results) for key, side in zip(("a", "b"), sides)
    }
    return render(
        request,
        "jobs/compare.html",
        {"choices": choices, "a_id": a_id, "b_id": b_id, "sides": sides, "merged": merged, "sweeps": sweeps},
    )


class ThrottledLoginView(LoginView):
    """/accounts/login/ behind the log-in throttle (jobs.api.login_guard): while the username or the
    client's address is locked the page says so, with status 429, whatever the password."""

    form_class = ThrottledAuthenticationForm

    def form_invalid(self, form):
        response = super().form_invalid(form)
        if form.throttled:
            response.status_code = 429
        return response
