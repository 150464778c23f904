"""Security boundaries: who may call what, which pages may open a websocket, and that model folders
are data, never code.

Covered elsewhere (not repeated here): the admin review is staff-only
(tests/jobs/test_admin.py::test_non_staff_is_sent_to_admin_login); other users' jobs answer 404 on every
endpoint and websocket (tests/jobs/test_api.py::test_other_users_jobs_are_404_and_staff_sees_all,
tests/jobs/test_websocket.py::test_other_user_and_missing_job_are_closed_with_4404); production settings refuse to start
without SECRET_KEY from the environment
(tests/congweb/test_foundation.py::test_production_refuses_to_start_without_secret_key).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from asgiref.sync import async_to_sync
from django.urls import URLPattern, reverse
from rest_framework.test import APIClient

from jobs import services
from jobs.api.urls import urlpatterns as api_urlpatterns
from jobs.models import Job
from jobs.services.experiments import experiment_create

from .conftest import ROOT, save_tiny_model

# --- REST: nothing without a user ------------------------------------------------------------------
PUBLIC = {"token"}  # POST auth/token/ is how a user gets in


@pytest.fixture
def real_ids(user, weak_pair, prompts_ds):
    """Ids of objects that exist, so an anonymous request cannot be turned away by a 404 instead."""
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
    return {"pk": job.pk, "pair_id": job.pairs.get().pk, "artifact_id": art.pk, "experiment_id": exp.pk}


def _api_urls(ids) -> list[tuple[str, str]]:
    out = []
    for p in api_urlpatterns:
        assert isinstance(p, URLPattern)
        kwargs = {k: ids[k] for k in p.pattern.converters}
        out.append((p.name, reverse(f"api:{p.name}", kwargs=kwargs)))
    return out


@pytest.mark.django_db
@pytest.mark.parametrize("auth", ["none", "bad-token", "malformed-token"])
def test_anonymous_requests_are_refused_on_every_endpoint(real_ids, auth):
    headers = {
        "none": {},
        "bad-token": {"HTTP_AUTHORIZATION": "Token " + "0" * 40},
        "malformed-token": {"HTTP_AUTHORIZATION": "Token a b c"},
    }[auth]
    client = APIClient()  # no session, no token
    urls = _api_urls(real_ids)
    assert len(urls) == len(api_urlpatterns) >= 13
    before = (Job.objects.values_list("pk", "status", "cancel_requested").first(), Job.objects.count())
    checked = 0
    for name, url in urls:
        if name in PUBLIC:
            continue
        for method in ("get", "post", "put", "patch", "delete"):
            res = getattr(client, method)(url, {}, format="json", **headers)
            assert res.status_code in (401, 403), (method.upper(), url, res.status_code)
            checked += 1
    assert checked == 5 * (len(urls) - len(PUBLIC))
    # ... and nothing was cancelled, retried or created by all those requests.
    assert (Job.objects.values_list("pk", "status", "cancel_requested").first(), Job.objects.count()) == before


@pytest.mark.django_db
def test_token_endpoint_gives_nothing_for_wrong_credentials(user):
    c = APIClient()
    for body in (
        {"username": "alice", "password": "wrong"},
        {"username": "nobody", "password": "pw-alice-123"},
        {"username": "alice"},
        {},
    ):
        res = c.post("/api/v1/auth/token/", body, format="json")
        assert res.status_code == 400 and "token" not in res.json(), body
    assert c.get("/api/v1/auth/token/").status_code == 405  # no token by GET (no credentials in URLs/logs)


# --- websockets: the real ASGI stack checks the Origin --------------------------------------------
@pytest.fixture
def asgi_app(redis_url, settings):
    """congweb.asgi.application (AllowedHostsOriginValidator + AuthMiddlewareStack + routes) with its
    channel layer on the test Redis; EMBEDDED_REDIS off so importing it starts no Redis daemon."""
    settings.EMBEDDED_REDIS = False
    settings.CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [redis_url]}}
    }
    from channels.layers import channel_layers

    channel_layers.backends.clear()
    from congweb.asgi import application

    yield application
    channel_layers.backends.clear()


def _ws_connect(app, path: str, headers: list[tuple[bytes, bytes]]):
    """(accepted, close code or None, first message or None). A refusal at the handshake (bad Origin)
    is not accepted; the consumer's refusals accept and then close with their code."""
    from channels.testing import WebsocketCommunicator

    async def go():
        comm = WebsocketCommunicator(app, path, headers=headers)
        connected, _ = await comm.connect(timeout=5)
        first = await comm.receive_output(timeout=5) if connected else None
        await comm.disconnect()
        if first and first["type"] == "websocket.close":
            return connected, first["code"], None
        return connected, None, first and json.loads(first["text"])

    return async_to_sync(go)()


@pytest.mark.django_db(transaction=True)  # the auth middleware reads the session from another thread
def test_websocket_origin_is_validated_by_the_real_asgi_app(asgi_app, user, other_user, client):
    job = Job.objects.create(owner=user, kind="cd_generate", config={})
    services.event_append(job_id=job.pk, type="log", data={"message": "hello"})
    client.force_login(user)  # a real session row and cookie, as a logged-in browser has
    cookie = (b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode())
    path = f"/ws/jobs/{job.pk}/"

    # A page on another site, riding the user's cookie (cross-site websocket hijacking): refused
    # before the consumer runs, with the handshake's HTTP 403 (no close code: such a page learns nothing).
    for origin in (b"http://evil.example", b"https://localhost.evil.example", b"null"):
        connected, _, _ = _ws_connect(asgi_app, path, [(b"origin", origin), cookie])
        assert not connected, origin
    # No Origin header at all is refused too (browsers always send one; scripts must set it).
    assert not _ws_connect(asgi_app, path, [cookie])[0]
    # Our own pages: connected, and the stored event is replayed.
    for origin in (b"http://localhost:8000", b"http://testserver"):
        connected, _, first = _ws_connect(asgi_app, path, [(b"origin", origin), cookie])
        assert connected, origin
        assert first["data"] == {"message": "hello"}
    # Allowed origin but no session: the real AuthMiddlewareStack gives AnonymousUser -> accepted, then
    # closed with 4401 (docs/API.md), a code the page's script can read.
    assert _ws_connect(asgi_app, path, [(b"origin", b"http://localhost:8000")])[:2] == (True, 4401)
    # Allowed origin, signed in, someone else's or no such job: 4404.
    other = Job.objects.create(owner=other_user, kind="cd_generate", config={})
    for p in (f"/ws/jobs/{other.pk}/", "/ws/jobs/999999/"):
        assert _ws_connect(asgi_app, p, [(b"origin", b"http://localhost:8000"), cookie])[:2] == (True, 4404)


# --- model folders are data, not code ------------------------------------------------------------
TRUST_TRUE = re.compile(r"""trust_remote_code["']?\s*[=:]\s*(True|1)\b""")


def test_trust_remote_code_is_never_true_in_the_code():
    offenders = []
    scanned = 0
    for top in ("ml", "jobs", "congweb", "bench", "scripts"):
        for f in sorted((ROOT / top).rglob("*.py")) if (ROOT / top).is_dir() else []:
            scanned += 1
            for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
                if TRUST_TRUE.search(line):
                    offenders.append(f"{f.relative_to(ROOT)}:{n}: {line.strip()}")
    assert scanned > 20
    assert not offenders, "trust_remote_code=True found:\n" + "\n".join(offenders)
    assert TRUST_TRUE.search('kw = {"trust_remote_code": True}') and TRUST_TRUE.search("trust_remote_code=True")


# transformers copies remote code into its modules cache before importing it, so the marker path is
# absolute rather than next to __file__.
EVIL_CODE = """
from pathlib import Path
Path({marker!r}).write_text("remote code ran")
raise SystemExit("remote code ran")
"""


def _with_remote_code(folder: Path, model_type: str | None = None) -> Path:
    """A model folder whose config asks transformers to import modeling_evil.py (auto_map) - code that
    leaves a marker file if it is ever executed."""
    import json

    save_tiny_model(folder)
    code = EVIL_CODE.format(marker=str(folder / "EXECUTED"))
    (folder / "modeling_evil.py").write_text(code)
    (folder / "tokenization_evil.py").write_text(code)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "modeling_evil.EvilConfig", "AutoModelForCausalLM": "modeling_evil.EvilLM"}
    if model_type:
        cfg["model_type"] = model_type
    (folder / "config.json").write_text(json.dumps(cfg))
    tcfg_path = folder / "tokenizer_config.json"
    tcfg = json.loads(tcfg_path.read_text())
    tcfg["auto_map"] = {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}
    tcfg_path.write_text(json.dumps(tcfg))
    return folder


def test_loading_a_folder_with_custom_code_never_runs_it(tmp_path):
    from ml.modeling import load_causal_lm, load_tokenizer

    # A known architecture with an auto_map: transformers' own GPT-2 class is used, the file is ignored.
    known = _with_remote_code(tmp_path / "known")
    model = load_causal_lm(known, device="cpu")
    tok = load_tokenizer(known)
    assert type(model).__module__.startswith("transformers.models.gpt2.")
    assert type(tok).__module__.startswith("transformers.")
    assert not (known / "EXECUTED").exists()
    # An architecture only the folder's code defines: loading refuses instead of importing it.
    unknown = _with_remote_code(tmp_path / "unknown", model_type="evil_arch")
    with pytest.raises(ValueError, match="custom code"):
        load_causal_lm(unknown, device="cpu")
    assert not (unknown / "EXECUTED").exists()
