"""Read-only shaping of stored data for the server-rendered pages (no rules, no writes).

A job's ``results`` are read per kind by ml.results (their layouts are versioned there); these helpers only
shape them for the templates.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from django.db.models import Avg

from jobs import selectors
from jobs.models import GeneratedPair, Job
from ml.results import method_rows, sweep_points
from ml.spec import DEFAULT_ALPHA, DEFAULT_CONG_METHODS


def results_table(kind: str, results: Any) -> list[dict[str, Any]]:
    """One row per evaluated method (pipelines), the model (evaluate) or alpha (alpha_sweep): ml.results reads
    each kind's layout, nothing is guessed from key names."""
    return [asdict(r) for r in method_rows(kind, results if isinstance(results, dict) else None)]


def alpha_sweep(kind: str, results: Any) -> list[dict[str, float | None]]:
    """Points (alpha, gold, implicit) of an alpha sweep or a pre-flight check's CD runs, sorted by alpha."""
    pts = sweep_points(kind, results if isinstance(results, dict) else None)
    return [{"alpha": p.alpha, "gold": p.gold, "implicit": p.implicit} for p in pts]


def sweep_with_pair_implicit(*, job: Job) -> list[dict[str, float | None]]:
    """alpha_sweep's points with each missing implicit reward taken from the job's stored pairs of that alpha
    (their mean implicit reward summed over tokens, the unit the sweep reports): a sweep whose results lack it
    still has it in its pairs, which the scatter plots, so the chart must not say "no data"."""
    pts = alpha_sweep(job.kind, job.results)
    if all(p["implicit"] is not None for p in pts):
        return pts
    rows = (
        GeneratedPair.objects.filter(job=job, implicit_reward_sum__isnull=False, alpha__isnull=False)
        .values("alpha")
        .annotate(mean=Avg("implicit_reward_sum"))
        .values_list("alpha", "mean")
    )
    by_alpha = {round(float(a), 9): float(m) for a, m in rows if a is not None and m is not None}
    for p in pts:
        alpha = p["alpha"]
        if p["implicit"] is None and alpha is not None:
            p["implicit"] = by_alpha.get(round(float(alpha), 9))
    return pts


# What the samples box says while it has no sample, per kind and status: a finished job's note says why it has
# none; an active job's changes live (static/jobs/job_live.js) when it starts running.
SAMPLES_RUNNING = "No samples yet; they appear here as the job produces them."
_NO_SAMPLES_KIND = {
    "weak_align": "weak_align trains the weak aligned model (pi_post); it makes no samples.",
}
_NO_SAMPLES_STATUS: dict[str, str] = {
    Job.Status.SUCCEEDED: "This job reported no samples.",
    Job.Status.FAILED: "The job failed before it reported any sample.",
    Job.Status.CANCELLED: "The job was cancelled before it reported any sample.",
}


def samples_note(*, job: Job) -> str:
    """The samples box's text while it has no sample."""
    if job.status == Job.Status.QUEUED:
        return f"Waiting to start: {job.waiting_for}" if job.waiting_for else "Waiting to start."
    if job.status in Job.ACTIVE:
        return SAMPLES_RUNNING
    if job.kind == "preflight":
        verdict = (job.results or {}).get("verdict") if isinstance(job.results, dict) else None
        if verdict:
            return f"A pre-flight check's result is its verdict ({verdict}, above); it keeps no samples."
        return "The pre-flight check ended without a verdict; see the error and the log."
    return _NO_SAMPLES_KIND.get(job.kind) or _NO_SAMPLES_STATUS.get(str(job.status), "This job reported no samples.")


def pair_points(*, job: Job, limit: int = 600) -> list[list[float]]:
    """(implicit reward, gold reward) of the job's generated pairs that have both, for the scatter plot. The
    implicit reward summed over tokens, as the sweep and method points report it (one unit on one axis);
    pairs stored before sums were (migration 0011) have none and are left out."""
    qs = (
        GeneratedPair.objects.filter(job=job, implicit_reward_sum__isnull=False, gold_reward__isnull=False)
        .order_by("prompt_index")
        .values_list("implicit_reward_sum", "gold_reward")[:limit]
    )
    return [[float(a), float(b)] for a, b in qs if a is not None and b is not None]


def scatter(*, job: Job) -> dict[str, Any]:
    """Implicit vs gold reward: per generated pair when pairs carry both; else one point per alpha of a
    sweep; else one point per evaluated method. ``{"unit": ..., "points": [[implicit, gold, label]]}``."""
    pts = pair_points(job=job)
    if pts:
        return {"unit": "pairs", "points": [[a, b, ""] for a, b in pts]}
    sweep = [p for p in alpha_sweep(job.kind, job.results) if p["gold"] is not None and p["implicit"] is not None]
    if sweep:
        return {"unit": "alphas", "points": [[p["implicit"], p["gold"], f"alpha {p['alpha']:g}"] for p in sweep]}
    rows = [
        r for r in results_table(job.kind, job.results) if r["gold_mean"] is not None and r["implicit_mean"] is not None
    ]
    return {"unit": "methods", "points": [[r["implicit_mean"], r["gold_mean"], r["method"]] for r in rows]}


def job_models(job: Job) -> list[tuple[str, str]]:
    """(role, model name) pairs from the job's stored config, for display."""
    cfg = job.config or {}
    out = []
    for role, label in (
        ("weak_base", "weak base (pi_pre)"),
        ("weak_aligned", "weak aligned (pi_post)"),
        ("strong", "strong"),
    ):
        ref = cfg.get(role)
        if isinstance(ref, dict):
            out.append((label, str(ref.get("name") or ref.get("id"))))
    if isinstance(cfg.get("prompts"), dict):
        out.append(("prompts", str(cfg["prompts"].get("name"))))
    return out


def job_presets(*, user) -> list[dict[str, Any]]:
    """Form presets as ``{"name", "request"}`` (the API's shape): the toy-world and offline ones from
    jobs.selectors.presets, plus one ConG preset per pi_post a weak_align job registered (its pi_pre is
    stored as ``aligned_from``, never guessed from names) that has a strong model of its family. The prompts
    are left for the user to pick: no dataset belongs to a family."""
    presets = list(selectors.presets(user=user))
    models = list(selectors.models_visible(user=user).exclude(name__startswith="toy-"))
    for aligned in (m for m in models if m.aligned_from_id is not None):
        base = next((m for m in models if m.pk == aligned.aligned_from_id), None)
        strong = next(
            (
                m
                for m in models
                if m.kind in ("strong", "any") and m.family == aligned.family and m not in (base, aligned)
            ),
            None,
        )
        if base is None or strong is None or not aligned.family:
            continue
        req = {
            "kind": "cong",
            "weak_base": base.pk,
            "weak_aligned": aligned.pk,
            "strong": strong.pk,
            "prompts": None,
            "alpha": DEFAULT_ALPHA,
            "methods": list(DEFAULT_CONG_METHODS),
        }
        presets.append({"name": f"{aligned.family}: ConG with {aligned.name}", "request": req})
    return presets


# --- the spec a job runs, as the job page shows it ------------------------------------------------------------
def show_value(value: Any) -> str:
    """A setting's value as the pages write it (and as the new-job page's inputs take it back)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ", ".join(show_value(v) for v in value)
    return str(value)


_NO_DEFAULT = object()


def _spec_row(name: str, value: Any, default: Any = _NO_DEFAULT, help_: str = "") -> dict[str, Any]:
    has = default is not _NO_DEFAULT
    norm = lambda v: list(v) if isinstance(v, tuple) else v
    return {
        "field": name,
        "value": show_value(value),
        "default": show_value(default) if has else "",
        "changed": has and norm(value) != norm(default),
        "help": help_,
    }


def spec_view(*, job: Job) -> dict[str, Any] | None:
    """The job's spec (what runs, defaults filled) for the job page: the top values, then per stage each field
    with its value and its default in this kind (ml.spec's registry), ``changed`` when they differ. None when
    no spec can be made (an old job whose stored params no longer resolve)."""
    from ml.spec import field_default, help_of, registry, settable, top_settable

    spec = selectors.job_spec_or_none(job=job)
    if not isinstance(spec, dict):
        return None
    ks = registry().get(str(spec.get("kind")))
    top = [
        _spec_row(k, spec[k])
        for k in ("kind", "alpha", "methods", "method", "alphas")
        if spec.get(k) not in (None, "", [])
    ]
    known_top = top_settable()
    for name, value in (spec.get("top") or {}).items():
        f = known_top[name][0] if name in known_top else None
        top.append(_spec_row(name, value, field_default(f), help_of(f)) if f else _spec_row(name, value))
    stages = []
    for stage, values in (spec.get("stages") or {}).items():
        st = ks.stages.get(stage) if ks else None
        known = settable(st) if st else {}
        context = st.defaults if st else {}  # the kind's own defaults for this stage, over the class's
        rows = [
            _spec_row(n, v, context.get(n, field_default(known[n][0])), help_of(known[n][0]))
            if n in known
            else _spec_row(n, v)
            for n, v in (values or {}).items()
        ]
        stages.append(
            {
                "name": stage,
                "cls": st.cls.__name__ if st else "",
                "rows": rows,
                "changed": sum(r["changed"] for r in rows),
            }
        )
    return {"top": top, "stages": stages}


def request_lines(params: Any, prefix: str = "") -> list[str]:
    """A request's params as ``key.path = value`` lines (what the user asked for, before defaults), sorted by key:
    the database may not keep a JSON object's key order (PostgreSQL's jsonb does not)."""
    if not isinstance(params, dict):
        return [] if params in (None, "") else [f"{prefix or 'params'} = {show_value(params)}"]
    out = []
    for key, value in sorted(params.items()):
        path = f"{prefix}.{key}" if prefix else str(key)
        out.extend(request_lines(value, path) if isinstance(value, dict) else [f"{path} = {show_value(value)}"])
    return out
