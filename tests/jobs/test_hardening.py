"""docs/SECURITY.md findings 7 (poisoned rows and 500s) and 9 (smaller holes): input that cannot be
stored is a 400 before anything is created, on every REST endpoint and on the pages; body size limits;
the 500 page; the Content-Security-Policy; X-Forwarded-Proto; the log-in throttle. (The websocket's
close codes are in test_websocket.py and test_security.py.)"""

from __future__ import annotations

import io
import json
import re

import pytest
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, path
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from jobs import services
from jobs.models import Dataset, GeneratedPair, Job, JobEvent, ModelEntry
from jobs.services.experiments import experiment_create

from .conftest import ROOT, make_prompts, wait_for

pytestmark = pytest.mark.django_db

DEEP = 100_000
HUGE_INT = "9" * 5000


# --- the REST endpoints, from the URL resolver -------------------------------------------------------
def api_routes() -> list[tuple[str, URLPattern]]:
    """Every route under api/ that the project's URLconf serves (walked, not listed by hand)."""
    found = []

    def walk(patterns, prefix):
        for p in patterns:
            if isinstance(p, URLResolver):
                walk(p.url_patterns, prefix + str(p.pattern))
            else:
                found.append((prefix + str(p.pattern), p))

    walk(get_resolver().url_patterns, "")
    return [(route, p) for route, p in found if route.startswith("api/")]


def fill(route: str, ids: dict) -> str:
    def sub(m):
        assert m.group(1) in ids, f"{route}: the sweep has no object for <{m.group(1)}>; add one to `world`"
        return str(ids[m.group(1)])

    return "/" + re.sub(r"<(?:\w+:)?(\w+)>", sub, route)


@pytest.fixture
def world(user, weak_pair, prompts_ds):
    """Real objects, so no request is turned away by a 404 before its body is looked at."""
    wb, wa = weak_pair
    job = services.job_create(
        user=user, kind="cd_generate", weak_base=wb.pk, weak_aligned=wa.pk, prompts=prompts_ds.pk, alpha=0.4
    )
    services.pair_store(job_id=job.pk, row={"index": 0, "prompt": "p", "response": "r"})
    art = services.artifact_record(
        job_id=job.pk, stage="cd_generate", kind="samples", path="/nonexistent/samples.jsonl"
    )
    exp = experiment_create(
        user=user,
        name="e",
        request={"kind": "cd_generate", "weak_base": wb.pk, "weak_aligned": wa.pk, "prompts": prompts_ds.pk},
        grid={"params.seed": [0]},
    )
    return {
        "pk": job.pk,
        "pair_id": job.pairs.get().pk,
        "artifact_id": art.pk,
        "experiment_id": exp.pk,
        "job": job,
        "weak_pair": weak_pair,
        "prompts": prompts_ds,
    }


def snapshot():
    return (
        Job.objects.count(),
        Dataset.objects.count(),
        ModelEntry.objects.count(),
        JobEvent.objects.count(),
        GeneratedPair.objects.count(),
        Token.objects.count(),
        list(Job.objects.values_list("pk", "status", "cancel_requested", "attempts")),
        list(GeneratedPair.objects.values_list("pk", "review_status", "edited_text")),
    )


def valid_fields(world) -> str:
    """Fields that every write endpoint would accept (each reads its own), as JSON object members."""
    wb, wa = world["weak_pair"]
    body = {
        "kind": "cd_generate",
        "weak_base": wb.pk,
        "weak_aligned": wa.pk,
        "prompts": world["prompts"].pk,
        "alpha": 0.4,
        "name": "poison",
        "path": wb.path,
        "action": "edit",
        "username": "alice",
        "password": "pw-alice-123",
    }
    return json.dumps(body)[1:-1]


POISONS = {  # JSON texts of `params` (or, for the last ones, of other fields) that must never be stored
    "surrogate value": '{"note": "\\ud800"}',
    "surrogate key": '{"\\udfff": 1}',
    "surrogate deep": '{"sft": {"a": [1, {"b": "ok \\udbff"}]}}',
    "deep nesting": "[" * DEEP + "]" * DEEP,
    "nesting over the limit": "[" * 40 + "]" * 40,
    "5000-digit integer": HUGE_INT,
    "2**64": str(2**64),
    "huge float": "1e999",
    "NaN": "NaN",
}


def poisoned_bodies(world):
    base = valid_fields(world)
    for name, params in POISONS.items():
        yield name, "{" + base + ', "params": ' + params + "}"
    yield "surrogate in edited_text", "{" + base + ', "edited_text": "\\ud800"}'
    yield "surrogate in username", '{"username": "\\ud800", "password": "x"}'


def refused(res) -> bool:
    return res.status_code in (400, 401, 403, 404, 405, 415)


def test_every_endpoint_refuses_poisoned_json_and_creates_nothing(world, user):
    routes = api_routes()
    assert len(routes) >= 15, routes  # the API's own routes plus schema and docs
    client = APIClient()
    client.force_authenticate(user)
    before = snapshot()
    checked = 0
    for route, pattern in routes:
        url = fill(route, world)
        accepts_json = any(
            p.media_type == "application/json"
            for p in getattr(getattr(pattern.callback, "cls", None), "parser_classes", [])
        )
        for name, body in poisoned_bodies(world):
            for method in ("post", "put", "patch", "delete"):
                res = getattr(client, method)(url, data=body, content_type="application/json")
                assert refused(res), (method.upper(), url, name, res.status_code, res.content[:300])
                if res.status_code == 400 and accepts_json:
                    detail = json.dumps(res.json())
                    assert re.search(r"surrogate|nested deeper|integer|too large|not valid JSON", detail), detail
                if res.status_code == 415:
                    assert not accepts_json, (method.upper(), url)
                checked += 1
    assert checked == len(routes) * 4 * len(list(poisoned_bodies(world)))
    assert snapshot() == before


def test_the_job_endpoint_answers_400_with_where_and_what(world, user):
    client = APIClient()
    client.force_authenticate(user)
    base = valid_fields(world)
    jobs = Job.objects.count()
    cases = {
        "surrogate": ('{"a": {"b": "x\\ud800"}}', "$.params.a.b"),
        "deep": ("[" * DEEP + "]" * DEEP, "nested deeper than 32"),
        "digits": (HUGE_INT, "more than 19 digits"),
        "range": (str(2**63), "out of range"),
    }
    for name, (params, expected) in cases.items():
        res = client.post(
            "/api/v1/jobs/", data="{" + base + ', "params": ' + params + "}", content_type="application/json"
        )
        assert res.status_code == 400 and expected in json.dumps(res.json()), (name, res.content[:300])
        if name != "deep":  # keyed by the field at fault, like every other 400 (too deep: the whole body)
            assert list(res.json()) == ["params"], res.json()
    assert Job.objects.count() == jobs


def test_form_bodies_to_json_endpoints_are_refused_and_create_nothing(world, user):
    """Only the dataset upload takes a form; every other write takes JSON, so a form's text fields never reach
    a serializer as unchecked JSON text (the schema declares JSON only, and a generated client sends it)."""
    from urllib.parse import urlencode

    client = APIClient()
    client.force_authenticate(user)
    wb, wa = world["weak_pair"]
    form = {"kind": "cd_generate", "weak_base": wb.pk, "weak_aligned": wa.pk, "prompts": world["prompts"].pk}
    before = snapshot()
    for res in (
        client.post("/api/v1/jobs/", {**form, "params": '{"x": "\\ud800"}'}, format="multipart"),
        client.post("/api/v1/jobs/", urlencode(form), content_type="application/x-www-form-urlencoded"),
        client.post(f"/api/v1/jobs/{world['pk']}/cancel/", form, format="multipart"),
    ):
        assert res.status_code == 415 and "Unsupported media type" in res.json()["detail"], res.content[:300]
    assert snapshot() == before


def test_a_charset_that_decodes_to_surrogates_is_refused_everywhere(world, user):
    """multipart/form-data; charset=unicode_escape would turn the text \\ud800 into a lone surrogate in
    every form field (Django decodes fields in the declared charset)."""
    client = APIClient()
    client.force_authenticate(user)
    body = (
        b'--B\r\nContent-Disposition: form-data; name="name"\r\n\r\n\\ud800\r\n'
        b'--B\r\nContent-Disposition: form-data; name="edited_text"\r\n\r\n\\ud800\r\n--B--\r\n'
    )
    before = snapshot()
    for route, _ in api_routes():
        for method in ("POST", "PUT", "PATCH"):
            res = client.generic(
                method, fill(route, world), body, content_type="multipart/form-data; boundary=B; charset=unicode_escape"
            )
            assert res.status_code == 400 and "UTF-8" in res.json()["detail"], (method, route, res.status_code)
    # ... and on the pages too (the admin's and the job form's multipart posts).
    res = Client().generic(
        "POST", "/accounts/login/", body, content_type="multipart/form-data; boundary=B; charset=unicode_escape"
    )
    assert res.status_code == 400 and b"UTF-8" in res.content
    assert snapshot() == before


def test_bytes_that_are_not_utf8_never_become_surrogates(world, user):
    """Form fields, multipart fields and query strings are decoded as UTF-8 with replacement: the bytes
    of an encoded surrogate arrive as U+FFFD, which every database stores."""
    client = APIClient()
    client.force_authenticate(user)
    f = io.BytesIO(make_prompts(2))
    f.name = "p.jsonl"
    body = (
        b'--B\r\nContent-Disposition: form-data; name="name"\r\n\r\nds-\xed\xa0\x80\r\n'
        b'--B\r\nContent-Disposition: form-data; name="file"; filename="p.jsonl"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n" + make_prompts(2) + b"\r\n--B--\r\n"
    )
    res = client.generic("POST", "/api/v1/datasets/", body, content_type="multipart/form-data; boundary=B")
    assert res.status_code == 201, res.content
    name = Dataset.objects.get(pk=res.json()["id"]).name
    assert name.startswith("ds-") and "\ufffd" in name and not re.search("[\ud800-\udfff]", name)
    res = client.get(f"/api/v1/jobs/{world['pk']}/pairs/?search=%ED%A0%80")
    assert res.status_code == 200


def test_dataset_rows_with_poison_are_refused_and_nothing_is_created(user):
    client = APIClient()
    client.force_authenticate(user)
    good = b'{"prompt": "fine"}\n'
    rows = {
        "surrogate": b'{"prompt": "x\\ud800"}\n',
        "surrogate key": b'{"prompt": "x", "\\udc00": 1}\n',
        "deep": b'{"prompt": "x", "d": ' + b"[" * DEEP + b"]" * DEEP + b"}\n",
        "digits": b'{"prompt": "x", "n": ' + HUGE_INT.encode() + b"}\n",
    }
    before = snapshot()
    for name, row in rows.items():
        f = io.BytesIO(good + row)
        f.name = "p.jsonl"
        res = client.post("/api/v1/datasets/", {"name": name, "file": f}, format="multipart")
        assert res.status_code == 400 and "line 2" in str(res.json()["file"]), (name, res.content[:300])
    assert snapshot() == before


def test_the_job_page_checks_its_setting_inputs(world, user, client):
    """The page's settings are typed inputs now (no JSON text): numbers that cannot be stored are refused
    before anything is created - huge integers (5000 digits, beyond 64 bits) and non-finite floats."""
    client.force_login(user)
    wb, wa = world["weak_pair"]
    before = snapshot()
    base = {
        "kind": "cd_generate",
        "weak_base": wb.pk,
        "weak_aligned": wa.pk,
        "prompts": world["prompts"].pk,
        "alpha": 0.4,
    }
    for field, value, words in (
        ("p__seed", str(2**70), "out of range"),
        ("p__seed", "9" * 5000, "out of range"),
        ("p__temperature", "1e999", "finite"),
    ):
        res = client.post("/jobs/new/", {**base, field: value})
        assert res.status_code == 400 and words in res.content.decode(), (field, res.content[-2000:])
    assert snapshot() == before


# --- body size ---------------------------------------------------------------------------------------
def test_body_size_limits(world, user, settings):
    client = APIClient()
    client.force_authenticate(user)
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    assert limit == 1024 * 1024
    before = snapshot()
    big = json.dumps({"kind": "cd_generate", "params": {"pad": "x" * limit}})
    res = client.post("/api/v1/jobs/", data=big, content_type="application/json")
    assert res.status_code == 413 and "DATA_UPLOAD_MAX_MEMORY_SIZE" in res.json()["detail"]
    # A form field over the limit (the upload's form is the API's one multipart body).
    res = client.post("/api/v1/datasets/", {"name": "x" * (limit + 1)}, format="multipart")
    assert res.status_code == 413, res.content[:200]
    res = client.post(f"/api/v1/jobs/{world['pk']}/cancel/", data=big, content_type="application/json")
    assert res.status_code == 413
    assert snapshot() == before
    # A whole request over REQUEST_MAX_BYTES is refused before anything reads it, pages included.
    settings.REQUEST_MAX_BYTES = 1000
    res = Client().post("/accounts/login/", {"username": "a", "password": "b" * 2000})
    assert res.status_code == 413 and b"REQUEST_MAX_BYTES" in res.content
    settings.REQUEST_MAX_BYTES = settings.UPLOAD_MAX_BYTES + limit
    # Uploads are files, not body data: a dataset bigger than the body limit still goes in.
    f = io.BytesIO(make_prompts(65_000))
    assert f.getbuffer().nbytes > 2 * limit
    f.name = "big.jsonl"
    res = client.post("/api/v1/datasets/", {"name": "big", "file": f}, format="multipart")
    assert res.status_code == 201 and res.json()["row_count"] == 65_000


# --- the 500 page ------------------------------------------------------------------------------------
def _boom(request):
    raise RuntimeError("secret-marker-in-the-exception")


urlpatterns = [path("boom/", _boom)]


def test_500_page_shows_no_traceback_or_settings(settings):
    settings.DEBUG = False
    settings.ROOT_URLCONF = __name__
    res = Client(raise_request_exception=False).get("/boom/")
    assert res.status_code == 500
    body = res.content.decode()
    assert "Server error" in body
    for leak in (
        "Traceback",
        "secret-marker-in-the-exception",
        "SECRET_KEY",
        settings.SECRET_KEY,
        str(settings.BASE_DIR),
        "DATABASES",
        "RuntimeError",
    ):
        assert leak not in body, leak
    assert "script-src 'self'" in res["Content-Security-Policy"]


# --- Content-Security-Policy, proxies ----------------------------------------------------------------
def test_every_response_has_a_strict_csp(world, user, client):
    client.force_login(user)
    for url in (
        "/",
        "/jobs/new/",
        f"/jobs/{world['pk']}/",
        f"/jobs/compare/?a={world['pk']}&b={world['pk']}",
        "/api/v1/jobs/",
        "/accounts/login/",
        "/admin/login/",
        "/healthz",
    ):
        res = client.get(url)
        assert res.status_code in (200, 302), url
        csp = res["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "script-src 'self';" in csp and "'unsafe-inline'" not in csp, url
        assert "frame-ancestors 'none'" in csp and "object-src 'none'" in csp
        if res.status_code == 200 and res["Content-Type"].startswith("text/html"):
            html = res.content.decode()
            # Nothing inline that the policy would block: scripts only by src (JSON data blocks are
            # not run), no style="" attributes, no on*= handlers.
            for tag in re.findall(r"<script\b[^>]*>", html):
                assert "src=" in tag or 'type="application/json"' in tag, (url, tag)
            assert not re.search(r"<[^>]+\sstyle=", html), url
            assert not re.search(r"<[^>]+\son[a-z]+=", html), url
    # The API docs pages load only /static/ files (drf-spectacular-sidecar); their policy adds inline styles only.
    csp = client.get("/api/v1/docs/")["Content-Security-Policy"]
    assert "script-src 'self';" in csp and "style-src 'self' 'unsafe-inline'" in csp and "http" not in csp


def test_forwarded_proto_is_not_trusted_by_default(settings, rf):
    assert settings.TRUSTED_PROXY == 0 and settings.SECURE_PROXY_SSL_HEADER is None
    assert rf.get("/", HTTP_X_FORWARDED_PROTO="https").is_secure() is False
    # Behind a proxy that is declared, its header is believed.
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    assert rf.get("/", HTTP_X_FORWARDED_PROTO="https").is_secure() is True


def test_trusted_proxy_setting_is_what_turns_the_header_on(tmp_path):
    import os
    import subprocess
    import sys

    code = "from django.conf import settings; print(getattr(settings, 'SECURE_PROXY_SSL_HEADER', None))"
    base = {k: v for k, v in os.environ.items() if k not in ("TRUSTED_PROXY", "DJANGO_SETTINGS_MODULE")}
    base.update(VAR_DIR=str(tmp_path), DJANGO_SETTINGS_MODULE="congweb.settings")
    for value, expected in (("0", "None"), ("1", "('HTTP_X_FORWARDED_PROTO', 'https')")):
        out = subprocess.run(
            [sys.executable, "manage.py", "shell", "-c", code],
            capture_output=True,
            text=True,
            env={**base, "TRUSTED_PROXY": value},
            cwd=str(ROOT),
        )
        assert out.stdout.strip().splitlines()[-1] == expected, out.stderr[-2000:]


# --- log-in throttle ---------------------------------------------------------------------------------
TOKEN = "/api/v1/auth/token/"
ADDRS = [f"10.9.0.{i}" for i in range(1, 10)]
NAMES = ["carol", "dave", "root2"] + [f"guess{i}" for i in range(12)]


@pytest.fixture
def guard(settings, django_user_model):
    """Two users with a fast hasher (each failed log-in checks a password), and clean counters for every
    name and address these tests use, before and after (the throttle cache may be a shared Redis)."""
    from jobs.api import login_guard

    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.LOGIN_FAILURE_LIMIT = 10

    def clear():
        for name in NAMES:
            login_guard.clear(username=name)
        for addr in ADDRS:
            login_guard.clear(address=addr)

    clear()
    django_user_model.objects.create_user(username="carol", password="pw-carol-123")
    django_user_model.objects.create_user(username="dave", password="pw-dave-123")
    django_user_model.objects.create_user(username="root2", password="pw-root-123", is_staff=True)
    yield login_guard
    clear()


def _token(addr, username, password, **headers):
    return APIClient(REMOTE_ADDR=addr).post(
        TOKEN, {"username": username, "password": password}, format="json", **headers
    )


def test_token_endpoint_locks_a_user_after_failures_even_for_the_right_password(guard):
    codes = [_token(ADDRS[0], "carol", f"wrong{i}").status_code for i in range(20)]
    assert codes == [400] * 10 + [429] * 10
    res = _token(ADDRS[0], "carol", "pw-carol-123")
    assert res.status_code == 429 and "Too many failed log-ins" in res.json()["detail"]
    assert 0 < int(res["Retry-After"]) <= 15 * 60
    assert _token(ADDRS[1], "carol", "pw-carol-123").status_code == 429  # per username, from anywhere
    res = _token(ADDRS[2], "dave", "pw-dave-123")  # another user from another address: unaffected
    assert res.status_code == 200 and res.json()["token"]


def test_token_endpoint_locks_an_address_that_guesses_many_names(guard):
    for i in range(10):
        assert _token(ADDRS[3], f"guess{i}", "x").status_code == 400
    assert _token(ADDRS[3], "dave", "pw-dave-123").status_code == 429  # per address, whoever it names
    # Rotating X-Forwarded-For does not help: no proxy is trusted by default.
    assert _token(ADDRS[3], "dave", "pw-dave-123", HTTP_X_FORWARDED_FOR="192.0.2.77").status_code == 429
    assert _token(ADDRS[4], "dave", "pw-dave-123").status_code == 200


def test_lock_ends_when_the_window_passes(guard, settings):
    settings.LOGIN_FAILURE_WINDOW = 1
    for _ in range(10):
        _token(ADDRS[5], "carol", "wrong")
    res = _token(ADDRS[5], "carol", "pw-carol-123")
    assert res.status_code == 429 and res["Retry-After"] == "1"  # the lock ends with the 1 s window ...
    # ... and then the right password gets in (polled until the counters expire; a refused try counts nothing).
    res = wait_for(
        lambda: (r := _token(ADDRS[5], "carol", "pw-carol-123")).status_code != 429 and r,
        30,
        interval=0.1,
        what="the lock to end",
    )
    assert res.status_code == 200


def test_login_page_is_throttled_with_a_message(guard):
    c = Client(REMOTE_ADDR=ADDRS[6])
    codes = [c.post("/accounts/login/", {"username": "carol", "password": f"wrong{i}"}).status_code for i in range(20)]
    assert codes == [200] * 10 + [429] * 10
    res = c.post("/accounts/login/", {"username": "carol", "password": "pw-carol-123"})
    assert res.status_code == 429 and b"Too many failed log-ins" in res.content
    assert "_auth_user_id" not in c.session
    other = Client(REMOTE_ADDR=ADDRS[7])
    res = other.post("/accounts/login/", {"username": "dave", "password": "pw-dave-123", "next": "/"})
    assert res.status_code == 302 and other.session["_auth_user_id"]


def test_admin_login_is_throttled_too(guard):
    for _ in range(10):
        _token(ADDRS[8], "root2", "wrong")
    c = Client(REMOTE_ADDR=ADDRS[7])
    res = c.post("/admin/login/", {"username": "root2", "password": "pw-root-123", "next": "/admin/"})
    assert res.status_code == 200 and b"Too many failed log-ins" in res.content
    assert "_auth_user_id" not in c.session


def test_counters_live_in_redis_shared_by_processes(guard, redis_url, settings):
    import redis as redis_lib

    settings.CACHES = {**settings.CACHES, "throttle": {**settings.CACHES["throttle"], "LOCATION": redis_url}}
    guard._redis_down_until = 0.0
    guard._fallback.clear()
    for _ in range(10):
        _token(ADDRS[0], "carol", "wrong")
    client = redis_lib.Redis.from_url(redis_url)
    keys = client.keys("congweb-throttle*")
    assert len(keys) >= 4, keys  # fail/until for the username and for the address
    assert _token(ADDRS[0], "carol", "pw-carol-123").status_code == 429
    client.delete(*keys)  # what another process sees is what Redis holds: gone there, gone here
    assert _token(ADDRS[0], "carol", "pw-carol-123").status_code == 200
    assert not guard._fallback._cache  # nothing was counted in this process's memory


def test_an_unreachable_cache_falls_back_to_this_process(guard, settings, tmp_path, caplog):
    settings.CACHES = {
        **settings.CACHES,
        "throttle": {**settings.CACHES["throttle"], "LOCATION": f"unix://{tmp_path}/absent.sock"},
    }
    guard._redis_down_until = 0.0
    for _ in range(10):
        assert _token(ADDRS[1], "carol", "wrong").status_code == 400
    assert _token(ADDRS[1], "carol", "pw-carol-123").status_code == 429
    assert "throttle cache is unreachable" in caplog.text
    guard._redis_down_until = 0.0


def test_rows_poisoned_before_the_fix_are_scrubbed_by_the_migration(world, user, client):
    """A job stored with a lone surrogate (possible on SQLite before input was checked) broke its page for good;
    migration 0009 replaces lone surrogates with U+FFFD and the page renders."""
    import importlib

    from django.apps import apps
    from django.db import connection

    if connection.vendor != "sqlite":
        pytest.skip("only SQLite ever stored lone surrogates (PostgreSQL refuses them)")
    wb, wa = world["weak_pair"]
    job = Job.objects.create(owner=user, kind="cd_generate", config={"params": {"x\ud800": "bad\udfff"}})
    JobEvent.objects.create(job=job, seq=1, type="log", data={"message": "\ud800"})
    mig = importlib.import_module("jobs.migrations.0009_scrub_lone_surrogates")
    mig.scrub(apps, None)
    job.refresh_from_db()
    assert job.config == {"params": {"x\ufffd": "bad\ufffd"}}
    assert JobEvent.objects.get(job=job).data == {"message": "\ufffd"}
    client.force_login(user)
    assert client.get(f"/jobs/{job.pk}/").status_code == 200
