"""Every surface that offers job settings derives them from ml's registry: the OpenAPI schema's params
components, GET /api/v1/kinds/, the new-job page's fields and the CLI (tests/ml/test_job_cli.py) are compared
here with the dataclasses themselves."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from ml.spec import field_default, registry, settable, top_settable

pytestmark = pytest.mark.django_db


def _expected(kind: str) -> tuple[set[str], dict[str, dict[str, object]]]:
    """(params' top-level keys, {stage: {field: default}}) straight from the dataclasses."""
    ks = registry()[kind]
    top = set(ks.knobs) | set(ks.stages) | ({"alphas"} if ks.sweep else set())
    if ks.pipeline:
        top |= set(top_settable())
    stages = {s: {n: st.defaults.get(n, field_default(f)) for n, (f, _) in settable(st).items()}
              for s, st in ks.stages.items()}
    return top, stages


def _client(user) -> APIClient:
    c = APIClient()
    c.force_authenticate(user)
    return c


def test_openapi_params_components_are_the_dataclasses(user):
    schema = _client(user).get("/api/v1/schema/", {"format": "json"}).json()
    params = schema["components"]["schemas"]["JobCreate"]["properties"]["params"]
    by_title = {s["title"]: s for s in params["oneOf"]}
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
