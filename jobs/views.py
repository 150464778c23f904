"""Server-rendered pages. Thin: reads through jobs.selectors / jobs.page_selectors, writes through
jobs.services; a job the user may not see is a 404, exactly as in the API."""

from __future__ import annotations

from urllib.parse import urlencode

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

from jobs import compare_data, job_table, page_selectors, selectors, services
from jobs.forms import JobForm, stages_by_method
from jobs.login_forms import ThrottledAuthenticationForm
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
    q = request.GET
    status = q.get("status") or None
    kind = q.get("kind") if q.get("kind") in Job.Kind.values else None
    qs = job_table.filter_labels(
        selectors.job_list(user=request.user, status=status, kind=kind), tag=q.get("tag"), search=q.get("q")
    )
    jobs = list(qs.values(*DASHBOARD_COLUMNS, *job_table.table_lookups())[:DASHBOARD_ROWS])
    # One reverse() for the page, not two {% url %} per row; the id in the middle is what changes.
    url_head, url_tail = reverse("job_detail", args=[0]).rsplit("/0/", 1)
    for j in jobs:
        job_table.table_row(j)  # name, alpha, methods, size, duration, headline score (jobs.job_table)
        # Strings where the template would otherwise localize numbers one by one.
        j["pk"] = str(j["id"])
        j["url"] = f"{url_head}/{j['id']}/{url_tail}"
        j["kind_label"] = KIND_LABELS.get(j["kind"], j["kind"])
        j["pct"] = "100" if j["status"] == Job.Status.SUCCEEDED else str(round(j["progress"] * 100))
        j["created_iso"] = timezone.localtime(j["created"]).isoformat()  # what |date:'c' gave, at a tenth the cost
    sort = q.get("sort", "")
    jobs = job_table.sort_rows(jobs, sort)
    # Each column header links to its sort (again: the other way), keeping the filters.
    keep = {k: v for k, v in q.items() if k in ("status", "kind", "tag", "q") and v}
    sorts = {key: "?" + urlencode({**keep, "sort": f"-{key}" if sort == key else key}) for key in job_table.SORTS}
    return render(
        request,
        "jobs/dashboard.html",
        {
            "jobs": jobs,
            "active": any(j["status"] in Job.ACTIVE for j in jobs),
            "status_filter": q.get("status", ""),
            "statuses": Job.Status.choices,
            "kind_filter": kind or "",
            "kinds": Job.Kind.choices,
            "tag_filter": q.get("tag", ""),
            "search": q.get("q", ""),
            "sort": sort,
            "sorts": sorts,
            "truncated": len(jobs) == DASHBOARD_ROWS,
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
        if request.GET.get("clone"):  # "Clone with changes" (job page): the form filled from that job's request
            initial = _clone_initial(_job_or_404(request.user, request.GET["clone"]))
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


def _clone_initial(job: Job) -> dict:
    """The new-job form's values for a copy of ``job``: its request as stored (models and datasets by id, its own
    params, golds by the names the form offers), named after it."""
    cfg = job.config or {}
    initial = {"kind": job.kind, "params": cfg.get("params") or {}}
    for key in ("weak_base", "weak_aligned", "strong", "prompts"):
        if isinstance(cfg.get(key), dict):
            initial[key] = str(cfg[key].get("id"))
    for key in ("alpha", "methods", "method"):
        if cfg.get(key) not in (None, ""):
            initial[key] = cfg[key]
    for key in ("gold", "eval_gold"):
        gold = cfg.get(key)
        if isinstance(gold, dict):  # a reward model as the form's choice rm:<id>, else the gold's name
            initial[key] = f"rm:{gold['model']['id']}" if isinstance(gold.get("model"), dict) else gold.get("name")
    initial["name"] = f"{job.name or f'job {job.pk}'} (changed)"
    initial["tags"] = ", ".join(job.tags or [])
    return initial


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


COMPARE_MAX = 20  # jobs on one compare page


def _compare_ids(request) -> list[str]:
    """?ids=1,2,3 (or ids=1&ids=2: the dashboard's check boxes), else the two-job form's ?a=&b=."""
    ids = [p for raw in request.GET.getlist("ids") for p in raw.replace(" ", ",").split(",") if p]
    return ids or [x for x in (request.GET.get("a"), request.GET.get("b")) if x]


@login_required
def compare(request):
    ids = _compare_ids(request)
    a_id, b_id = request.GET.get("a", ""), request.GET.get("b", "")
    choices = selectors.job_list(user=request.user)[:200]
    if len(ids) < 2:
        return render(request, "jobs/compare.html", {"choices": choices, "a_id": a_id, "b_id": b_id})
    if len(ids) > COMPARE_MAX:
        messages.warning(request, f"Showing the first {COMPARE_MAX} of the {len(ids)} jobs asked for.")
        ids = ids[:COMPARE_MAX]
    jobs = [_job_or_404(request.user, pk) for pk in ids]
    sides = [
        {
            "job": job,
            "key": chr(ord("a") + i) if i < 26 else f"s{i}",  # a, b: the two-job page's names, kept
            "label": compare_data.job_label(job),
            "models": page_selectors.job_models(job),
            "results": page_selectors.results_table(job.kind, job.results),
            "url": reverse("job_detail", args=[job.pk]),
        }
        for i, job in enumerate(jobs)
    ]
    # One merged table: each method once, every job's gold mean side by side (B - A when there are two).
    methods = list(dict.fromkeys(r["method"] for s in sides for r in s["results"]))
    merged = []
    for m in methods:
        cells = [next((r for r in s["results"] if r["method"] == m), None) for s in sides]
        golds = [c["gold_mean"] if c else None for c in cells]
        diff = golds[1] - golds[0] if len(golds) == 2 and None not in golds else None
        merged.append({"method": m, "cells": cells, "diff": diff})
    return render(
        request,
        "jobs/compare.html",
        {
            "choices": choices,
            "a_id": a_id,
            "b_id": b_id,
            "ids": ",".join(ids),
            "sides": sides,
            "merged": merged,
            "config_diff": compare_data.config_diff(jobs),
            "sweeps": {s["key"]: page_selectors.alpha_sweep(s["job"].kind, s["job"].results) for s in sides},
            "metrics": compare_data.metric_series(jobs),
        },
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
