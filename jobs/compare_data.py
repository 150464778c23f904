"""What the compare and experiment pages show of several jobs at once (read-only): each metric's curves, one series
per job; the settings that differ between the jobs' specs; the pages' job labels."""

from __future__ import annotations

from typing import Any

from django.db.models import Q

from jobs import selectors
from jobs.models import Job, JobEvent
from jobs.page_selectors import show_value

STAGE_LOG = "pipeline: stage "  # ml.pipeline's log line naming the stage whose metrics follow (job_charts.js too)
METRIC_EVENTS_MAX = 50_000  # per page: enough for every metric of a few dozen long jobs, bounded for one query


def job_label(job: Job, extra: str = "") -> str:
    """``job 12 (name)``: what a series, a column or a legend calls a job."""
    what = extra or job.name
    return f"job {job.pk}" + (f" ({what})" if what else "")


def metric_series(jobs: list[Job], labels: dict[int, str] | None = None) -> dict[str, list[dict[str, Any]]]:
    """metric name -> one series per job that logged it ({name, job, points: [[step, value]]}), from the jobs'
    metric events, in one query. A pipeline logs the same metric in several stages (sft/loss in ConG-S's SFT and
    WeakSFT's): the stage it announced last names those series apart ("job 3 (a) sft_weak")."""
    labels = labels or {}
    names = {j.pk: labels.get(j.pk) or job_label(j) for j in jobs}
    rows = (
        JobEvent.objects.filter(job__in=[j.pk for j in jobs])
        .filter(Q(type=JobEvent.Type.METRIC) | Q(type=JobEvent.Type.LOG, data__message__startswith=STAGE_LOG))
        .order_by("job_id", "seq")
        .values_list("job_id", "type", "data")[:METRIC_EVENTS_MAX]
    )
    # (metric, job) -> stage -> step -> value
    found: dict[tuple[str, int], dict[str, dict[float, float]]] = {}
    stage: dict[int, str] = {}
    for job_id, type_, data in rows:
        if not isinstance(data, dict):
            continue
        if type_ == JobEvent.Type.LOG:
            stage[job_id] = str(data.get("message", ""))[len(STAGE_LOG) :].split(" ")[0]
            continue
        name, value, step = data.get("name"), data.get("value"), data.get("step")
        if not isinstance(name, str) or not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        pts = found.setdefault((name, job_id), {}).setdefault(stage.get(job_id, ""), {})
        pts[step if isinstance(step, (int, float)) and not isinstance(step, bool) else len(pts)] = value
    out: dict[str, list[dict[str, Any]]] = {}
    order = {j.pk: i for i, j in enumerate(jobs)}  # series in the page's order of the jobs, like its columns
    for (name, job_id), by_stage in sorted(found.items(), key=lambda kv: (kv[0][0], order[kv[0][1]])):
        for st, pts in by_stage.items():
            label = names[job_id] + (f" {st}" if st and len(by_stage) > 1 else "")
            out.setdefault(name, []).append({"name": label, "job": job_id, "points": sorted(pts.items())})
    # Losses first (the curves people look for), then by name, as on the job page.
    return dict(sorted(out.items(), key=lambda kv: ("loss" not in kv[0].lower(), kv[0])))


def _flat(value: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flat(v, f"{prefix}.{k}" if prefix else str(k), out)
    else:
        out[prefix] = value


def job_settings(job: Job) -> dict[str, Any]:
    """A job's settings as key path -> value: its models and datasets by name, then its resolved spec (every stage
    field with its default filled, ml.resolve)."""
    cfg = job.config or {}
    out: dict[str, Any] = {"kind": job.kind}
    for key in ("weak_base", "weak_aligned", "strong", "judge", "prompts", "eval_prompts"):
        if isinstance(cfg.get(key), dict):
            out[key] = cfg[key].get("name")
    for key in ("gold", "eval_gold"):
        if isinstance(cfg.get(key), dict):
            out[key] = cfg[key].get("name")
    spec = selectors.job_spec_or_none(job=job) or {}
    for key in ("alpha", "methods", "method", "alphas"):
        if spec.get(key) not in (None, []):
            out[key] = spec[key]
    _flat(spec.get("top") or {}, "", out)
    _flat(spec.get("execution") or {}, "execution", out)
    _flat(spec.get("stages") or {}, "", out)
    return out


def config_diff(jobs: list[Job]) -> list[dict[str, Any]]:
    """The settings whose values are not the same in every job: {setting, values: [shown value per job]}, a
    setting a job does not have shown as "-"."""
    per_job = [job_settings(j) for j in jobs]
    keys = list(dict.fromkeys(k for s in per_job for k in s))
    missing = object()
    rows = []
    for key in keys:
        values = [s.get(key, missing) for s in per_job]
        if all(v == values[0] for v in values[1:]):
            continue
        rows.append({"setting": key, "values": ["-" if v is missing else show_value(v) for v in values]})
    return rows
