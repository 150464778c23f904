"""From a request's params to the spec that runs, and from a spec to the typed configs a worker runs.

``resolve`` checks every key at every depth against the registry in ml.spec and raises SpecError with full key
paths (``params.sft.bogus_knob``). Precedence, lowest first, for each stage field:

    the class default < the kind's context default < the pipeline's top settings (wired as the pipeline wires
    them) < a dataset's recommended knob < its recommended stage setting < the request's knob < the request's
    stage setting

A dataset's recommendations (toy worlds and real-model presets store them) apply only where they fit the kind;
a request's settings must all fit, or the request is refused. Every stage is then built once with placeholder
paths, so a value that its config's own checks reject is a 400 at submit, not a crash in the worker.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from ml.execution import split_execution
from ml.io import SAMPLES
from ml.spec import (
    _WIRED_AS,
    DEFAULT_ALPHA,
    DEFAULT_LIMITS,
    KINDS_WITH_ALPHA,
    PIPELINE_WIRING,
    SPEC_VERSION,
    KindSpec,
    SpecError,
    StageSpec,
    check_alpha,
    check_limit,
    check_type,
    default_alphas,
    field_default,
    is_internal,
    kind_spec,
    knob_field,
    pipeline_methods,
    pipeline_stages_used,
    settable,
    top_settable,
)

PLACEHOLDER = "<set by the job>"


class _Errors:
    def __init__(self) -> None:
        self.errors: dict[str, list[str]] = {}

    def add(self, path: str, msg: str) -> None:
        self.errors.setdefault(path, []).append(msg)

    def raise_if_any(self) -> None:
        if self.errors:
            raise SpecError(self.errors)


def _unknown_msg(name: str, spec: StageSpec, known: list[str]) -> str:
    if name in spec.refused:
        return spec.refused[name]
    if name in spec.wired:
        return "set by the job itself, not per stage (alpha is the job's alpha; seed and lengths are params' own)"
    internal = any(f.name == name and is_internal(f) for cls in spec.classes for f in fields(cls))
    if internal:
        return (
            "a file, model or device that the job chooses; it cannot be set in a request (pick models and "
            "datasets by id)"
        )
    return f"unknown setting; known: {', '.join(known)}"


def _check_value(
    path: str, name: str, value: Any, tp: Any, limits: dict[str, int | float], errs: _Errors
) -> tuple[bool, Any]:
    try:
        value = check_type(value, tp)
    except ValueError as exc:
        errs.add(path, str(exc))
        return False, None
    over = check_limit(name, value, limits)
    if over:
        errs.add(path, over)
        return False, None
    return True, value


@dataclass
class _Layer:
    """One source of settings (a dataset's recommendations or the request), checked and split."""

    knobs: dict[str, Any]
    top: dict[str, Any]
    stages: dict[str, dict[str, Any]]
    alphas: list[float] | None = None


def _read_layer(
    ks: KindSpec, params: Any, used: list[str], limits: dict[str, int | float], errs: _Errors, *, strict: bool
) -> _Layer:
    """Split params into knobs / top / stage settings. strict (the request): every key must fit the kind, else an
    error; not strict (a dataset's recommendations): what does not fit this kind is left out."""
    layer = _Layer({}, {}, {})
    if params in (None, ""):
        return layer
    if not isinstance(params, dict):
        errs.add("params", 'params must be a JSON object, e.g. {"max_prompts": 100}')
        return layer
    top = top_settable() if ks.pipeline else {}
    for key, value in params.items():
        path = f"params.{key}"
        if key in ks.stages:
            if key not in used:
                if strict:
                    errs.add(path, f"the {key} stage does not run in this job (its methods do not use it)")
                continue
            if not isinstance(value, dict):
                if strict:
                    errs.add(path, f"{key} settings must be an object of that stage's settings")
                continue
            known = settable(ks.stages[key])
            out = layer.stages.setdefault(key, {})
            for sub, v in value.items():
                if sub not in known:
                    if strict:
                        errs.add(f"{path}.{sub}", _unknown_msg(sub, ks.stages[key], sorted(known)))
                    continue
                ok, v = _check_value(f"{path}.{sub}", sub, v, known[sub][1], limits, errs)
                if ok:
                    out[sub] = v
        elif key == "alphas" and ks.sweep:
            layer.alphas = _check_alphas(path, value, limits, errs)
        elif key in ks.knobs or key in top:
            tp = top[key][1] if key in top else knob_field(ks, key)[1]
            ok, v = _check_value(path, key, value, tp, limits, errs)
            if ok:
                (layer.top if key in top else layer.knobs)[key] = v
        elif strict:
            errs.add(path, _unknown_param_msg(ks, key, top))
    return layer


def _unknown_param_msg(ks: KindSpec, key: str, top: Mapping[str, Any]) -> str:
    if ks.pipeline and key in ("learning_rate", "beta", "k"):
        return (
            f"{key} differs per training stage in kind={ks.name}; set it per stage, e.g. params.sft.{key} "
            f"or params.dpo.{key}"
        )
    known = sorted({*ks.knobs, *top, *ks.stages, *(["alphas"] if ks.sweep else [])})
    return f"unknown setting for kind={ks.name}; known: {', '.join(known)}"


def _check_alphas(path: str, value: Any, limits: dict[str, int | float], errs: _Errors) -> list[float] | None:
    if not isinstance(value, list) or not value:
        errs.add(path, "alphas must be a non-empty list of numbers in [0, 1]")
        return None
    over = check_limit("alphas", value, limits)
    if over:
        errs.add(path, over)
        return None
    out = []
    for i, a in enumerate(value):
        try:
            out.append(check_alpha(a))
        except ValueError as exc:
            errs.add(f"{path}[{i}]", str(exc))
            return None
    if len(set(out)) != len(out):
        errs.add(path, "alphas must be distinct: each alpha runs once")
        return None
    return out


def _apply(
    values: dict[str, dict[str, Any]],
    where: dict[str, dict[str, str]],
    ks: KindSpec,
    knobs: dict[str, Any],
    origin: str,
) -> None:
    for knob, value in knobs.items():
        for target in ks.knobs[knob]:
            stage, name = target.split(".", 1)
            if stage in values:
                values[stage][name] = value
                where[stage][name] = f"{origin}.{knob}"


def resolve(
    kind: str,
    params: Any = None,
    *,
    alpha: Any = None,
    methods: Any = None,
    method: Any = None,
    recommended: dict[str, Any] | None = None,
    limits: dict[str, int | float] | None = None,
    contexts: Mapping[str, tuple[str, int | None]] | None = None,
) -> dict[str, Any]:
    """The full spec for a request, or SpecError naming every bad key path. ``contexts`` (model field -> (name,
    context length)) makes every stage's token budget fit the models it runs on (ml.budget)."""
    ks = kind_spec(kind)
    limits = {**DEFAULT_LIMITS, **(limits or {})}
    errs = _Errors()
    spec: dict[str, Any] = {"version": SPEC_VERSION, "kind": kind, "alpha": None, "methods": None, "method": None}
    if ks.pipeline:
        spec["methods"] = pipeline_methods(kind, methods=methods, method=method)
        spec["method"] = method if kind == "train" else None
        used = pipeline_stages_used(spec["methods"])
    else:
        for name, given in (("methods", methods), ("method", method)):
            if given not in (None, "", []):
                errs.add(name, f"{name} is only used by kind={'cong' if name == 'methods' else 'train'}")
        used = list(ks.stages)
    if kind in KINDS_WITH_ALPHA:
        try:
            spec["alpha"] = check_alpha(DEFAULT_ALPHA if alpha in (None, "") else alpha)
        except ValueError as exc:
            errs.add("alpha", str(exc))
    elif alpha not in (None, ""):
        errs.add("alpha", f"alpha is not used by kind={kind}" + ("; give params.alphas" if ks.sweep else ""))

    params, spec["execution"], exec_errors = split_execution(kind, params, limits)  # ml.execution: how it runs
    for path, msg in exec_errors.items():
        errs.add(path, msg)
    rec = _read_layer(ks, recommended, used, limits, _Errors(), strict=False)  # recommendations: keep what fits
    # A value refused here (unknown, mistyped, over a limit) is left out, so the stages are still checked below on
    # the rest: one submit reports every error, not the first kind found.
    req = _read_layer(ks, params, used, limits, errs, strict=True)

    top = {name: field_default(f) for name, (f, _) in top_settable().items()} if ks.pipeline else {}
    top.update(rec.top)
    top.update({k: v for k, v in rec.knobs.items() if ks.knobs[k][0] == f"top.{k}"})
    top.update(req.top)
    top.update({k: v for k, v in req.knobs.items() if ks.knobs[k][0] == f"top.{k}"})

    values: dict[str, dict[str, Any]] = {}
    where: dict[str, dict[str, str]] = {}
    for stage in used:
        st = ks.stages[stage]
        values[stage] = {name: field_default(f) for name, (f, _) in settable(st).items()}
        values[stage].update(st.defaults)
        where[stage] = {}
    for key, stages in PIPELINE_WIRING.items() if ks.pipeline else ():
        if key == "train_max_steps" and top[key] <= 0:
            continue
        for stage in stages:
            name = _WIRED_AS.get(key, key)
            if stage in values and name in values[stage]:
                values[stage][name] = top[key]
                where[stage][name] = f"params.{key}"
    _apply(
        values,
        where,
        ks,
        {k: v for k, v in rec.knobs.items() if not ks.knobs[k][0].startswith("top.")},
        "dataset default",
    )
    for stage, vals in rec.stages.items():
        values[stage].update(vals)
        where[stage].update({k: f"dataset default {stage}.{k}" for k in vals})
    _apply(values, where, ks, {k: v for k, v in req.knobs.items() if not ks.knobs[k][0].startswith("top.")}, "params")
    for stage, vals in req.stages.items():
        values[stage].update(vals)
        where[stage].update({k: f"params.{stage}.{k}" for k in vals})

    spec["top"] = top
    spec["stages"] = values
    if ks.sweep:
        spec["alphas"] = req.alphas or rec.alphas or default_alphas(kind)
    for stage in used:
        _check_stage(ks.stages[stage], stage, values[stage], where[stage], errs, _mode(spec))
    errs.raise_if_any()
    if contexts:
        from ml.budget import context_errors

        def path_of(stage: str, name: str) -> str:
            # Where the value came from, when that is a request key (a knob); else the stage's own key.
            origin = where[stage].get(name, "")
            return origin if origin.startswith("params.") else f"params.{stage}.{name}"

        for path, msgs in context_errors(spec, contexts, path_of).items():
            for msg in msgs:
                errs.add(path, msg)
        errs.raise_if_any()
    return spec


# Internal fields that stay unset unless the caller sets them: 'samples' and 'reference' are alternatives to 'model'
# in EvaluateConfig and 'judge' an option of it, device and dtype are picked per machine, a generation stage runs
# whole unless a runner gives it a shard (ml.shards), and a training stage in DDP unless the training runner launches
# it in the job's mode (ml.distributed).
_OPTIONAL_INTERNAL = ("samples", "reference", "judge", "device", "dtype", "shard", "distributed")


def placeholders(cls: type) -> dict[str, Any]:
    """Values for a config's internal fields good enough to run its own checks (no file is opened)."""
    from ml.spec import _hints

    out: dict[str, Any] = {}
    hints = _hints(cls)
    for f in fields(cls):
        if is_internal(f) and f.name not in _OPTIONAL_INTERNAL and "str" in str(hints[f.name]):
            out[f.name] = PLACEHOLDER
    return out


def make(cls: type, values: dict[str, Any]) -> Any:
    """cls from flat settings (nested CD settings included, via the class's own from_dict when it has one)."""
    from_dict = getattr(cls, "from_dict", None)
    return from_dict(values) if from_dict is not None else cls(**values)


def _check_stage(
    st: StageSpec, stage: str, vals: dict[str, Any], where: dict[str, str], errs: _Errors, mode: str
) -> None:
    # A training stage is checked in the job's distributed mode: what the mode cannot run fails on its setting.
    wired = {"distributed": mode} if any(f.name == "distributed" for f in fields(st.cls)) else {}
    try:
        make(st.cls, {**placeholders(st.cls), **wired, **vals})
    except (ValueError, TypeError) as exc:
        msg = str(exc)
        # Pin the message on the setting it names, where that setting came from (the request, a knob, a default).
        named = [n for n in vals if n in msg.replace("(", " ").replace(":", " ").split()]
        path = where.get(named[0], f"params.{stage}.{named[0]}") if named else f"params.{stage}"
        errs.add(path, msg)


# --- spec -> configs ------------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class JobInputs:
    """What the caller resolved for a job (files and models it may use) and where the job writes."""

    output_dir: str
    weak_base: str = ""
    weak_aligned: str = ""
    strong: str = ""
    strong_name: str = ""
    prompts: str = ""
    prompts_kind: str = "prompts"  # or "preferences" (weak_align trains on the pairs directly)
    eval_prompts: str = ""
    gold: str = ""  # labels: weak alignment's best-vs-worst and the pairs' scores (a name, or rm:<folder>)
    eval_gold: str = ""  # scores the evaluations; empty = gold
    pairs: str = ""  # reviewed preference JSONL replacing generation (ml.pipeline.PipelineConfig.pairs)
    judge: str = ""  # a causal LM folder judging each method against WeakSFT (ml.judge.pairwise); empty = none


def _eval_gold(inputs: JobInputs) -> str:
    return inputs.eval_gold or inputs.gold


def _out(inputs: JobInputs, name: str) -> str:
    return f"{inputs.output_dir.rstrip('/')}/{name}"


def _mode(spec: dict[str, Any]) -> str:
    """The job's distributed mode (ml.execution): its training configs are built in it, so a setting the mode cannot
    run with (QLoRA under fsdp) is refused when the spec is checked, at submit."""
    from ml.distributed import DEFAULT_MODE

    return str((spec.get("execution") or {}).get("distributed", DEFAULT_MODE))


def build(spec: dict[str, Any], inputs: JobInputs) -> dict[str, Any]:
    """The typed configs a spec runs as, by kind (ml.execute runs them)."""
    from ml.spec import alpha_tag

    kind, st = spec["kind"], spec["stages"]
    if kind_spec(kind).pipeline:
        from ml.pipeline import PipelineConfig

        # Values typed Any: mypy cannot tell which PipelineConfig fields ** fills (each is a stage's overrides dict).
        stage_dicts: dict[str, Any] = {"generate" if k == "cd_generate" else k: dict(v) for k, v in st.items()}
        return {
            "pipeline": PipelineConfig(
                weak_base=inputs.weak_base,
                weak_aligned=inputs.weak_aligned,
                strong=inputs.strong,
                train_prompts=inputs.prompts,
                eval_prompts=inputs.eval_prompts or inputs.prompts,
                gold=inputs.gold,
                eval_gold=_eval_gold(inputs),
                output_dir=inputs.output_dir,
                alpha=spec["alpha"],
                methods=list(spec["methods"]),
                distributed=_mode(spec),
                pairs=inputs.pairs,
                judge=inputs.judge,
                **spec["top"],
                **stage_dicts,
            )
        }
    if kind == "cd_generate":
        return {"cd_generate": _cd_config(inputs, "cd_generate", spec["alpha"], st["cd_generate"])}
    if kind == "alpha_sweep":
        runs = []
        for a in spec["alphas"]:
            tag = alpha_tag(a)
            cd = _cd_config(inputs, f"cd_generate_{tag}", a, st["cd_generate"])
            ev = make(
                _cls("evaluate"),
                {
                    "output_dir": _out(inputs, f"evaluate_{tag}"),
                    "gold": _eval_gold(inputs),
                    "samples": f"{cd.output_dir}/{SAMPLES}",
                    "name": tag,
                    **st["evaluate"],
                },
            )
            runs.append({"alpha": a, "tag": tag, "cd_generate": cd, "evaluate": ev})
        return {"alphas": runs}
    if kind == "weak_align":
        src = (
            {"data": inputs.prompts}
            if inputs.prompts_kind == "preferences"
            else {"prompts": inputs.prompts, "gold": inputs.gold}
        )
        return {
            "weak_align": make(
                _cls("weak_align"),
                {
                    "model": inputs.weak_base,
                    "output_dir": _out(inputs, "weak_align"),
                    "distributed": _mode(spec),
                    **src,
                    **st["weak_align"],
                },
            )
        }
    if kind == "evaluate":
        return {
            "evaluate": make(
                _cls("evaluate"),
                {
                    "output_dir": _out(inputs, "evaluate"),
                    "gold": _eval_gold(inputs),
                    "model": inputs.strong,
                    "prompts": inputs.prompts,
                    "name": inputs.strong_name or "model",
                    **st["evaluate"],
                },
            )
        }
    if kind == "preflight":
        return {
            "preflight": make(_cls("preflight"), dict(st["preflight"])),
            "cd_overrides": dict(st["cd_generate"]),
            "alphas": list(spec["alphas"]),
            "decision_alpha": spec["alpha"],
        }
    raise SpecError({"kind": [f"no builder for kind {kind!r}"]})


def _cd_config(inputs: JobInputs, folder: str, alpha: float, settings: dict[str, Any]) -> Any:
    """CD generation of the weak pair on the job's prompts at one alpha, into output_dir/<folder>."""
    values = {
        "aligned": inputs.weak_aligned,
        "base": inputs.weak_base,
        "prompts": inputs.prompts,
        "output_dir": _out(inputs, folder),
        "alpha": alpha,
        **settings,
    }
    return make(_cls("cd_generate"), values)


def _cls(name: str) -> type:
    from ml.spec import _classes

    return _classes()[name]


def check(spec: dict[str, Any], inputs: JobInputs) -> None:
    """Build everything the spec would run (the pipeline's every stage too) without running it; SpecError if
    anything would fail its checks in the worker."""
    try:
        built = build(spec, inputs)
        if "pipeline" in built:
            from ml.pipeline import check as check_pipeline

            check_pipeline(built["pipeline"])
    except SpecError:
        raise
    except (ValueError, TypeError) as exc:
        raise SpecError({"params": [str(exc)]}) from None
