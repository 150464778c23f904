"""How a job runs, as opposed to what it computes: execution settings, given at params' top level.

They change where and how fast the work happens, never its result: n shards of a generation stage write exactly
the rows one process writes (ml.shards). Declared once here; ``split_execution`` (used by ml.resolve) checks
them, the params schema (ml.spec_schema) and the web app derive from these declarations.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ml.distributed import DEFAULT_MODE, DISTRIBUTED_MODES, mode_unavailable, modes_help
from ml.spec import DEFAULT_LIMITS

# The kinds that run a generation stage (ml.execute hands each one to its GenerationRunner), and those that train
# (their training stages go through ml.distributed's training runner).
GENERATING_KINDS = ("cong", "train", "cd_generate", "alpha_sweep", "evaluate")
TRAINING_KINDS = ("cong", "train", "weak_align")


@dataclass(frozen=True)
class ExecutionSetting:
    name: str
    default: Any
    kinds: tuple[str, ...]
    help: str
    schema: Callable[[float], dict[str, Any]]  # this server's limit -> the JSON Schema of the value
    tp: Any  # how a form or the CLI reads it from text
    check: Callable[[Any, float], str | None]  # (value, this server's limit) -> what is wrong with it, or None
    cli_note: str = ""  # what the setting means for ``python -m ml job`` (one process)


def _check_count(value: Any, limit: float, word: str | None = None) -> str | None:
    if word is not None and value == word:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        either = f'"{word}" or ' if word else ""
        return f"must be {either}a whole number >= 1, got {value!r}"
    if value > limit:
        return f"must be at most {limit:g} (this server's limit), got {value}"
    return None


def _check_mode(value: Any, limit: float) -> str | None:
    return mode_unavailable(value) if isinstance(value, str) else f"must be one of {', '.join(DISTRIBUTED_MODES)}"


SHARDS = ExecutionSetting(
    "shards",
    "auto",
    GENERATING_KINDS,
    "Split each generating stage (CD, plain and self sampling, evaluation sampling) into this many parts, run by "
    "different workers and merged in prompt order "
    '(the rows are those of one run). "auto" (default): one per live worker on the generation queue, at most one '
    "per batch of prompts; 1: one worker does it all.",
    lambda limit: {"anyOf": [{"type": "integer", "minimum": 1, "maximum": int(limit)}, {"const": "auto"}]},
    int | str,
    lambda value, limit: _check_count(value, limit, "auto"),
    " Here the shards run one after another in this process.",
)
GPUS = ExecutionSetting(
    "gpus",
    1,
    TRAINING_KINDS,
    "Devices each training stage runs on (one process per device, torch.distributed): the job waits for a worker "
    "with at least this many (WORKER_GPUS). per_device_train_batch_size stays per device, so the global batch grows "
    "with it.",
    lambda limit: {"type": "integer", "minimum": 1, "maximum": int(limit)},
    int,
    _check_count,
    " Here: this many processes on this host.",
)
DISTRIBUTED = ExecutionSetting(
    "distributed",
    DEFAULT_MODE,
    TRAINING_KINDS,
    "How the training processes share the model: " + modes_help(),
    lambda limit: {"enum": list(DISTRIBUTED_MODES)},
    str,
    _check_mode,
)
SETTINGS = {s.name: s for s in (SHARDS, GPUS, DISTRIBUTED)}


def defaults(kind: str) -> dict[str, Any]:
    """The execution settings of ``kind`` at their defaults (what a request that names none runs with)."""
    return {name: s.default for name, s in SETTINGS.items() if kind in s.kinds}


def split_execution(
    kind: str, params: Any, limits: dict[str, int | float]
) -> tuple[Any, dict[str, Any], dict[str, str]]:
    """(params without the execution settings, the execution, errors by key path). A setting that does not
    apply to the kind is an error naming the kinds it applies to, never dropped."""
    execution = defaults(kind)
    if not isinstance(params, dict):
        return params, execution, {}
    rest, errors = {}, {}
    for key, value in params.items():
        setting = SETTINGS.get(key)
        if setting is None:
            rest[key] = value
            continue
        if kind not in setting.kinds:
            errors[f"params.{key}"] = f"{key} applies to kinds {', '.join(setting.kinds)}, not {kind}"
            continue
        msg = setting.check(value, limit_of(key, limits))
        if msg:
            errors[f"params.{key}"] = msg
        else:
            execution[key] = value
    return rest, execution, errors


def limit_of(name: str, limits: dict[str, int | float]) -> float:
    """This server's bound on a count setting (no bound for the others)."""
    return limits.get(name, DEFAULT_LIMITS.get(name, float("inf")))


def params_properties(kind: str, limits: dict[str, int | float]) -> dict[str, Any]:
    """The execution settings' JSON Schema entries for one kind's params."""
    out = {}
    for name, s in SETTINGS.items():
        if kind in s.kinds:
            # No "default" key, like the knobs: a generated client would then send the default itself, so that a
            # request's params no longer say what the user left unset.
            out[name] = {**s.schema(limit_of(name, limits)), "description": s.help}
    return out


def from_text(text: str) -> Any:
    """A command line's value: a whole number, else the word as given (checked like a request's)."""
    return int(text) if text.strip().lstrip("+-").isdigit() else text.strip()
