"""The registry (ml.spec) as other tools need it: a plain description per kind, a JSON Schema of each kind's
params (the REST API's OpenAPI components), and argparse flags (the CLI). All derived, nothing re-declared: a
new field in a stage dataclass shows up in all three.
"""

from __future__ import annotations

import argparse
import types
import typing
from typing import Any

from ml.execution import params_properties
from ml.spec import (
    DEFAULT_LIMITS,
    LIMIT_OF,
    KindSpec,
    default_alphas,
    field_default,
    help_of,
    kind_spec,
    knob_field,
    registry,
    settable,
    top_settable,
)

_JSON = {int: "integer", float: "number", bool: "boolean", str: "string"}


def json_type(tp: Any) -> dict[str, Any]:
    """JSON Schema for a field's annotation (the types the registry offers)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [json_type(a) for a in args if a is not type(None)]
        out = dict(inner[0]) if len(inner) == 1 else {"anyOf": inner}
        if type(None) in args:
            out = {"anyOf": [out, {"type": "null"}]}
        return out
    if origin is list:
        return {"type": "array", "items": json_type(args[0])}
    return {"type": _JSON.get(tp, "string")}


def _setting(
    f: Any, tp: Any, limits: dict[str, Any], *, default: Any = None, with_default: bool = True
) -> dict[str, Any]:
    out = {**json_type(tp), "description": help_of(f)}
    if with_default:
        out["default"] = default if default is not None else field_default(f)
    limit = LIMIT_OF.get(f.name)
    if limit and limit in limits and out.get("type") in ("integer", "number"):
        out["maximum"] = limits[limit]
    return out


def params_schema(kind: str, limits: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON Schema of ``params`` for one job kind: knobs, top settings and one object per stage, every
    object closed (an unknown key is an error, as the server says)."""
    ks = kind_spec(kind)
    limits = {**DEFAULT_LIMITS, **(limits or {})}
    props: dict[str, Any] = {}
    for knob, targets in ks.knobs.items():
        f, tp = knob_field(ks, knob)
        doc = f"Sets {', '.join(targets)}. {help_of(f)}"
        props[knob] = {**_setting(f, tp, limits, with_default=False), "description": doc}
    props.update(params_properties(kind, limits))
    if ks.pipeline:
        for name, (f, tp) in top_settable().items():
            props.setdefault(name, _setting(f, tp, limits))
    if ks.sweep:
        props["alphas"] = {
            "type": "array",
            "items": {"type": "number", "minimum": 0, "maximum": 1},
            "maxItems": limits["alphas"],
            "uniqueItems": True,
            "default": default_alphas(kind),
            "description": "CD alphas to run, each in [0, 1], distinct.",
        }
    for stage, st in ks.stages.items():
        fields_ = {
            name: _setting(f, tp, limits, default=st.defaults.get(name)) for name, (f, tp) in settable(st).items()
        }
        props[stage] = {
            "type": "object",
            "properties": fields_,
            "additionalProperties": False,
            "description": f"Settings of the {stage} stage ({st.cls.__name__}).",
        }
    return {
        "title": f"Params{kind.title().replace('_', '')}",
        "type": "object",
        "properties": props,
        "additionalProperties": False,
        "description": f"params for kind={kind}: {ks.help}",
    }


def describe(limits: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every kind with its help and params schema (GET /api/v1/kinds/, `python -m ml spec`)."""
    return {
        name: {
            "help": ks.help,
            "stages": list(ks.stages),
            "knobs": {k: list(v) for k, v in ks.knobs.items()},
            "params": params_schema(name, limits),
        }
        for name, ks in registry().items()
    }


# --- the CLI ------------------------------------------------------------------------------------------------
def add_stage_flags(parser: argparse.ArgumentParser, ks: KindSpec, stage: str) -> list[str]:
    """One flag per setting of a stage (--relative-top ...), default None = the spec's default. Returns the
    setting names (read them back with stage_values)."""
    names = []
    for name, (f, tp) in settable(ks.stages[stage]).items():
        flag = "--" + name.replace("_", "-")
        default = ks.stages[stage].defaults.get(name, field_default(f))
        add_flag(parser, flag, f"set_{name}", tp, f"{help_of(f)} (default: {default})", metavar=name.upper())
        names.append(name)
    return names


def add_flag(
    parser: argparse.ArgumentParser, flag: str, dest: str, tp: Any, doc: str, *, metavar: str | None = None
) -> None:
    """One optional flag for a setting of type tp (default None = the spec's default): --x/--no-x for a bool,
    repeatable for a list, typed otherwise."""
    base = _scalar(tp)
    doc = doc.replace("%", "%%")  # argparse formats help with %
    if base is bool:
        parser.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=doc)
    elif typing.get_origin(base) is list:
        parser.add_argument(
            flag, dest=dest, action="append", default=None, metavar=metavar or "VALUE", help=doc + "; repeatable"
        )
    else:
        parser.add_argument(
            flag, dest=dest, type=base, default=None, metavar=metavar or base.__name__.upper(), help=doc
        )


def _scalar(tp: Any) -> Any:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1 else tp


def stage_values(args: argparse.Namespace, names: list[str]) -> dict[str, Any]:
    """The settings given on the command line (the rest keep the spec's defaults)."""
    return {n: getattr(args, f"set_{n}") for n in names if getattr(args, f"set_{n}") is not None}
