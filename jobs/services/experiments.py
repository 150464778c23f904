"""Experiments: one job request run over a grid of settings (docs/EXPERIMENTS.md).

A grid maps job-request paths to the values they take: ``alpha``, ``method``, ``methods``, ``params.<knob>`` or
``params.<stage>.<field>`` (e.g. ``params.seed``, ``params.sft.learning_rate``). Its cells are the cartesian
product, keys taken in sorted order (the last varies fastest); each cell is one job. Every cell is built and
checked first (job_build, as a single job would be), and only when all pass are the experiment and its jobs
stored, in one transaction; otherwise a 400 names each failing cell (``grid[3].params.sft.learning_rate``).

Cells that differ only in ``params.seed`` are one *setting*'s replicates: the aggregate (experiment_summary)
gives, per setting and method, the mean gold reward over seeds with a Student-t 95% interval, and each method's
paired difference against the baseline method (the same seed: the same data and weak pair).
"""

from __future__ import annotations

import copy
import itertools
import math
import re
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction

from jobs.models import Experiment, Job
from jobs.services.creation import (
    JobQuotaExceeded,
    _check_deployment,
    active_jobs,
    job_build,
    job_labels,
    job_store,
)
from jobs.services.lifecycle import job_cancel, job_retry
from ml.results import method_rows
from ml.stats import mean_ci, paired_diff

SEED_KEY = "params.seed"
# The request fields a grid may vary besides params paths, and the type each value must have.
GRID_FIELDS: dict[str, tuple[str, Any]] = {
    "alpha": ("a number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)),
    "method": ("a string", lambda v: isinstance(v, str)),
    "methods": ("a list of strings", lambda v: isinstance(v, list) and all(isinstance(m, str) for m in v)),
}
_PARAMS_PATH = re.compile(r"params\.([A-Za-z_]\w*)(?:\.([A-Za-z_]\w*))?")
DEFAULT_MAX_CELLS = 64
BASELINE_DEFAULT = "weak_sft"  # the paper's reference method, the baseline when every cell runs it


def max_cells() -> int:
    return int(getattr(settings, "EXPERIMENT_MAX_CELLS", DEFAULT_MAX_CELLS))


def grid_cells(grid: Any) -> list[dict[str, Any]]:
    """The grid's cells ({path: value}) in order; a ValidationError on ``grid`` naming each problem."""
    if not isinstance(grid, dict) or not grid:
        raise ValidationError({"grid": ["grid must be an object of job-request paths to lists of values"]})
    errors: list[str] = []
    for key, values in grid.items():
        if key not in GRID_FIELDS and not _PARAMS_PATH.fullmatch(key):
            errors.append(
                f"{key!r} is not a path a grid can vary: use {', '.join(GRID_FIELDS)}, params.<setting> or "
                "params.<stage>.<setting>"
            )
        elif not isinstance(values, list) or not values:
            errors.append(f"{key}: give a non-empty list of values")
        elif key in GRID_FIELDS and not all(GRID_FIELDS[key][1](v) for v in values):
            errors.append(f"{key}: every value must be {GRID_FIELDS[key][0]}")
    if errors:
        raise ValidationError({"grid": errors})
    count = math.prod(len(v) for v in grid.values())
    if count > max_cells():
        raise ValidationError(
            {"grid": [f"the grid has {count} cells; at most {max_cells()} (EXPERIMENT_MAX_CELLS) are allowed"]}
        )
    keys = sorted(grid)  # not the request's order: PostgreSQL's jsonb keeps no key order, and cells keep their index
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def cell_request(request: dict[str, Any], cell: dict[str, Any]) -> dict[str, Any]:
    """The job request of one cell: the experiment's request with the cell's values set at their paths."""
    out = copy.deepcopy(request)
    for key, value in cell.items():
        m = _PARAMS_PATH.fullmatch(key)
        if m is None:
            out[key] = value
            continue
        params: dict[str, Any] = out["params"] if isinstance(out.get("params"), dict) else {}
        out["params"] = params
        first, second = m.groups()
        if second is None:
            params[first] = value
        else:
            stage: dict[str, Any] = params[first] if isinstance(params.get(first), dict) else {}
            params[first] = {**stage, second: value}
    return out


def cell_label(cell: dict[str, Any]) -> str:
    """``alpha=0.2, seed=1``: a cell's values, params paths without their ``params.``."""
    return ", ".join(f"{k.removeprefix('params.')}={_show(v)}" for k, v in cell.items())


def _show(v: Any) -> str:
    return "+".join(map(str, v)) if isinstance(v, list) else str(v)


def experiment_create(
    *, user, name: str, request: dict[str, Any], grid: Any, baseline: str | None = None
) -> Experiment:
    """Check every cell as its own job, then store the experiment and one queued job per cell (all or nothing)."""
    exp_name, _ = job_labels(name, None)
    if not exp_name:
        raise ValidationError({"name": ["give the experiment a name"]})
    if not isinstance(request, dict):
        raise ValidationError({"job": ["job must be a job request object"]})
    cells = grid_cells(grid)
    active, cap = active_jobs(user)
    if cap and active + len(cells) > cap:
        raise JobQuotaExceeded(
            f"this experiment makes {len(cells)} jobs, and you have {active} queued or running (the limit is {cap}), "
            f"so at most {max(cap - active, 0)} more can be queued now; shrink the grid, or wait for some jobs to "
            "finish or cancel some"
        )
    labels = {k: request.get(k) for k in ("name", "tags")}
    try:
        base_name, tags = job_labels(**labels)
    except ValidationError as exc:
        raise ValidationError({f"job.{k}": v for k, v in exc.message_dict.items()}) from None
    configs, errors = _build_cells(user, request, cells)
    baseline = _baseline(baseline, configs, errors)
    if errors:
        raise ValidationError(errors)
    with transaction.atomic():
        exp = Experiment.objects.create(owner=user, name=exp_name, request=request, grid=grid, baseline=baseline)
        for cell, config in zip(cells, configs):
            job_name = f"{base_name or exp_name} [{cell_label(cell)}]"
            max_len = Job._meta.get_field("name").max_length or 200
            job_store(user=user, config=config, name=job_name[:max_len], tags=tags, experiment=exp)
    return exp


def _build_cells(user, request: dict[str, Any], cells: list[dict[str, Any]]) -> tuple[list[dict], dict[str, list]]:
    """Each cell's config (job_build, then what this deployment can run); errors keyed grid[i].<path>, or job.<path>
    once when every cell has the same one (it is the request's, not a cell's)."""
    configs: list[dict] = []
    per_cell: list[dict[str, list[str]]] = []
    for cell in cells:
        req = {k: v for k, v in cell_request(request, cell).items() if k not in ("name", "tags")}
        try:
            config = job_build(user=user, **req)
            _check_deployment(config["spec"])
        except ValidationError as exc:
            per_cell.append(exc.message_dict if hasattr(exc, "error_dict") else {"__all__": exc.messages})
            continue
        except TypeError:  # a field job_build does not take: the request's serializer lets none through
            per_cell.append({"job": ["the job request has fields a job does not take"]})
            continue
        configs.append(config)
        per_cell.append({})
    errors: dict[str, list[str]] = {}
    # An error every cell has (a missing model, a typo in a setting the grid does not touch) is the request's.
    shared: set[tuple[str, str]] = set()
    if len(cells) > 1 and all(per_cell):
        shared = {(k, m) for k, msgs in per_cell[0].items() for m in msgs}
        shared = {(k, m) for k, m in shared if all(m in e.get(k, []) for e in per_cell)}
    for k, m in sorted(shared):
        errors.setdefault("job" if k == "__all__" else f"job.{k}", []).append(m)
    for i, (cell, e) in enumerate(zip(cells, per_cell)):
        for k, msgs in e.items():
            for m in msgs:
                if (k, m) not in shared:
                    key = f"grid[{i}]" + ("" if k == "__all__" else f".{k}")
                    errors.setdefault(key, []).append(f"(cell {cell_label(cell)}) {m}")
    return configs, errors


def _baseline(baseline: str | None, configs: list[dict], errors: dict[str, list[str]]) -> str:
    """The method the others are compared with: the one asked for (every cell must run it), else weak_sft when
    every cell runs it, else none."""
    runs = [set((c.get("spec") or {}).get("methods") or []) for c in configs]
    if baseline:
        if errors:
            return baseline
        missing = [i for i, r in enumerate(runs) if baseline not in r]
        if missing:
            errors["baseline"] = [
                f"baseline {baseline!r} is not among the methods of every cell (cells {missing[:5]} do not run it); "
                "it must be one of the methods each job evaluates (kind=cong)"
            ]
        return baseline
    return BASELINE_DEFAULT if runs and all(BASELINE_DEFAULT in r for r in runs) else ""


def experiment_jobs(exp: Experiment) -> list[Job]:
    """Its jobs in cell order (they were created in that order)."""
    return list(Job.objects.filter(experiment=exp).order_by("id"))


def experiment_cancel(*, experiment: Experiment, user=None) -> dict[str, Any]:
    """Cancel every cell still queued or running; the others are left as they are."""
    return _act(experiment, user, job_cancel, Job.ACTIVE)


def experiment_retry(*, experiment: Experiment, user=None) -> dict[str, Any]:
    """Queue again every cell that failed or was cancelled; the others are left as they are."""
    return _act(experiment, user, job_retry, (Job.Status.FAILED, Job.Status.CANCELLED))


def _act(exp: Experiment, user, service, statuses) -> dict[str, Any]:
    changed, unchanged = [], []
    for job in experiment_jobs(exp):
        if job.status not in statuses:
            unchanged.append({"job": job.pk, "reason": f"{job.status}: nothing to do"})
            continue
        try:
            service(job=job, user=user)
            changed.append(job.pk)
        except ValidationError as exc:
            unchanged.append({"job": job.pk, "reason": "; ".join(exc.messages)})
    return {"id": exp.pk, "changed": changed, "unchanged": unchanged}


# --- the aggregate ----------------------------------------------------------------------------------------------
def job_gold_rows(kind: str, results: Any) -> list[tuple[str, str, float | None]]:
    """(method key, label, gold mean) of each evaluated row: cong/train results keyed by method name (a baseline
    names one), the other kinds by ml.results' row label."""
    # method_rows lists pipeline methods in the pipeline's order whatever the database kept of the JSON's.
    rows = method_rows(kind, results if isinstance(results, dict) else None)
    return [(r.key or r.method, r.method, r.gold_mean) for r in rows]


def _finite(x: Any) -> Any:
    return None if isinstance(x, float) and not math.isfinite(x) else x


def _interval(s: dict[str, Any]) -> dict[str, Any]:
    """ml.stats' {mean, ci, n} with JSON's null where there is nothing to say (no seeds: NaN)."""
    return {"mean": _finite(s["mean"]), "ci": [_finite(x) for x in s["ci"]], "n": s["n"]}


def _value_at(config: dict[str, Any], path: str) -> Any:
    """What a stored job config holds at a grid path (the request's params are stored as given)."""
    m = _PARAMS_PATH.fullmatch(path)
    if m is None:
        return config.get(path)
    value: Any = config.get("params") or {}
    for part in (p for p in m.groups() if p is not None):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _cell_jobs(cells: list[dict[str, Any]], jobs: list[Job]) -> list[Job | None]:
    """Each cell's job, found by the values its config holds at the grid's paths (a deleted job leaves a gap)."""
    left = list(jobs)
    out: list[Job | None] = []
    for cell in cells:
        job = next((j for j in left if all(_value_at(j.config or {}, k) == v for k, v in cell.items())), None)
        if job is not None:
            left.remove(job)
        out.append(job)
    return out


def experiment_summary(exp: Experiment) -> dict[str, Any]:
    """Cells, their jobs and states, and per setting (cells equal but for the seed) and method: the mean gold over
    the finished seeds with its 95% interval, n, and the paired difference against the baseline; the plots' data."""
    cells = grid_cells(exp.grid)
    jobs = experiment_jobs(exp)
    out_cells: list[dict[str, Any]] = []
    settings_: dict[str, dict[str, Any]] = {}
    for i, (cell, job) in enumerate(zip(cells, _cell_jobs(cells, jobs))):
        seed = cell.get(SEED_KEY, i)
        setting = {k: v for k, v in cell.items() if k != SEED_KEY}
        key = repr(sorted((k, repr(v)) for k, v in setting.items()))
        st = settings_.setdefault(
            key, {"values": setting, "label": cell_label(setting) or "all cells", "jobs": [], "by_seed": {}}
        )
        status = job.status if job is not None else "deleted"
        st["jobs"].append({"id": job.pk if job else None, "seed": cell.get(SEED_KEY), "status": status})
        out_cells.append(
            {"index": i, "job": job.pk if job else None, "status": status, "values": cell, "label": cell_label(cell)}
        )
        if job is not None and job.status == Job.Status.SUCCEEDED:
            st["by_seed"][repr(seed)] = (seed, job_gold_rows(job.kind, job.results))
    aggregates = [_setting_aggregate(st, exp.baseline) for st in settings_.values()]
    counts: dict[str, int] = {}
    for c in out_cells:
        counts[c["status"]] = counts.get(c["status"], 0) + 1
    return {
        "cells": out_cells,
        "status_counts": counts,
        "finished": sum(1 for j in jobs if j.is_finished),
        "aggregates": aggregates,
        "plots": _plots(exp, aggregates),
    }


def _setting_aggregate(st: dict[str, Any], baseline: str) -> dict[str, Any]:
    by_seed: dict[str, tuple[Any, list[tuple[str, str, float | None]]]] = st["by_seed"]
    labels: dict[str, str] = {}
    golds: dict[str, dict[str, float]] = {}  # method -> seed (repr) -> gold
    for seed, (_, rows) in by_seed.items():
        for key, label, gold in rows:
            labels.setdefault(key, label)
            if gold is not None:
                golds.setdefault(key, {})[seed] = gold
    methods = []
    for key, label in labels.items():
        per_seed = golds.get(key, {})
        diff = None
        if baseline and key != baseline and baseline in golds:
            diff = _interval(paired_diff(per_seed, golds[baseline]))
        stats = _interval(mean_ci(list(per_seed.values())).as_dict())
        methods.append(
            {"method": key, "label": label, **stats, "seeds": [by_seed[k][0] for k in per_seed], "diff": diff}
        )
    total = len(st["jobs"])
    return {
        "values": st["values"],
        "label": st["label"],
        "jobs": st["jobs"],
        "done": len(by_seed),
        "total": total,
        "partial": len(by_seed) < total,
        "methods": methods,
    }


def _plots(exp: Experiment, aggregates: list[dict[str, Any]]) -> dict[str, Any]:
    """gold_vs_alpha (when the grid varies alpha): one series per method (and other grid values), a point per
    alpha with its interval; methods: every setting's methods with their intervals."""
    points = [
        {
            "setting": a["label"],
            "method": m["method"],
            "label": m["label"],
            "mean": m["mean"],
            "ci": m["ci"],
            "n": m["n"],
        }
        for a in aggregates
        for m in a["methods"]
    ]
    by_alpha = None
    if len(exp.grid.get("alpha") or []) > 1:
        series: dict[str, dict[str, Any]] = {}
        for a in aggregates:
            rest = cell_label({k: v for k, v in a["values"].items() if k != "alpha"})
            for m in a["methods"]:
                name = m["label"] + (f" ({rest})" if rest else "")
                s = series.setdefault(name, {"name": name, "method": m["method"], "points": []})
                s["points"].append({"alpha": a["values"]["alpha"], "mean": m["mean"], "ci": m["ci"], "n": m["n"]})
        for s in series.values():
            s["points"].sort(key=lambda p: p["alpha"])
        by_alpha = list(series.values())
    return {"gold_vs_alpha": by_alpha, "methods": points}
