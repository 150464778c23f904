"""What a job may be asked to do: every setting a request can give, declared once and checked at submit.

Three kinds of setting, all derived from dataclasses that already exist elsewhere in ml/:

- **Stage settings**: the fields of a stage's config dataclass (ml/stages/*, ml.contrastive.CDConfig,
  ml.diagnose.PreflightConfig). A field whose metadata says ``internal`` (file paths, model folders, devices,
  names the caller wires) is not a setting at all: the registry never offers it, so a request that names one gets
  "unknown setting". Paths can therefore not travel through a request by construction, not by a deny-list.
- **Top settings** of the pipeline kinds: the non-internal fields of ml.pipeline.PipelineConfig.
- **Knobs**: a few job-level shorthands (``epochs``, ``batch_size``, ...). Each maps explicitly onto named
  stage or top fields of the job kind; a knob that does not apply to a kind is refused, never dropped.

``resolve(kind, params, alpha=..., methods=...)`` checks a request and returns the *spec*: every stage's
settings with defaults filled, the values that run. ``inputs``/``build`` (ml.spec_build) turn a spec plus the
resolved files into the typed configs a worker runs. Limits (``DEFAULT_LIMITS``, overridable by the caller,
e.g. the web app's JOB_LIMITS) bound every count a request can raise.
"""

from __future__ import annotations

import math
import types
import typing
from dataclasses import MISSING, Field, dataclass, field, fields
from functools import cache
from typing import Any

SPEC_VERSION = 1
DEFAULT_ALPHA = 0.4  # the reference runs' CD weight of pi_post (ml.contrastive.CDConfig.alpha's default)
DEFAULT_SWEEP_ALPHAS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)

# Upper bounds on everything a request can make big. Keys are limit names; LIMIT_OF says which fields they bound.
DEFAULT_LIMITS: dict[str, int | float] = {
    "max_new_tokens": 4096,
    "batch_size": 512,
    "max_prompts": 100_000,
    "n_samples": 64,
    "k": 32,
    "alphas": 21,
    "epochs": 100,
    "max_steps": 1_000_000,
    "max_length": 32_768,
    "shards": 64,  # parts of one generation stage (ml.execution)
    "gpus": 8,  # devices (processes) of one training stage (ml.execution)
}
LIMIT_OF = {
    "max_new_tokens": "max_new_tokens",
    "batch_size": "batch_size",
    "per_device_train_batch_size": "batch_size",
    "sample_batch_size": "batch_size",
    "score_batch_size": "batch_size",
    "judge_batch_size": "batch_size",
    "max_prompts": "max_prompts",
    "max_eval_prompts": "max_prompts",
    "max_examples": "max_prompts",
    "n_samples": "n_samples",
    "samples_per_prompt": "n_samples",
    "k": "k",
    "alphas": "alphas",
    "epochs": "epochs",
    "num_train_epochs": "epochs",
    "max_steps": "max_steps",
    "train_max_steps": "max_steps",
    "max_length": "max_length",
    "max_prompt_tokens": "max_length",
    "gradient_accumulation_steps": "batch_size",
}


class SpecError(ValueError):
    """Settings that cannot run: ``errors`` maps a full key path (``params.sft.bogus``) to messages."""

    def __init__(self, errors: dict[str, list[str]]) -> None:
        super().__init__("; ".join(f"{k}: {' '.join(v)}" for k, v in errors.items()))
        self.errors = errors


def is_internal(f: Field[Any]) -> bool:
    return bool(f.metadata.get("internal"))


@dataclass(frozen=True)
class StageSpec:
    """One stage as a job kind exposes it: its config class, the fields the job wires itself (refused in a
    request, e.g. alpha comes from the job), and defaults that differ from the class's in this context."""

    cls: type
    wired: tuple[str, ...] = ()
    defaults: dict[str, Any] = field(default_factory=dict)
    extra: tuple[type, ...] = ()  # further classes whose settable fields this stage also takes (flat CD fields)
    refused: dict[str, str] = field(default_factory=dict)  # fields this kind does not use -> why, said to the caller

    @property
    def classes(self) -> tuple[type, ...]:
        return (self.cls, *self.extra)


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def settable(spec: StageSpec) -> dict[str, tuple[Field[Any], Any]]:
    """name -> (dataclass field, type) of every setting a request may give this stage."""
    out: dict[str, tuple[Field[Any], Any]] = {}
    for cls in spec.classes:
        hints = _hints(cls)
        for f in fields(cls):
            if f.name in out or is_internal(f) or f.name in spec.wired or f.name in spec.refused:
                continue
            if isinstance(hints.get(f.name), type) and hints[f.name].__module__.startswith("ml."):
                continue  # a nested config (CDGenerateConfig.cd): its fields are offered flat through `extra`
            out[f.name] = (f, hints[f.name])
    return out


def field_default(f: Field[Any]) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return None


def help_of(f: Field[Any]) -> str:
    return str(f.metadata.get("help", ""))


# --- the registry -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class KindSpec:
    """A job kind: its stages, its top settings (pipeline kinds) and its knobs -> (target, ...) where a
    target is "top.<field>" or "<stage>.<field>"."""

    name: str
    help: str
    stages: dict[str, StageSpec]
    knobs: dict[str, tuple[str, ...]]
    pipeline: bool = False
    sweep: bool = False  # takes a list of alphas


def _classes() -> dict[str, type]:
    # Imported here so that `import ml.spec` stays light (the stage modules import torch).
    from ml.contrastive import CDConfig
    from ml.diagnose import PreflightConfig
    from ml.pipeline import PipelineConfig
    from ml.stages.auxconf import AuxConfConfig
    from ml.stages.dpo import DPOStageConfig
    from ml.stages.evaluate import EvaluateConfig
    from ml.stages.generate import CDGenerateConfig
    from ml.stages.self_sample import SelfSampleConfig
    from ml.stages.sft import SFTStageConfig
    from ml.stages.weak_align import WeakAlignConfig
    from ml.stages.wspo import WSPOConfig

    return {
        "cd": CDConfig,
        "preflight": PreflightConfig,
        "pipeline": PipelineConfig,
        "auxconf": AuxConfConfig,
        "dpo": DPOStageConfig,
        "evaluate": EvaluateConfig,
        "cd_generate": CDGenerateConfig,
        "self_sample": SelfSampleConfig,
        "sft": SFTStageConfig,
        "weak_align": WeakAlignConfig,
        "wspo": WSPOConfig,
    }


DECODING_KNOBS = ("batch_size", "relative_top", "temperature", "top_p", "repetition_penalty", "do_sample")
TRAIN_STAGES = ("sft", "dpo", "wspo", "auxconf")


@cache
def registry() -> dict[str, KindSpec]:
    c = _classes()
    cd_alone = StageSpec(c["cd_generate"], wired=("alpha",), extra=(c["cd"],))
    cd_sweep = StageSpec(
        c["cd_generate"],
        wired=("alpha",),
        extra=(c["cd"],),
        refused={"plain": "a sweep makes no plain samples: its pairs are CD responses at each alpha"},
    )
    cd_knobs: dict[str, tuple[str, ...]] = {
        k: (f"cd_generate.{k}",) for k in ("max_prompts", "max_new_tokens", "seed", *DECODING_KNOBS)
    }
    evaluate = StageSpec(c["evaluate"])
    pipeline_stages = {
        # In the pipeline the generation settings are CDConfig's (shared by CD and plain sampling).
        "cd_generate": StageSpec(c["cd"], wired=("alpha",)),
        "sft": StageSpec(c["sft"]),
        "self_sample": StageSpec(c["self_sample"]),
        "dpo": StageSpec(c["dpo"]),
        "wspo": StageSpec(c["wspo"]),
        "auxconf": StageSpec(c["auxconf"]),
        "evaluate": evaluate,
    }
    pipeline_knobs = {
        **{k: (f"top.{k}",) for k in ("seed", "max_prompts", "max_eval_prompts", "max_new_tokens")},
        **{k: (f"cd_generate.{k}",) for k in DECODING_KNOBS},
        "epochs": tuple(f"{s}.num_train_epochs" for s in TRAIN_STAGES),
        "n_samples": ("evaluate.n_samples",),
    }
    kinds = [
        KindSpec(
            "cong",
            "The ConG experiment: CD data, the chosen methods trained and evaluated.",
            pipeline_stages,
            pipeline_knobs,
            pipeline=True,
        ),
        KindSpec(
            "train",
            "One method's training (and evaluation) of the strong model.",
            pipeline_stages,
            pipeline_knobs,
            pipeline=True,
        ),
        KindSpec(
            "cd_generate",
            "Contrastive decoding samples of the weak pair, each beside a plain pi_post sample.",
            {"cd_generate": cd_alone},
            {**cd_knobs, "plain": ("cd_generate.plain",)},
        ),
        KindSpec(
            "alpha_sweep",
            "CD at several alphas, each scored with the gold reward.",
            {"cd_generate": cd_sweep, "evaluate": evaluate},
            cd_knobs,
            sweep=True,
        ),
        KindSpec(
            "weak_align",
            "DPO of pi_pre on gold-labelled samples: makes pi_post.",
            {"weak_align": StageSpec(c["weak_align"])},
            {
                **{
                    k: (f"weak_align.{k}",)
                    for k in (
                        "max_prompts",
                        "max_new_tokens",
                        "seed",
                        "k",
                        "beta",
                        "learning_rate",
                        "temperature",
                        "top_p",
                    )
                },
                "epochs": ("weak_align.num_train_epochs",),
                "batch_size": ("weak_align.sample_batch_size",),
            },
        ),
        KindSpec(
            "evaluate",
            "The strong model's responses scored with the gold reward.",
            {"evaluate": evaluate},
            {
                k: (f"evaluate.{k}",)
                for k in (
                    "max_prompts",
                    "max_new_tokens",
                    "seed",
                    "batch_size",
                    "temperature",
                    "top_p",
                    "do_sample",
                    "n_samples",
                )
            },
        ),
        KindSpec(
            "preflight",
            "Does CD raise the gold reward for this weak pair? (before spending on training)",
            {
                "preflight": StageSpec(c["preflight"]),
                # Only CD's own settings: plain pi_post samples keep the reference sampling.
                "cd_generate": StageSpec(
                    c["cd"], wired=("alpha", "seed", "max_new_tokens", "use_chat_template"), defaults={"batch_size": 64}
                ),
            },
            {
                **{k: (f"preflight.{k}",) for k in ("n_samples", "max_new_tokens", "seed", "max_prompts")},
                "relative_top": ("cd_generate.relative_top",),
                "repetition_penalty": ("cd_generate.repetition_penalty",),
                "batch_size": ("cd_generate.batch_size",),
            },
            sweep=True,
        ),
    ]
    return {k.name: k for k in kinds}


def top_settable() -> dict[str, tuple[Field[Any], Any]]:
    """PipelineConfig's settings a request may give at params' top level (alpha/methods are job fields)."""
    cls = _classes()["pipeline"]
    hints = _hints(cls)
    stage_dicts = {"weak_align", "generate", "sft", "self_sample", "dpo", "wspo", "auxconf", "evaluate"}
    return {
        f.name: (f, hints[f.name])
        for f in fields(cls)
        if not is_internal(f) and f.name not in stage_dicts | {"alpha", "methods"}
    }


def kind_spec(kind: str) -> KindSpec:
    reg = registry()
    if kind not in reg:
        raise SpecError({"kind": [f"unknown job kind {kind!r}; use one of {', '.join(reg)}"]})
    return reg[kind]


def knob_field(ks: KindSpec, knob: str) -> tuple[Field[Any], Any]:
    """The field (and its type) a knob sets: its first target's, a top setting or a stage field."""
    stage, name = ks.knobs[knob][0].split(".", 1)
    return (top_settable() if stage == "top" else settable(ks.stages[stage]))[name]


def default_alphas(kind: str) -> list[float]:
    """The alphas a sweep kind runs when a request gives none: the sweep's grid, or the pre-flight's three."""
    return list(DEFAULT_SWEEP_ALPHAS) if kind == "alpha_sweep" else [0.0, DEFAULT_ALPHA, 1.0]


# --- checking values ------------------------------------------------------------------------------------------
def type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}.get(
            tp.__name__, tp.__name__
        )
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        inner = [type_name(a) for a in args if a is not type(None)]
        return " or ".join(inner) + (" or null" if type(None) in args else "")
    if typing.get_origin(tp) is list:
        return f"a list of {type_name(args[0]).removeprefix('a ').removeprefix('an ')}s"
    return str(tp)


def check_type(value: Any, tp: Any) -> Any:
    """value if it is of type tp (JSON's view: an int is a number, a bool is not), else ValueError."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return check_type(value, a)
            except ValueError:
                pass
        raise ValueError(f"must be {type_name(tp)}, got {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise ValueError(f"must be {type_name(tp)}, got {value!r}")
        return [check_type(v, args[0]) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                if math.isfinite(float(value)):
                    return float(value)
            except OverflowError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    else:  # a type the registry does not offer as a setting (callables, nested configs)
        raise ValueError("cannot be set through a request")
    raise ValueError(f"must be {type_name(tp)}, got {value!r}")


def check_limit(name: str, value: Any, limits: dict[str, int | float]) -> str | None:
    """A message when value is over the limit that bounds field `name`, else None."""
    key = LIMIT_OF.get(name)
    if key is None or key not in limits or value is None or isinstance(value, bool):
        return None
    size = len(value) if isinstance(value, list) else value
    if isinstance(size, (int, float)) and size > limits[key]:
        what = f"{len(value)} values" if isinstance(value, list) else repr(value)
        return f"{what} is over the limit {key}={limits[key]} (the server's JOB_LIMITS)"
    return None


def check_alpha(value: Any) -> float:
    try:
        a: float = check_type(value, float)
    except ValueError:
        raise ValueError(f"alpha must be a number between 0 and 1, got {value!r}") from None
    if not 0.0 <= a <= 1.0:
        raise ValueError(f"alpha must be between 0 and 1 (1 = plain sampling, 0 = pure log ratio), got {a}")
    return a


def alpha_tag(alpha: float) -> str:
    """Folder name of one alpha's run: exact, so 0.001 and 0.004 never share a folder."""
    return f"a{float(alpha)!r}"


# --- methods --------------------------------------------------------------------------------------------------
DEFAULT_CONG_METHODS = ("cong_s", "cong")
# kind=train's method -> the pipeline method that trains it.
TRAIN_METHODS = {"sft": "cong_s", "dpo": "cong", "wspo": "wspo", "weak_sft": "weak_sft", "auxconf": "auxconf"}
# Train methods that learn from the weak pair (the job needs weak_base and weak_aligned too).
WEAK_PAIR_TRAIN_METHODS = ("dpo", "wspo", "weak_sft", "auxconf", "sft")
KINDS_WITH_ALPHA = ("cong", "train", "cd_generate", "preflight")


def pipeline_stages_used(methods: list[str]) -> list[str]:
    """The pipeline stages that run for these methods (mirrors ml.pipeline._execute's branches)."""
    from ml.pipeline import CD_METHODS, PICKED_METHODS

    m = set(methods)
    used = ["cd_generate"]  # CD settings also drive plain sampling, and every method is evaluated
    if m & (CD_METHODS | PICKED_METHODS | {"weak_sft", "weak_sft_1ep"}):
        used.append("sft")
    if m & {"cong", "cong_filtered"}:
        used += ["self_sample", "dpo"]
    used += [s for s in ("wspo", "auxconf") if s in m]
    return [*used, "evaluate"]


def pipeline_methods(kind: str, *, methods: Any = None, method: Any = None) -> list[str]:
    from ml.pipeline import METHODS

    if kind == "train":
        if method not in TRAIN_METHODS:
            raise SpecError(
                {"method": [f"method must be one of {', '.join(TRAIN_METHODS)} for a train job, got {method!r}"]}
            )
        return [TRAIN_METHODS[method]]
    methods = list(DEFAULT_CONG_METHODS) if methods in (None, []) else methods
    if not isinstance(methods, list) or any(not isinstance(x, str) or x not in METHODS for x in methods):
        raise SpecError({"methods": [f"methods must be a list drawn from {', '.join(METHODS)}, got {methods!r}"]})
    return list(dict.fromkeys(methods))


# The pipeline hands these top settings to its stages (ml.pipeline._Runner.train_kw/strong_kw/decoding and the
# stage calls); the spec fills them the same way, so it shows what each stage really gets. A test builds the
# pipeline's own stage configs from a spec and compares (tests/ml/test_spec.py).
PIPELINE_WIRING: dict[str, tuple[str, ...]] = {
    "seed": ("cd_generate", "sft", "self_sample", "dpo", "wspo", "auxconf", "evaluate"),
    "use_chat_template": ("cd_generate", "sft", "self_sample", "dpo", "wspo", "auxconf", "evaluate"),
    "max_new_tokens": ("cd_generate", "self_sample", "evaluate"),
    "max_prompts": ("self_sample",),
    "max_eval_prompts": ("evaluate",),
    "lora_r": TRAIN_STAGES,
    "train_max_steps": TRAIN_STAGES,  # as max_steps, when > 0
}
_WIRED_AS = {"max_eval_prompts": "max_prompts", "train_max_steps": "max_steps"}
