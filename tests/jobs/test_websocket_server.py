"""The live event stream as a client meets it: a real daphne serving congweb.asgi (its Origin check, session
middleware and Redis channel layer included) on the test database, a real websocket client (``websockets``),
and a session cookie from a real log-in POST to that server. docs/API.md's "Live events" promises:

- no user -> accepted, then closed with 4401; a job the user may not see (someone else's, or none) -> 4404;
- the owner gets the stored events after ``after``, then live ones;
- an Origin that is not in ALLOWED_HOSTS, or no Origin header at all -> refused at the handshake (HTTP 403).
"""

from __future__ import annotations

import http.cookiejar
import json
import re
import urllib.parse
import urllib.request

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from jobs.models import Job
from jobs.progress import ProgressReporter
from tests.daphne import daphne_server

TIMEOUT = 10  # seconds any one step may take on a loaded machine; every wait ends on its event first


@pytest.fixture
def server(worker_env, real_password_hashers, tmp_path):
    """Base URL of daphne on the test database and Redis. Users created after this fixture log in through it
    (real_password_hashers: the subprocess knows only the configured hashers)."""
    from channels.layers import channel_layers

    channel_layers.backends.clear()  # this process's reporter sends live events through the test Redis too
    with daphne_server(worker_env, tmp_path / "web.log") as base:
        yield base
    channel_layers.backends.clear()


def login(base: str, username: str, password: str) -> str:
    """The session cookie of a real log-in through the server's login page (its CSRF token included)."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    with opener.open(f"{base}/accounts/login/", timeout=TIMEOUT) as r:
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', r.read().decode())
    assert token, "the login page carries a CSRF token"
    form = {"username": username, "password": password, "csrfmiddlewaretoken": token.group(1), "next": "/"}
    with opener.open(f"{base}/accounts/login/", urllib.parse.urlencode(form).encode(), timeout=TIMEOUT) as r:
        assert r.status == 200 and urllib.parse.urlsplit(r.geturl()).path == "/", r.geturl()  # signed in: redirected
    session = [c.value for c in jar if c.name == "sessionid"]
    assert session, "the log-in set a session cookie"
    return f"sessionid={session[0]}"


def ws_url(base: str, job_id: int, after: int = 0) -> str:
    return f"{base.replace('http://', 'ws://')}/ws/jobs/{job_id}/?after={after}"


def close_code(base: str, path_job: int, cookie: str | None = None) -> int:
    """The close code the server sends right after accepting (recv raises on the close frame)."""
    headers = {"Cookie": cookie} if cookie else None
    with connect(ws_url(base, path_job), origin=base, additional_headers=headers, open_timeout=TIMEOUT) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=TIMEOUT)
    assert closed.value.rcvd is not None, "the server sent a close frame"
    return closed.value.rcvd.code


def test_refusals_reach_the_client_as_close_codes(server, user, other_user):
    job = Job.objects.create(owner=user, kind="cd_generate", config={})
    assert close_code(server, job.pk) == 4401  # no session: anonymous
    bob = login(server, "bob", "pw-bob-123")
    assert close_code(server, job.pk, bob) == 4404  # alice's job
    assert close_code(server, job.pk + 1000, bob) == 4404  # no such job: the same answer


def test_owner_gets_replayed_then_live_events(server, user):
    job = Job.objects.create(owner=user, kind="cd_generate", config={})
    rep = ProgressReporter(job.pk, max_rate=1000)
    rep.log("stored 1")
    rep.log("stored 2")
    alice = login(server, "alice", "pw-alice-123")
    url = ws_url(server, job.pk, after=1)
    with connect(url, origin=server, additional_headers={"Cookie": alice}, open_timeout=TIMEOUT) as ws:
        replay = json.loads(ws.recv(timeout=TIMEOUT))
        assert (replay["seq"], replay["type"], replay["data"]) == (2, "log", {"message": "stored 2"})
        # The socket joined the job's group before the replay was sent: what is reported now arrives live.
        rep.log("live 3")
        live = json.loads(ws.recv(timeout=TIMEOUT))
        assert (live["seq"], live["data"]) == (3, {"message": "live 3"})


def test_other_or_missing_origin_is_refused_at_the_handshake(server, user):
    job = Job.objects.create(owner=user, kind="cd_generate", config={})
    ProgressReporter(job.pk).log("for the owner's own pages only")
    alice = login(server, "alice", "pw-alice-123")
    headers = {"Cookie": alice}
    for origin in ("http://evil.example", f"http://127.0.0.1.evil.example:{server.rsplit(':', 1)[1]}", None):
        with pytest.raises(InvalidStatus) as refused:
            connect(ws_url(server, job.pk), origin=origin, additional_headers=headers, open_timeout=TIMEOUT)
        assert refused.value.response.status_code == 403, origin  # before any consumer runs: no code, no event
    # The same user and job from the server's own origin: accepted, so it was the Origin that was refused.
    with connect(ws_url(server, job.pk), origin=server, additional_headers=headers, open_timeout=TIMEOUT) as ws:
        assert json.loads(ws.recv(timeout=TIMEOUT))["data"] == {"message": "for the owner's own pages only"}
