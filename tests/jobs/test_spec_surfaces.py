"""Every surface that offers job settings derives them from ml's registry: the OpenAPI schema's params
components, GET /api/v1/kinds/, the new-job page's fields and the CLI (tests/ml/test_job_cli.py) are compared
here with the dataclasses themselves."""

from __future__ import annotations

import json
from html.parser import HTMLParser

import pytest
from rest_framework.test import APIClient

from ml.execution import SETTINGS as EXECUTION
from ml.spec import field_default, registry, settable, top_settable

pytestmark = pytest.mark.django_db


def _expected(kind: str) -> tuple[set[str], dict[str, dict[str, object]]]:
    """(params' top-level keys, {stage: {field: default}}) straight from the dataclasses."""
    ks = registry()[kind]
    top = set(ks.knobs) | set(ks.stages) | ({"alphas"} if ks.sweep else set())
    if ks.pipeline:
        top |= set(top_settable())
    top |= {name for name, setting in EXECUTION.items() if kind in setting.kinds}  # ml.execution: how it runs
    stages = {
        s: {n: st.defaults.get(n, field_default(f)) for n, (f, _) in settable(st).items()}
        for s, st in ks.stages.items()
    }
    return top, stages


def _client(user) -> APIClient:
    c = APIClient()
    c.force_authenticate(user)
    return c


def test_openapi_params_components_are_the_dataclasses(user):
    schema = _client(user).get("/api/v1/schema/", {"format": "json"}).json()
    params = schema["components"]["schemas"]["JobCreateRequest"]["properties"]["params"]
    by_title = {s["title"]: s for s in params["anyOf"] if "title" in s}  # the other one: {"type": "null"}
    assert len(by_title) == len(registry())
    for kind in registry():
        top, stages = _expected(kind)
        s = by_title[f"Params{kind.title().replace('_', '')}"]
        assert set(s["properties"]) == top and s["additionalProperties"] is False, kind
        for stage, fields_ in stages.items():
            got = s["properties"][stage]["properties"]
            assert {k: v["default"] for k, v in got.items()} == fields_, (kind, stage)


def test_kinds_endpoint_lists_the_same_settings_with_the_servers_limits(user, settings):
    settings.JOB_LIMITS = {**settings.JOB_LIMITS, "max_new_tokens": 99}
    kinds = _client(user).get("/api/v1/kinds/").json()
    assert set(kinds) == set(registry())
    for kind, body in kinds.items():
        top, stages = _expected(kind)
        assert set(body["params"]["properties"]) == top
    gen = kinds["cd_generate"]["params"]["properties"]["cd_generate"]["properties"]
    assert gen["max_new_tokens"]["maximum"] == 99 and "Most tokens generated" in gen["max_new_tokens"]["description"]


class _SettingInputs(HTMLParser):
    """{kind: {input name: data-default}} from the new-job page's per-kind settings sections."""

    def __init__(self) -> None:
        super().__init__()
        self.kinds: dict[str, dict[str, str | None]] = {}
        self.kind: str | None = None
        self.depth = 0  # fieldsets open inside the current kind's section
        self.placeholders: dict[tuple[str, str], str | None] = {}

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "fieldset":
            if "kind-settings" in (a.get("class") or "").split():
                self.kind, self.depth = a["data-kind"], 0
                self.kinds[self.kind] = {}
            elif self.kind:
                self.depth += 1
        elif tag in ("input", "select", "textarea") and self.kind and (a.get("name") or "").startswith("p__"):
            assert a["name"] not in self.kinds[self.kind], f"{a['name']} twice for kind {self.kind}"
            self.kinds[self.kind][a["name"]] = a.get("data-default")
            if tag == "input":  # what the user sees: the default, written as the page writes values
                self.placeholders[(self.kind, a["name"])] = a.get("placeholder")

    def handle_endtag(self, tag):
        if tag == "fieldset" and self.kind:
            if self.depth:
                self.depth -= 1
            else:
                self.kind = None


def test_new_job_page_fields_are_the_dataclasses(client, user):
    """One input per setting (knob, top setting, alphas, every stage's settable field) for every kind, named
    p__<key> / p__<stage>__<field>, its default the registry's."""
    from jobs.page_selectors import show_value
    from ml.resolve import resolve

    client.force_login(user)
    page = _SettingInputs()
    page.feed(client.get("/jobs/new/").content.decode())
    assert set(page.kinds) == set(registry())
    for kind, inputs in page.kinds.items():
        ks = registry()[kind]
        top_keys, stages = _expected(kind)
        expected = {f"p__{k}" for k in top_keys - set(ks.stages)}
        expected |= {f"p__{stage}__{name}" for stage, fields_ in stages.items() for name in fields_}
        assert set(inputs) == expected, (kind, set(inputs) ^ expected)
        # Defaults: stage fields (the kind's context defaults over the class's), top settings, knobs (their
        # targets' default when those agree; none shown when they differ), alphas (what resolve fills in).
        for stage, fields_ in stages.items():
            for name, default in fields_.items():
                assert json.loads(inputs[f"p__{stage}__{name}"]) == default, (kind, stage, name)
                if (kind, f"p__{stage}__{name}") in page.placeholders:
                    assert page.placeholders[(kind, f"p__{stage}__{name}")] == show_value(default), (kind, stage, name)
        top = {n: field_default(f) for n, (f, _) in top_settable().items()} if ks.pipeline else {}
        for name, default in top.items():
            assert json.loads(inputs[f"p__{name}"]) == default, (kind, name)
        for knob, targets in ks.knobs.items():
            if knob in top:
                continue
            defaults = {json.dumps(stages[t.split(".")[0]][t.split(".")[1]]) for t in targets}
            assert inputs[f"p__{knob}"] == (defaults.pop() if len(defaults) == 1 else ""), (kind, knob)
        if ks.sweep:
            assert json.loads(inputs["p__alphas"]) == resolve(kind)["alphas"]
