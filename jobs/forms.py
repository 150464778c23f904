"""The new-job page's form. It only parses what the browser sends (types, choices); every rule about
what a job may ask for lives in jobs.services.job_create, whose ValidationErrors are put back on the
form's fields by ``add_service_errors``."""

from __future__ import annotations

import json

from django import forms
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.forms import AuthenticationForm
from django.core.exceptions import ValidationError

from jobs import selectors, services
from jobs.api import json_checks, login_guard
from jobs.models import Job
from ml.pipeline import LABELS, METHODS
from ml.spec import DEFAULT_ALPHA, DEFAULT_CONG_METHODS, KINDS_WITH_ALPHA, TRAIN_METHODS

PAGE_KINDS = [(Job.Kind.CONG, "ConG pipeline (weak pair -> pairs -> train strong -> evaluate)"),
              (Job.Kind.CD_GENERATE, "Contrastive decoding only (make pairs)"),
              (Job.Kind.ALPHA_SWEEP, "Alpha sweep (gold and implicit reward vs alpha)"),
              (Job.Kind.PREFLIGHT, "Pre-flight check (does CD raise gold reward for this weak pair?)"),
              (Job.Kind.WEAK_ALIGN, "Weak alignment (make pi_post from pi_pre)"),
              (Job.Kind.TRAIN, "Train the strong model with one method"),
              (Job.Kind.EVALUATE, "Evaluate a model")]
# Method labels come from ml.pipeline (one home); kind=train's methods add the two plain names.
METHOD_LABELS = {**LABELS, "sft": "SFT", "dpo": "DPO"}
# Form field -> key of the service's ValidationError (same name unless listed).
SERVICE_FIELD = {"params_json": "params"}


class JobForm(forms.Form):
    kind = forms.ChoiceField(choices=PAGE_KINDS, initial=Job.Kind.CONG)
    weak_base = forms.ChoiceField(required=False, label="Weak base (pi_pre)")
    weak_aligned = forms.ChoiceField(required=False, label="Weak aligned (pi_post)")
    strong = forms.ChoiceField(required=False, label="Strong model")
    prompts = forms.ChoiceField(required=False, label="Prompt dataset")
    alpha = forms.FloatField(required=False, initial=DEFAULT_ALPHA,
                             help_text="0 = pure log ratio log pi_post - log pi_pre, 1 = plain pi_post sampling.",
                             widget=forms.NumberInput(attrs={"type": "range", "min": "0", "max": "1", "step": "0.05"}))
    methods = forms.MultipleChoiceField(
        required=False, widget=forms.CheckboxSelectMultiple, initial=list(DEFAULT_CONG_METHODS),
        choices=[(m, METHOD_LABELS.get(m, m)) for m in METHODS],
        help_text="Ways to train the strong model; each is evaluated on held-out prompts.")
    method = forms.ChoiceField(required=False, label="Training method",
                               choices=[("", "-")] + [(m, METHOD_LABELS.get(m, m)) for m in TRAIN_METHODS])
    max_prompts = forms.IntegerField(required=False, help_text="Use only the first N prompts (empty = all).")
    max_new_tokens = forms.IntegerField(required=False, help_text="Longest response, in tokens.")
    seed = forms.IntegerField(required=False)
    params_json = forms.CharField(required=False, label="More settings (JSON)",
                                  widget=forms.Textarea(attrs={"rows": 3, "placeholder": '{"batch_size": 8}'}),
                                  help_text="Any other job parameter, e.g. per-stage overrides.")

    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, **kwargs)
        models = list(selectors.models_visible(user=user))
        empty = [("", "-")]
        for name, kinds in (("weak_base", ("weak", "any")), ("weak_aligned", ("weak", "any")),
                            ("strong", ("strong", "any"))):
            # Preferred kinds first, the rest after: any registered model may fill any role.
            ordered = [m for m in models if m.kind in kinds] + [m for m in models if m.kind not in kinds]
            self.fields[name].choices = empty + [(str(m.pk), f"{m.name} ({m.kind})") for m in ordered]
        self.fields["prompts"].choices = empty + [
            (str(d.pk), f"{d.name} ({d.row_count} rows{', gold ' + d.gold if d.gold else ''})")
            for d in selectors.datasets_visible(user=user)]

    def clean_params_json(self):
        raw = (self.cleaned_data.get("params_json") or "").strip()
        if not raw:
            return {}
        try:
            # The API's checks (lone surrogates, nesting, number range): what the API refuses with a 400
            # the page refuses too, before a job row exists (docs/SECURITY.md, finding 7).
            return json_checks.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValidationError(f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
        except json_checks.UnsafeJSON as exc:
            raise ValidationError(str(exc)) from None

    def clean(self):
        data = super().clean()
        for key in ("max_prompts", "max_new_tokens", "seed"):  # merged into params (service_kwargs)
            value = data.get(key)
            if value is not None and not json_checks.INT_MIN <= value <= json_checks.INT_MAX:
                self.add_error(key, f"out of range: give a whole number between {json_checks.INT_MIN} "
                                    f"and {json_checks.INT_MAX}")
        return data

    def service_kwargs(self) -> dict:
        """Arguments for jobs.services.job_create from the cleaned data."""
        d = self.cleaned_data
        params = d.get("params_json") or {}
        if isinstance(params, dict):  # anything else goes to the service as is, which says what is wrong
            params = dict(params)
            for key in ("max_prompts", "max_new_tokens", "seed"):
                if d.get(key) is not None:
                    params[key] = d[key]
        kind = d["kind"]
        return {"kind": kind, "weak_base": d.get("weak_base") or None, "weak_aligned": d.get("weak_aligned") or None,
                "strong": d.get("strong") or None, "prompts": d.get("prompts") or None,
                # The alpha field shows for every kind; only the kinds that decode with one get it.
                "alpha": d.get("alpha") if kind in KINDS_WITH_ALPHA else None,
                # The checkbox group and the method select belong to their kinds' sections of the page.
                "methods": list(d.get("methods") or []) if kind == Job.Kind.CONG else None,
                "method": (d.get("method") or None) if kind == Job.Kind.TRAIN else None,
                "params": params}

    def add_service_errors(self, exc: ValidationError) -> None:
        by_service = {SERVICE_FIELD.get(f, f): f for f in self.fields}
        for key, msgs in exc.message_dict.items():
            field = by_service.get(key) or (by_service.get("params") if key.startswith("params.") else None)
            for msg in msgs:
                if field is not None:
                    self.add_error(field, f"{key}: {msg}" if key.startswith("params.") else msg)
                else:
                    self.add_error(None, msg if key == "__all__" else f"{key}: {msg}")


class LockoutMixin:
    """The log-in throttle's message (jobs.api.login_guard) instead of "wrong password" while the
    username or the client's address is locked; the backend refuses such attempts either way."""

    throttled = False  # the view answers 429 when set

    def clean(self):
        wait = login_guard.lock_wait(self.data.get("username") or None, login_guard.client_address(self.request))
        if wait is not None:
            self.throttled = True
            raise ValidationError(login_guard.lock_message(wait), code="throttled")
        return super().clean()


class ThrottledAuthenticationForm(LockoutMixin, AuthenticationForm):
    """The log-in page's form (jobs.views.ThrottledLoginView)."""


class ThrottledAdminAuthenticationForm(LockoutMixin, AdminAuthenticationForm):
    """The admin's log-in form (set on admin.site in congweb.urls)."""
