"""The new-job page's form. It only parses what the browser sends (types, choices); every rule about
what a job may ask for lives in jobs.services.job_create, whose ValidationErrors are put back on the
form's fields (and a setting's on its input) by ``add_service_errors``. Its setting inputs, one per setting of
ml's registry, are built by ``setting_groups``."""

from __future__ import annotations

import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from django import forms
from django.conf import settings
from django.core.exceptions import ValidationError

from jobs import selectors
from jobs.api import json_checks
from jobs.login_forms import ThrottledAdminAuthenticationForm, ThrottledAuthenticationForm  # noqa: F401 (re-exported)
from jobs.models import Job, ModelEntry
from jobs.page_selectors import show_value
from jobs.services.creation import EVAL_GOLD_KINDS
from ml.execution import SETTINGS as EXECUTION
from ml.gold import known_golds
from ml.pipeline import LABELS, METHODS
from ml.spec import (
    DEFAULT_ALPHA,
    DEFAULT_CONG_METHODS,
    KINDS_WITH_ALPHA,
    TRAIN_METHODS,
    field_default,
    kind_spec,
    knob_field,
    pipeline_stages_used,
    settable,
    top_settable,
)
from ml.spec_schema import params_schema

PAGE_KINDS = [
    (Job.Kind.CONG, "ConG pipeline (weak pair -> pairs -> train strong -> evaluate)"),
    (Job.Kind.CD_GENERATE, "Contrastive decoding only (make pairs)"),
    (Job.Kind.ALPHA_SWEEP, "Alpha sweep (gold and implicit reward vs alpha)"),
    (Job.Kind.PREFLIGHT, "Pre-flight check (does CD raise gold reward for this weak pair?)"),
    (Job.Kind.WEAK_ALIGN, "Weak alignment (make pi_post from pi_pre)"),
    (Job.Kind.TRAIN, "Train the strong model with one method"),
    (Job.Kind.EVALUATE, "Evaluate a model"),
]
# Method labels come from ml.pipeline (one home); kind=train's methods add the two plain names.
METHOD_LABELS = {**LABELS, "sft": "SFT", "dpo": "DPO"}

# --- every setting of ml's registry as an input ---------------------------------------------------------------
# Names: p__<knob, top setting or alphas> and p__<stage>__<field>. Which settings exist, their types, defaults,
# help and maxima all come from ml (ml.spec's registry, ml.spec_schema.params_schema): a field added to a stage
# dataclass shows up on the page with no change here.
PREFIX = "p__"
COMMON = "common"
# JSON Schema type -> Python, for the one params entry that has no dataclass field behind it (a sweep's alphas).
_PY_OF_JSON = {"integer": int, "number": float, "boolean": bool, "string": str}
_INT = re.compile(r"[+-]?[0-9]+")


class _Differs:
    """The default of a knob whose target fields disagree (epochs: sft 2.0, dpo 1.0): there is no one value."""


DIFFERS = _Differs()


def _base(tp: Any) -> Any:
    """X for ``X | None``; tp otherwise."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1 else tp


def coerce(text: str, tp: Any) -> Any:
    """The value an input's text stands for, typed by the field's annotation; ValueError says what to type.
    Lists are one item per line, or comma-separated when the text is one line."""
    text = text.strip()
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and text.lower() in ("none", "null"):
            return None
        msgs = []
        for a in (a for a in args if a is not type(None)):
            try:
                return coerce(text, a)
            except ValueError as exc:
                msgs.append(str(exc))
        raise ValueError("; or ".join(msgs))
    if origin is list:
        parts = text.splitlines() if "\n" in text else text.split(",")
        return [coerce(part, args[0]) for part in parts if part.strip()]
    if tp is bool:
        if text.lower() in ("true", "false"):
            return text.lower() == "true"
        raise ValueError(f"choose true or false, got {text!r}")
    if tp is int:
        if not _INT.fullmatch(text):
            raise ValueError(f"give a whole number, e.g. 3; got {text!r}")
        lo, hi = json_checks.INT_MIN, json_checks.INT_MAX
        # Length first: int() of thousands of digits is slow and then refused (docs/SECURITY.md, finding 7).
        if len(text.lstrip("+-")) > json_checks.INT_MAX_DIGITS or not lo <= int(text) <= hi:
            raise ValueError(f"out of range: give a whole number between {lo} and {hi}")
        return int(text)
    if tp is float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"give a number, e.g. 0.5 or 1e-5; got {text!r}") from None
        if not math.isfinite(value):
            raise ValueError("give a finite number (NaN and infinity cannot be stored)")
        return value
    if json_checks.SURROGATE.search(text):
        raise ValueError("the text contains a lone UTF-16 surrogate; type valid Unicode")
    return text


@dataclass
class SettingInput:
    """One setting's input on the new-job page; ``value`` is the text typed (empty = the default applies)."""

    name: str  # p__sft__learning_rate
    path: str  # the service's key path: params.sft.learning_rate
    label: str
    tp: Any
    default: Any
    help: str
    maximum: Any = None
    value: str = ""
    errors: list[str] = field(default_factory=list)

    @property
    def widget(self) -> str:
        base = _base(self.tp)
        if typing.get_origin(base) is list:
            return "list"
        return {bool: "bool", int: "int", float: "float"}.get(base, "text")

    @property
    def step(self) -> str:
        return "1" if self.widget == "int" else "any"

    @property
    def placeholder(self) -> str:
        return "per stage" if self.default is DIFFERS else show_value(self.default)

    @property
    def default_json(self) -> str:
        return "" if self.default is DIFFERS else json.dumps(self.default)


@dataclass
class SettingGroup:
    key: str  # COMMON or a stage name
    title: str
    note: str
    rows: list[SettingInput]
    errors: list[str] = field(default_factory=list)

    @property
    def filled(self) -> int:
        return sum(1 for r in self.rows if r.value.strip())

    @property
    def open(self) -> bool:
        return self.key == COMMON or bool(self.filled or self.errors or any(r.errors for r in self.rows))


@dataclass
class KindSettings:
    kind: str
    label: str
    groups: list[SettingGroup]
    active: bool


def setting_groups(kind: str, limits: dict[str, Any] | None = None) -> list[SettingGroup]:
    """A kind's settings: its knobs, top settings (pipelines) and alphas (sweeps) as "Common settings", then
    one group per stage, in the registry's order."""
    ks = kind_spec(kind)
    props = params_schema(kind, limits)["properties"]
    top = top_settable() if ks.pipeline else {}

    def default_of(target: str) -> Any:
        stage, name = target.split(".", 1)
        return field_default(top_settable()[name][0]) if stage == "top" else props[stage]["properties"][name]["default"]

    common = []
    for key, s in props.items():
        if key in ks.stages:
            continue
        doc = s.get("description", "")
        if key in top:
            tp, default = top[key][1], field_default(top[key][0])
        elif key in EXECUTION:
            tp, default = EXECUTION[key].tp, EXECUTION[key].default
        elif key in ks.knobs:
            tp = knob_field(ks, key)[1]
            defaults = [default_of(t) for t in ks.knobs[key]]
            default = defaults[0] if all(d == defaults[0] for d in defaults) else DIFFERS
            if default is DIFFERS:  # "Defaults: sft 2.0, dpo 1.0" when the targets share a field name
                same = len({t.split(".", 1)[1] for t in ks.knobs[key]}) == 1
                doc += (
                    " Defaults: "
                    + ", ".join(
                        f"{t.split('.', 1)[0] if same else t} {show_value(d)}" for t, d in zip(ks.knobs[key], defaults)
                    )
                    + "."
                )
        else:  # alphas
            tp = types.GenericAlias(list, (_PY_OF_JSON[s["items"]["type"]],))  # list[float]
            default = s["default"]
        common.append(SettingInput(PREFIX + key, f"params.{key}", key, tp, default, doc, s.get("maximum")))
    groups = [SettingGroup(COMMON, "Common settings", "job-level shorthands; a stage's own setting wins", common)]
    for stage, st in ks.stages.items():
        sp = props[stage]["properties"]
        rows = [
            SettingInput(
                f"{PREFIX}{stage}__{name}",
                f"params.{stage}.{name}",
                name,
                tp,
                sp[name]["default"],
                sp[name].get("description", ""),
                sp[name].get("maximum"),
            )
            for name, (_, tp) in settable(st).items()
        ]
        groups.append(SettingGroup(stage, stage, st.cls.__name__, rows))
    return groups


def flat_inputs(params: Any) -> dict[str, str]:
    """A request's params (a preset's) as input name -> text."""
    out: dict[str, str] = {}
    for key, value in (params if isinstance(params, dict) else {}).items():
        if isinstance(value, dict):
            out.update({f"{PREFIX}{key}__{sub}": show_value(v) for sub, v in value.items()})
        else:
            out[PREFIX + key] = show_value(value)
    return out


def stages_by_method() -> dict[str, Any]:
    """Which stages each pipeline method runs (ml.spec.pipeline_stages_used): the page shows only those groups."""
    return {
        "cong": {
            "default": pipeline_stages_used(list(DEFAULT_CONG_METHODS)),
            "by_method": {m: pipeline_stages_used([m]) for m in METHODS},
        },
        "train": {"default": None, "by_method": {m: pipeline_stages_used([t]) for m, t in TRAIN_METHODS.items()}},
    }


class JobForm(forms.Form):
    kind = forms.ChoiceField(choices=PAGE_KINDS, initial=Job.Kind.CONG)
    weak_base = forms.ChoiceField(required=False, label="Weak base (pi_pre)")
    weak_aligned = forms.ChoiceField(required=False, label="Weak aligned (pi_post)")
    strong = forms.ChoiceField(required=False, label="Strong model")
    prompts = forms.ChoiceField(required=False, label="Prompt dataset")
    alpha = forms.FloatField(
        required=False,
        initial=DEFAULT_ALPHA,
        help_text="0 = pure log ratio log pi_post - log pi_pre, 1 = plain pi_post sampling. Type any value from 0 "
        "to 1, or drag the slider.",
        # The box is the field (any value, kept as typed after an error); the slider beside it (the template's,
        # unnamed, so never sent) is a second way to set it, kept in step by job_new.js.
        widget=forms.NumberInput(attrs={"min": "0", "max": "1", "step": "any", "inputmode": "decimal"}),
    )
    methods = forms.MultipleChoiceField(
        required=False,
        widget=forms.CheckboxSelectMultiple,
        initial=list(DEFAULT_CONG_METHODS),
        choices=[(m, METHOD_LABELS.get(m, m)) for m in METHODS],
        help_text="Ways to train the strong model; each is evaluated on held-out prompts.",
    )
    method = forms.ChoiceField(
        required=False,
        label="Training method",
        choices=[("", "-")] + [(m, METHOD_LABELS.get(m, m)) for m in TRAIN_METHODS],
    )

    gold = forms.ChoiceField(
        required=False,
        label="Gold reward (labelling)",
        help_text="What labels and scores: weak alignment's best vs worst, the pairs' gold scores. Empty: the prompt "
        "dataset's gold. A reward model you registered (kind reward) or a built-in gold.",
    )
    eval_gold = forms.ChoiceField(
        required=False,
        label="Gold reward (evaluation)",
        help_text="What scores the evaluations, when it should differ from the labelling gold (labeler is not "
        "evaluator). Empty: the labelling gold.",
    )
    pairs_from = forms.CharField(
        required=False,
        label="Train on reviewed pairs of jobs",
        help_text="Job numbers, comma-separated (your jobs with generated pairs): their pairs as reviewed are the "
        "training data instead of new generation, the same rows as their exports. Method SFT or DPO.",
        widget=forms.TextInput(attrs={"placeholder": "e.g. 12, 15", "inputmode": "numeric"}),
    )
    include_pending = forms.ChoiceField(
        required=False,
        label="Pending pairs",
        choices=[
            ("", "only from jobs with no pair reviewed yet"),
            ("yes", "include them"),
            ("no", "leave them out"),
        ],
    )

    name = forms.CharField(required=False, label="Name", help_text="To tell this job apart on the dashboard.")
    tags = forms.CharField(
        required=False,
        label="Tags",
        help_text="Comma-separated short labels (letters, digits, _ . : + / -) to filter the dashboard by.",
    )

    METHODS_NONE = "choose at least one method to train and evaluate"

    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, **kwargs)
        models = list(selectors.models_visible(user=user))
        empty = [("", "-")]
        # A reward model only judges (gold, eval_gold): it is never offered as a model to generate with or train.
        judges = [m for m in models if m.kind == ModelEntry.Kind.REWARD]
        models = [m for m in models if m.kind != ModelEntry.Kind.REWARD]
        for name, kinds in (
            ("weak_base", ("weak", "any")),
            ("weak_aligned", ("weak", "any")),
            ("strong", ("strong", "any")),
        ):
            # Preferred kinds first, the rest after: any registered model may fill any role.
            ordered = [m for m in models if m.kind in kinds] + [m for m in models if m.kind not in kinds]
            self.fields[name].choices = empty + [(str(m.pk), f"{m.name} ({m.kind})") for m in ordered]
        golds = [(f"rm:{m.pk}", f"{m.name} (reward model)") for m in judges] + [(g, g) for g in known_golds()]
        self.fields["gold"].choices = [("", "the prompt dataset's gold"), *golds]
        self.fields["eval_gold"].choices = [("", "the labelling gold"), *golds]
        for name in ("weak_base", "weak_aligned", "strong", "prompts"):
            # Django's own says "Select a valid choice. 7 is not one of ...": an id the user never saw.
            self.fields[name].error_messages["invalid_choice"] = (
                "that choice is no longer available (removed, or not shared with you); choose another"
            )
        self.fields["prompts"].choices = empty + [
            (str(d.pk), f"{d.name} ({d.row_count} rows{', gold ' + d.gold if d.gold else ''})")
            for d in selectors.datasets_visible(user=user)
        ]
        # Every kind's settings are on the page (the script shows the chosen kind's); only the chosen kind's
        # section is enabled, so only its inputs are sent, and only its inputs carry what was typed.
        kinds = [str(k) for k, _ in PAGE_KINDS]
        kind = self.data.get("kind") if self.is_bound else self.initial.get("kind")
        kind = str(kind or self.fields["kind"].initial)
        self.active_kind = kind if kind in kinds else str(Job.Kind.CONG)
        limits = getattr(settings, "JOB_LIMITS", None)
        self.kind_settings = [
            KindSettings(str(k), label, setting_groups(str(k), limits), str(k) == self.active_kind)
            for k, label in PAGE_KINDS
        ]
        typed = (
            {name: str(self.data.get(name, "")) for name in self.data if name.startswith(PREFIX)}
            if self.is_bound
            else flat_inputs(self.initial.get("params"))
        )
        for group in self.active_groups:
            for row in group.rows:
                row.value = typed.get(row.name, "")
        self.params: dict[str, Any] = {}

    @property
    def active_groups(self) -> list[SettingGroup]:
        return next(ks.groups for ks in self.kind_settings if ks.active)

    def _setting_error(self, row: SettingInput, msg: str) -> None:
        row.errors.append(msg)
        self.add_error(None, f"{row.path}: {msg}")  # listed at the top too: the group may be collapsed

    def clean(self):
        data = super().clean()
        # params from the filled inputs only (empty = the spec's default), typed by each field's annotation.
        params: dict[str, Any] = {}
        for group in self.active_groups:
            for row in group.rows:
                if not row.value.strip():
                    continue
                try:
                    value = coerce(row.value, row.tp)
                except ValueError as exc:
                    self._setting_error(row, str(exc))
                    continue
                (params if group.key == COMMON else params.setdefault(group.key, {}))[row.label] = value
        known = {row.name for group in self.active_groups for row in group.rows}
        for name in self.data:
            if name.startswith(PREFIX) and name not in known and str(self.data.get(name, "")).strip():
                self.add_error(
                    None, f"{name}: not a setting of kind={self.active_kind}; empty it, or pick the kind it belongs to"
                )
        # An unchecked box group sends nothing, which the service reads as "the default methods": on the page,
        # where the boxes start checked, no box checked is a choice of none, so it is refused, not defaulted.
        if data.get("kind") == Job.Kind.CONG and not data.get("methods") and "methods" not in self.errors:
            self.add_error("methods", self.METHODS_NONE)
        self.params = params
        return data

    def clean_pairs_from(self) -> list[int] | None:
        raw = str(self.cleaned_data.get("pairs_from") or "").replace(",", " ").split()
        if not raw:
            return None
        if not all(part.isdigit() for part in raw):
            raise ValidationError("give job numbers separated by commas, e.g. 12, 15")
        return [int(part) for part in raw]

    @property
    def alpha_slider(self) -> float:
        """Where the slider stands: the box's number clamped to [0, 1] (the box keeps what was typed)."""
        try:
            value = float(self["alpha"].value())
        except (TypeError, ValueError):
            return DEFAULT_ALPHA
        return min(1.0, max(0.0, value)) if math.isfinite(value) else DEFAULT_ALPHA

    @property
    def can_check(self) -> bool:
        """Whether the service can judge the rest of an invalid form (its kind parsed), so that every error is
        shown at once rather than the service's only after the parse errors are fixed."""
        return "kind" in getattr(self, "cleaned_data", {})

    def service_kwargs(self) -> dict:
        """Arguments for jobs.services.job_create from the cleaned data."""
        d = self.cleaned_data
        kind = d["kind"]
        return {
            "kind": kind,
            "weak_base": d.get("weak_base") or None,
            "weak_aligned": d.get("weak_aligned") or None,
            "strong": d.get("strong") or None,
            "prompts": d.get("prompts") or None,
            # The alpha field shows for every kind; only the kinds that decode with one get it.
            "alpha": d.get("alpha") if kind in KINDS_WITH_ALPHA else None,
            # The checkbox group and the method select belong to their kinds' sections of the page.
            "methods": list(d.get("methods") or []) if kind == Job.Kind.CONG else None,
            "method": (d.get("method") or None) if kind == Job.Kind.TRAIN else None,
            "params": self.params,
            "gold": d.get("gold") or None,
            "eval_gold": (d.get("eval_gold") or None) if kind in EVAL_GOLD_KINDS else None,
            "pairs_from": d.get("pairs_from") if kind == Job.Kind.TRAIN else None,
            "include_pending": {"yes": True, "no": False}.get(d.get("include_pending") or "")
            if kind == Job.Kind.TRAIN and d.get("pairs_from")
            else None,
            "name": d.get("name") or "",  # the service checks both (jobs.services.creation.job_labels)
            "tags": [t for t in str(d.get("tags") or "").split(",") if t.strip()],
        }

    def add_service_errors(self, exc: ValidationError) -> None:
        """The service's errors on the inputs they name: ``params.sft.learning_rate`` on p__sft__learning_rate
        (and listed at the top), ``params.dpo`` on the dpo group, a form field's name on that field."""
        rows = {row.path: row for group in self.active_groups for row in group.rows}
        groups = {f"params.{group.key}": group for group in self.active_groups}
        refused = set(self.errors)  # fields the form refused reached the service empty: its "needs ..." adds nothing
        for key, msgs in exc.message_dict.items():
            for msg in msgs:
                path = re.sub(r"(\[\d+\])+$", "", key)  # params.alphas[2] -> the alphas input
                if path in rows:
                    self._setting_error(rows[path], msg)
                elif path in groups:
                    groups[path].errors.append(msg)
                    self.add_error(None, f"{key}: {msg}")
                elif key in self.fields:
                    if key not in refused:
                        self.add_error(key, msg)
                else:
                    self.add_error(None, msg if key == "__all__" else f"{key}: {msg}")
