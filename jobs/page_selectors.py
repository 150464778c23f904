"""Read-only shaping of stored data for the server-rendered pages (no rules, no writes).

A job's ``results`` JSON is written by the runner; these helpers find what the pages show in it without
assuming one exact layout: every dict that carries a ``gold_mean`` is one method's evaluation (its name
from ``name``/``method`` or its key), and every list of dicts carrying ``alpha`` is an alpha sweep.
"""

from __future__ import annotations

import math
from typing import Any

from jobs import selectors
from jobs.models import GeneratedPair, Job

RESULT_COLUMNS = ("method", "gold_mean", "gold_ci", "valid_rate", "implicit_mean", "win_rate", "n")


def _num(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x) if math.isfinite(float(x)) else None


def _win_rate(m: dict[str, Any]) -> tuple[float | None, str]:
    for k, v in m.items():
        if k.startswith("win_rate") and _num(v) is not None:
            return _num(v), k[len("win_rate_vs_"):] if k.startswith("win_rate_vs_") else ""
    return None, ""


def _method_row(name: str, m: dict[str, Any]) -> dict[str, Any]:
    ci = m.get("gold_ci") if isinstance(m.get("gold_ci"), (list, tuple)) and len(m.get("gold_ci")) == 2 else None
    win, vs = _win_rate(m)
    implicit = next((_num(m.get(k)) for k in ("implicit_mean", "mean_implicit_reward", "implicit_reward")
                     if _num(m.get(k)) is not None), None)
    return {"method": str(m.get("label") or m.get("name") or m.get("method") or name), "gold_mean": _num(m.get("gold_mean")),
            "gold_lo": _num(ci[0]) if ci else None, "gold_hi": _num(ci[1]) if ci else None,
            "valid_rate": _num(m.get("valid_rate")), "implicit_mean": implicit, "win_rate": win, "win_vs": vs,
            "n": m.get("n") if isinstance(m.get("n"), int) else None}


def results_table(results: Any) -> list[dict[str, Any]]:
    """One row per evaluated method found anywhere in ``results`` (depth-first, first name wins).

    Rows of an alpha sweep (a list of dicts with ``alpha``) are used only when there is nothing else,
    so a sweep job's table lists its alphas and a pipeline's table lists its methods."""
    rows: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
    seen: set[tuple[bool, str]] = set()

    def walk(node: Any, key: str, in_sweep: bool) -> None:
        if isinstance(node, dict):
            if "gold_mean" in node:
                row = _method_row(key, node)
                if (in_sweep, row["method"]) not in seen:
                    seen.add((in_sweep, row["method"]))
                    rows[in_sweep].append(row)
                return
            for k, v in node.items():
                if k != "config":
                    walk(v, str(k), in_sweep)
        elif isinstance(node, list):
            sweep = bool(node) and all(isinstance(x, dict) and "alpha" in x for x in node)
            for i, v in enumerate(node):
                walk(v, f"{key}[{i}]", in_sweep or sweep)

    walk(results, "result", False)
    return rows[False] or rows[True]


def alpha_sweep(results: Any) -> list[dict[str, float | None]]:
    """Points (alpha, gold, implicit) of the first alpha sweep found in ``results``, sorted by alpha."""
    def find(node: Any) -> list | None:
        if isinstance(node, list) and node and all(isinstance(x, dict) and _num(x.get("alpha")) is not None
                                                   for x in node):
            return node
        if isinstance(node, dict):
            for v in node.values():
                got = find(v)
                if got:
                    return got
        if isinstance(node, list):
            for v in node:
                got = find(v)
                if got:
                    return got
        return None

    pts = find(results) or []
    out = []
    for p in pts:
        gold = next((_num(p.get(k)) for k in ("gold_mean", "gold") if _num(p.get(k)) is not None), None)
        imp = next((_num(p.get(k)) for k in ("implicit_mean", "mean_implicit_reward", "implicit_reward",
                                             "mean_implicit_reward_per_token") if _num(p.get(k)) is not None), None)
        out.append({"alpha": _num(p.get("alpha")), "gold": gold, "implicit": imp})
    return sorted(out, key=lambda p: p["alpha"])


def pair_points(*, job: Job, limit: int = 600) -> list[list[float]]:
    """(implicit reward, gold reward) of the job's generated pairs that have both, for the scatter plot."""
    qs = (GeneratedPair.objects.filter(job=job, implicit_reward__isnull=False, gold_reward__isnull=False)
          .order_by("prompt_index").values_list("implicit_reward", "gold_reward")[:limit])
    return [[float(a), float(b)] for a, b in qs]


def scatter(*, job: Job) -> dict[str, Any]:
    """Implicit vs gold reward: per generated pair when pairs carry both; else one point per alpha of a
    sweep; else one point per evaluated method. ``{"unit": ..., "points": [[implicit, gold, label]]}``."""
    pts = pair_points(job=job)
    if pts:
        return {"unit": "pairs", "points": [[a, b, ""] for a, b in pts]}
    sweep = [p for p in alpha_sweep(job.results) if p["gold"] is not None and p["implicit"] is not None]
    if sweep:
        return {"unit": "alphas", "points": [[p["implicit"], p["gold"], f"alpha {p['alpha']:g}"] for p in sweep]}
    rows = [r for r in results_table(job.results) if r["gold_mean"] is not None and r["implicit_mean"] is not None]
    return {"unit": "methods", "points": [[r["implicit_mean"], r["gold_mean"], r["method"]] for r in rows]}


def job_models(job: Job) -> list[tuple[str, str]]:
    """(role, model name) pairs from the job's stored config, for display."""
    cfg = job.config or {}
    out = []
    for role, label in (("weak_base", "weak base (pi_pre)"), ("weak_aligned", "weak aligned (pi_post)"),
                        ("strong", "strong")):
        ref = cfg.get(role)
        if isinstance(ref, dict):
            out.append((label, str(ref.get("name") or ref.get("id"))))
    if isinstance(cfg.get("prompts"), dict):
        out.append(("prompts", str(cfg["prompts"].get("name"))))
    return out


def job_presets(*, user) -> list[dict[str, Any]]:
    """Form presets as ``{"name", "request"}`` (the API's shape): the toy-world ones from
    jobs.selectors.presets, plus one ConG preset per other model family that has a weak pair sharing a
    vocabulary and a strong model (e.g. the real offline models once registered)."""
    presets = list(selectors.presets(user=user))
    models = [m for m in selectors.models_visible(user=user) if not m.name.startswith("toy-") and m.family]
    datasets = list(selectors.datasets_visible(user=user))
    families: dict[str, list] = {}
    for m in models:
        families.setdefault(m.family, []).append(m)
    for fam, ms in sorted(families.items()):
        weak = [m for m in ms if m.kind in ("weak", "any")]
        base = next((m for m in weak if "base" in m.name or "pre" in m.name), None)
        aligned = next((m for m in weak if base is not None and m is not base
                        and m.vocab_fingerprint == base.vocab_fingerprint), None)
        strong = next((m for m in ms if m.kind in ("strong", "any") and m not in (base, aligned)), None)
        if base is None or aligned is None or strong is None:
            continue
        req = {"kind": "cong", "weak_base": base.pk, "weak_aligned": aligned.pk, "strong": strong.pk,
               "prompts": datasets[0].pk if datasets else None, "alpha": 0.4, "methods": ["cong_s", "cong"]}
        presets.append({"name": f"{fam}: full ConG pipeline", "request": req})
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
    norm = (lambda v: list(v) if isinstance(v, tuple) else v)
    return {"field": name, "value": show_value(value), "default": show_value(default) if has else "",
            "changed": has and norm(value) != norm(default), "help": help_}


def spec_view(*, job: Job) -> dict[str, Any] | None:
    """The job's spec (what runs, defaults filled) for the job page: the top values, then per stage each field
    with its value and its default in this kind (ml.spec's registry), ``changed`` when they differ. None when
    no spec can be made (an old job whose stored params no longer resolve)."""
    from ml.spec import field_default, help_of, registry, settable, top_settable

    spec = selectors.job_spec_or_none(job=job)
    if not isinstance(spec, dict):
        return None
    ks = registry().get(str(spec.get("kind")))
    top = [_spec_row(k, spec[k]) for k in ("kind", "alpha", "methods", "method", "alphas")
           if spec.get(k) not in (None, "", [])]
    known_top = top_settable()
    for name, value in (spec.get("top") or {}).items():
        f = known_top[name][0] if name in known_top else None
        top.append(_spec_row(name, value, field_default(f), help_of(f)) if f else _spec_row(name, value))
    stages = []
    for stage, values in (spec.get("stages") or {}).items():
        st = ks.stages.get(stage) if ks else None
        known = settable(st) if st else {}
        context = st.defaults if st else {}  # the kind's own defaults for this stage, over the class's
        rows = [_spec_row(n, v, context.get(n, field_default(known[n][0])), help_of(known[n][0]))
                if n in known else _spec_row(n, v) for n, v in (values or {}).items()]
        stages.append({"name": stage, "cls": st.cls.__name__ if st else "", "rows": rows,
                       "changed": sum(r["changed"] for r in rows)})
    return {"top": top, "stages": stages}


def request_lines(params: Any, prefix: str = "") -> list[str]:
    """A request's params as ``key.path = value`` lines (what the user asked for, before defaults)."""
    if not isinstance(params, dict):
        return [] if params in (None, "") else [f"{prefix or 'params'} = {show_value(params)}"]
    out = []
    for key, value in params.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        out.extend(request_lines(value, path) if isinstance(value, dict) else [f"{path} = {show_value(value)}"])
    return out
