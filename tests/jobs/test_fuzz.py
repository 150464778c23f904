"""Schema-driven fuzzing of the REST API with schemathesis: no input may make the server answer 5xx,
and every documented response matches the schema.

The OpenAPI schema is the app's own (drf-spectacular at /api/v1/schema/), loaded through Django's WSGI
handler in this process, so requests run inside the test's database transaction and no server is
started. A seeded user (token auth) owns a registered tiny weak pair, a prompts dataset, a job and a
pair, so that besides random ids every operation is also fuzzed against objects that exist.

Bounded and reproducible for CI: a fixed number of examples per operation, derandomized Hypothesis,
no example database. Job creation commits nothing here (pytest-django's ``db`` never runs on_commit),
and Celery points at the test Redis anyway, so a send could never hang on a missing broker.
"""

from __future__ import annotations

import time

import pytest
import schemathesis
from django.core.handlers.wsgi import WSGIHandler
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis.errors import Unsatisfiable
from rest_framework.authtoken.models import Token
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error, response_schema_conformance

from jobs import services
from jobs.models import Job
from jobs.services.experiments import experiment_create

from .conftest import point_celery_at

pytestmark = pytest.mark.django_db

MAX_EXAMPLES = 15
# No 5xx, and every documented (2xx) response matches its schema. Undocumented 400/404 bodies are
# not checked (status_code_conformance would flag every 404 for a random id).
CHECKS = [not_a_server_error, response_schema_conformance]
SCHEMA_PATH = "/api/v1/schema/"


@pytest.fixture(autouse=True)
def subnormal_floats():
    """tests/conftest.py flushes denormals to zero for torch speed; Hypothesis refuses to generate
    floats in that processor state, so restore IEEE behaviour for this module's tests."""
    import torch

    torch.set_flush_denormal(False)
    yield
    torch.set_flush_denormal(True)


@pytest.fixture
def seeded(user, weak_pair, prompts_ds, redis_url, settings, tmp_path):
    from congweb.redis_urls import celery_url

    settings.CELERY_BROKER_URL = celery_url(redis_url)
    point_celery_at(redis_url)
    # Live event pushes (every job event) go to the same Redis instead of failing to connect.
    settings.CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [redis_url]}}
    }
    from channels.layers import channel_layers

    channel_layers.backends.clear()
    settings.DATA_DIR = tmp_path / "data"
    wb, wa = weak_pair
    job = services.job_create(
        user=user,
        kind="cd_generate",
        weak_base=wb.pk,
        weak_aligned=wa.pk,
        prompts=prompts_ds.pk,
        alpha=0.4,
        params={"max_prompts": 2},
    )
    services.pair_store(
        job_id=job.pk, row={"index": 0, "prompt": "the movie was", "response": "good", "implicit_reward_mean": 0.5}
    )
    # A real file in the job's run folder, so the artifact download's own code is reached too.
    samples = settings.RUNS_DIR / str(job.pk) / "cd_generate" / "samples.jsonl"
    samples.parent.mkdir(parents=True, exist_ok=True)
    samples.write_text('{"index": 0, "prompt": "the movie was", "response": "good"}\n')
    art = services.artifact_record(job_id=job.pk, stage="cd_generate", kind="samples", path=str(samples))
    token, _ = Token.objects.get_or_create(user=user)
    exp = experiment_create(
        user=user,
        name="e",
        request={"kind": "cd_generate", "weak_base": wb.pk, "weak_aligned": wa.pk, "prompts": prompts_ds.pk},
        grid={"params.seed": [0]},
    )
    yield {"token": token.key, "job": job, "pair": job.pairs.get(), "artifact": art, "experiment": exp}
    channel_layers.backends.clear()


def _fuzz(
    operation, auth: dict, path_parameters: dict | None, failures: list, mode: GenerationMode = GenerationMode.POSITIVE
) -> int:
    """Run MAX_EXAMPLES cases of one operation; collect (not raise) server errors so every operation
    is reported in one run."""
    calls = 0

    @hsettings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(mode, path_parameters=path_parameters))
    def run(case):
        nonlocal calls
        calls += 1
        response = case.call(headers=auth)
        try:
            case.validate_response(response, checks=CHECKS)
        except Exception as exc:  # a 5xx or a schema mismatch: record the request that caused it
            failures.append(f"{operation.label} -> {response.status_code}\n{case.as_curl_command()}\n{exc}"[:3000])

    try:
        run()
    except Unsatisfiable:
        # Negative mode on an operation with nothing to break once the ids are fixed (POST cancel/
        # retry take no body): there is no schema-violating input to send.
        if mode is not GenerationMode.NEGATIVE:
            raise
    return calls


@pytest.fixture
def wsgi_app():
    """Django's WSGI handler, kept off the per-request connection closing exactly as Django's own test
    client does, so every request sees (and stays inside) the test's transaction."""
    from django.core.signals import request_finished, request_started
    from django.db import close_old_connections

    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield WSGIHandler()
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


def test_no_input_makes_the_api_answer_5xx(seeded, wsgi_app):
    schema = schemathesis.openapi.from_wsgi(SCHEMA_PATH, wsgi_app)
    auth = {"Authorization": f"Token {seeded['token']}"}
    real_ids = {
        "id": seeded["job"].pk,
        "pair_id": seeded["pair"].pk,
        "artifact_id": seeded["artifact"].pk,
        "experiment_id": seeded["experiment"].pk,
    }
    failures: list[str] = []
    labels: list[str] = []
    started = time.monotonic()
    for result in schema.get_all_operations():
        operation = result.ok()
        labels.append(operation.label)
        names = {p.name for p in operation.iter_parameters() if p.location == "path"}
        _fuzz(operation, auth, None, failures)  # random ids: mostly 404s, must never be 500s
        if names:  # and the objects that exist, so validation and service code is reached
            _fuzz(operation, auth, {n: real_ids[n] for n in names}, failures)
        if operation.method.upper() == "POST" or any(
            True for p in operation.iter_parameters() if p.location == "query"
        ):
            # Inputs that break the schema (wrong types, missing fields): must be 4xx, never 5xx.
            _fuzz(operation, auth, {n: real_ids[n] for n in names} or None, failures, GenerationMode.NEGATIVE)
    elapsed = time.monotonic() - started
    # The schema covers the whole API (13 routes, 14 operations); a silently shrunken schema would
    # make this test pass vacuously.
    assert len(labels) >= 14, labels
    assert "POST /api/v1/jobs/" in labels and "POST /api/v1/datasets/" in labels
    assert not failures, "\n\n".join(failures)
    # The seeded job was never run: fuzzed cancel/retry may change its status, but nothing ran it.
    assert Job.objects.filter(status="running").count() == 0
    print(f"fuzzed {len(labels)} operations in {elapsed:.1f}s")


# --- job creation, fuzzed around real ids ---------------------------------------------------------
# Random JSON rarely names an existing model, so the schema-driven run above mostly stops at "no model
# with id N". Here the ids are real (or not), and kinds, alphas, methods and params are fuzzed, so
# every validation rule in jobs.services.job_create is reached.
def _json_values():
    from hypothesis import strategies as st

    scalars = (
        st.none()
        | st.booleans()
        | st.integers()
        | st.integers(min_value=-(10**400), max_value=10**400)
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=8)
    )
    return st.recursive(
        scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3), max_leaves=6
    )


def test_job_create_fuzzed_around_real_ids_never_500(user, weak_pair, prompts_ds, settings):
    from hypothesis import strategies as st
    from rest_framework.test import APIClient

    from ml.pipeline import METHODS as CONG_METHODS
    from ml.spec import TRAIN_METHODS, registry, settable

    settings.JOB_MAX_ACTIVE_PER_USER = 0  # hundreds of accepted jobs here; the cap has its own test
    # Every setting name any kind knows, stage names and stage fields included (from the registry).
    known = sorted({k for ks in registry().values() for k in (*ks.knobs, *ks.stages)} | {"alphas"})
    stage_fields = sorted({f for ks in registry().values() for st_ in ks.stages.values() for f in settable(st_)})

    wb, wa = weak_pair
    anything = _json_values()
    model_id = st.sampled_from([wb.pk, wa.pk, str(wb.pk)]) | anything
    param_keys = st.sampled_from(known) | st.text(max_size=6)
    stage_values = st.dictionaries(st.sampled_from(stage_fields) | st.text(max_size=5), anything, max_size=3)
    body = st.fixed_dictionaries(
        {"kind": st.sampled_from(Job.Kind.values) | st.text(max_size=8)},
        optional={
            "weak_base": model_id,
            "weak_aligned": model_id,
            "strong": model_id,
            "prompts": st.just(prompts_ds.pk) | anything,
            "eval_prompts": st.just(prompts_ds.pk) | anything,
            "alpha": st.floats(min_value=-1, max_value=2) | anything,
            "method": st.none() | st.sampled_from(sorted(TRAIN_METHODS)) | st.text(max_size=6),
            "methods": st.lists(st.sampled_from(CONG_METHODS) | st.text(max_size=4), max_size=3) | anything,
            "params": st.dictionaries(param_keys, anything | st.floats(-2, 2), max_size=4) | anything,
        },
    )
    # Free bodies mostly fail early; a valid cd_generate request with ONE field replaced by a fuzzed
    # value (or with fuzzed params) reaches the later rules and, when the value is fine, a 201.
    valid = {
        "kind": "cd_generate",
        "weak_base": wb.pk,
        "weak_aligned": wa.pk,
        "prompts": prompts_ds.pk,
        "alpha": 0.4,
        "params": {"max_prompts": 2},
    }
    one_field = st.tuples(
        st.sampled_from([*valid, "strong", "eval_prompts", "method", "methods"]), anything | st.floats(-1, 2)
    ).map(lambda kv: {**valid, kv[0]: kv[1]})
    fuzzed_params = st.dictionaries(
        param_keys, anything | st.floats(-2, 2) | st.integers(0, 3) | stage_values, max_size=3
    ).map(lambda p: {**valid, "params": p})
    body = body | one_field | fuzzed_params
    client = APIClient()  # raises the view's exception on a 500, with its traceback
    client.force_authenticate(user)
    statuses: dict[int, int] = {}

    @hsettings(
        max_examples=200, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(body=body)
    def run(body):
        res = client.post("/api/v1/jobs/", body, format="json")
        assert res.status_code in (201, 400), (res.status_code, body, res.content[:500])
        statuses[res.status_code] = statuses.get(res.status_code, 0) + 1

    run()
    assert statuses.get(201) and statuses.get(400), statuses  # both outcomes reached: the fuzz is not vacuous


def test_huge_json_integers_are_400_not_500(user, weak_pair, prompts_ds):
    """Regression (found by the fuzz above): an integer beyond float range (valid JSON) as alpha, a float
    param or an entry of alphas crashed the number check with OverflowError (HTTP 500)."""
    from rest_framework.test import APIClient

    wb, wa = weak_pair
    client = APIClient()
    client.force_authenticate(user)
    huge = "1" + "0" * 400
    base = f'"kind": "cd_generate", "weak_base": {wb.pk}, "weak_aligned": {wa.pk}, "prompts": {prompts_ds.pk}'
    for extra, field in (
        (f'"alpha": {huge}', "alpha"),
        (f'"params": {{"temperature": {huge}}}', "params"),
        (f'"params": {{"alphas": [{huge}]}}', "params"),
    ):
        res = client.post("/api/v1/jobs/", "{" + base + ", " + extra + "}", content_type="application/json")
        assert res.status_code == 400, (extra, res.status_code)
        assert field in res.json()
    assert Job.objects.count() == 0
