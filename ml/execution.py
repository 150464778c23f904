"""How a job runs, as opposed to what it computes: execution settings, given at params' top level.

They change where and how fast the work happens, never its result: n shards of a generation stage write exactly
the rows one process writes (ml.shards). Declared once here; ``split_execution`` (used by ml.resolve) checks
them, the params schema (ml.spec_schema) and the web app derive from these declarations.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ml.spec import DEFAULT_LIMITS

# The kinds that run a generation stage (ml.execute hands each one to its GenerationRunner).
GENERATING_KINDS = ("cong", "train", "cd_generate", "alpha_sweep", "evaluate")


@dataclass(frozen=True)
class ExecutionSetting:
    name: str
    default: Any
    kinds: tuple[str, ...]
    help: str
    schema: dict[str, Any]
    tp: Any  # how a form or the CLI reads it from text
    check: Callable[[Any, float], str | None]  # (value, this server's limit) -> what is wrong with it, or None


def _check_shards(value: Any, limit: float) -> str | None:
    if value == "auto":
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return f'must be "auto" or a whole number >= 1, got {value!r}'
    if value > limit:
        return f"must be at most {limit:g} (this server's limit), got {value}"
    return None


SHARDS = ExecutionSetting(
    "shards",
    "auto",
    GENERATING_KINDS,
    "Split each generating stage (CD, plain and self sampling, evaluation sampling) into this many parts, run by "
    "different workers and merged in prompt order "
    '(the rows are those of one run). "auto" (default): one per live worker on the generation queue, at most one '
    "per batch of prompts; 1: one worker does it all.",
    {"anyOf": [{"type": "integer", "minimum": 1}, {"const": "auto"}]},
    int | str,
    _check_shards,
)
SETTINGS = {s.name: s for s in (SHARDS,)}


def defaults() -> dict[str, Any]:
    """The execution of a spec written before these settings existed."""
    return {name: s.default for name, s in SETTINGS.items()}


def split_execution(
    kind: str, params: Any, limits: dict[str, int | float]
) -> tuple[Any, dict[str, Any], dict[str, str]]:
    """(params without the execution settings, the execution, errors by key path). A setting that does not
    apply to the kind is an error naming the kinds it applies to, never dropped."""
    execution = defaults()
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
        msg = setting.check(value, limits.get(key, DEFAULT_LIMITS[key]))
        if msg:
            errors[f"params.{key}"] = msg
        else:
            execution[key] = value
    return rest, execution, errors


def params_properties(kind: str, limits: dict[str, int | float]) -> dict[str, Any]:
    """The execution settings' JSON Schema entries for one kind's params."""
    out = {}
    for name, s in SETTINGS.items():
        if kind in s.kinds:
            schema = {"anyOf": [dict(a) for a in s.schema["anyOf"]]}
            schema["anyOf"][0]["maximum"] = int(limits.get(name, DEFAULT_LIMITS[name]))
            # No "default" key, like the knobs: a generated client would then send the default itself, so that a
            # request's params no longer say what the user left unset.
            out[name] = {**schema, "description": s.help}
    return out


def from_text(text: str) -> Any:
    """A command line's value: a whole number, else the word as given (checked like a request's)."""
    return int(text) if text.strip().lstrip("+-").isdigit() else text.strip()
