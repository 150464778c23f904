"""Notifications when a job ends (jobs.services.webhooks): a real HTTP receiver on 127.0.0.1 gets a signed JSON
POST, answers 500 and then 200, and the retry is scheduled with its backoff; the tasks go through a real Redis
broker (read back from its queue) and are then run in this process, as a worker would run them. Also: which
answers are final, the SSRF guard, the API's ownership, the settings page, and the job-ended e-mail."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import threading
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.core import mail
from django.core.exceptions import ValidationError
from django.utils import timezone
from rest_framework.test import APIClient

from jobs import services
from jobs.models import Job, Webhook, WebhookDelivery
from jobs.services import webhooks
from jobs.tasks import job_email_task, webhook_deliver_task

from .conftest import point_celery_at

S = Job.Status
D = WebhookDelivery.State
pytestmark = pytest.mark.django_db


class Receiver:
    """An HTTP server on 127.0.0.1:<free port> answering POSTs with the scripted statuses, in order (the last one
    repeats); it records each request's path, headers and raw body."""

    def __init__(self) -> None:
        self.statuses = [200]
        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                status = outer.statuses[min(len(outer.requests), len(outer.statuses)) - 1]
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(f"answer {status}".encode())

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook?src=congweb"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver(settings):
    settings.WEBHOOKS_ALLOW_PRIVATE = True  # the receiver is on loopback
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def broker(redis_url, settings):
    """The test Redis as this process's broker, its default queue empty; returns a reader of that queue:
    [(task name, args, eta)] in the order sent."""
    import redis

    from congweb.redis_urls import celery_url

    settings.CELERY_BROKER_URL = celery_url(redis_url)
    point_celery_at(redis_url)
    client = redis.Redis.from_url(redis_url)
    client.delete("default")

    def sent() -> list[tuple[str, list, str | None]]:
        out = []
        for raw in reversed(client.lrange("default", 0, -1)):  # kombu LPUSHes: the oldest is last
            msg = json.loads(raw)
            args = json.loads(base64.b64decode(msg["body"]))[0]
            out.append((msg["headers"]["task"], args, msg["headers"].get("eta")))
        return out

    yield sent
    client.delete("default")


def _job(user, status=S.RUNNING, **kw) -> Job:
    return Job.objects.create(owner=user, kind="cong", config={"spec": {"kind": "cong"}}, status=status, **kw)


def _signed(secret: str, timestamp: str, body: bytes) -> str:
    # Recomputed here as docs/NOTIFICATIONS.md tells a receiver to, not with the service's own function.
    return "sha256=" + hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


RESULTS = {
    "results_version": 1,
    "kind": "cong",
    "methods": {"cong_s": {"gold_mean": 0.25, "gold_ci": [0.1, 0.4], "n": 4, "path": "/srv/runs/1/model"}},
    "artifacts": [{"path": "/srv/runs/1/sft/model"}],
}


# --- the whole path: a job ends, the receiver answers 500, then 200 ---------------------------------------------
def test_a_job_end_reaches_the_receiver_signed_and_a_500_is_retried_with_backoff(
    user, other_user, receiver, broker, settings, django_capture_on_commit_callbacks
):
    settings.WEBHOOK_RETRY_DELAYS = [30, 120]
    receiver.statuses = [500, 200]
    hook = webhooks.webhook_create(owner=user, url=receiver.url)
    webhooks.webhook_create(owner=user, url=receiver.url, active=False)
    webhooks.webhook_create(owner=user, url=receiver.url, events=["job.failed"])
    webhooks.webhook_create(owner=other_user, url=receiver.url)
    job = _job(user, task_id="t1")
    with django_capture_on_commit_callbacks(execute=True):
        assert services.job_finish(job_id=job.pk, results=RESULTS, task_id="t1")

    first = WebhookDelivery.objects.get()  # exactly one: the active webhook that takes job.succeeded
    assert (first.webhook_id, first.job_id, first.event, first.attempt, first.state) == (
        hook.pk,
        job.pk,
        "job.succeeded",
        1,
        D.PENDING,
    )
    assert broker() == [(webhooks.DELIVER_TASK, [first.pk], None)]

    # Attempt 1: the worker runs the task it took from the queue; the receiver answers 500.
    assert webhook_deliver_task(first.pk) == D.RETRYING
    first.refresh_from_db()
    assert (first.status_code, first.error, first.response_excerpt) == (500, "HTTP 500", "answer 500")
    assert first.next_retry_at - first.attempted_at == timedelta(seconds=30)
    second = WebhookDelivery.objects.exclude(pk=first.pk).get()
    assert (second.attempt, second.state, second.delivery_id, second.payload) == (
        2,
        D.PENDING,
        first.delivery_id,
        first.payload,
    )
    (task, args, eta) = broker()[1]
    assert (task, args) == (webhooks.DELIVER_TASK, [second.pk])
    delay = datetime.fromisoformat(eta) - first.attempted_at
    assert timedelta(seconds=29) <= delay <= timedelta(seconds=31)  # sent with a 30 s countdown

    # Attempt 2: 200.
    assert webhook_deliver_task(second.pk) == D.DELIVERED
    second.refresh_from_db()
    assert (second.status_code, second.next_retry_at, second.error) == (200, None, "")
    assert len(broker()) == 2  # nothing more scheduled
    assert WebhookDelivery.objects.count() == 2

    assert len(receiver.requests) == 2
    for n, req in enumerate(receiver.requests, start=1):
        h = req["headers"]
        assert req["path"] == "/hook?src=congweb"
        assert h["Content-Type"] == "application/json"
        assert h["X-Congweb-Signature"] == _signed(hook.secret, h["X-Congweb-Timestamp"], req["body"])
        assert h["X-Congweb-Signature"] != _signed("not-the-secret-at-all", h["X-Congweb-Timestamp"], req["body"])
        assert abs(int(h["X-Congweb-Timestamp"]) - timezone.now().timestamp()) < 60
        assert (h["X-Congweb-Event"], h["X-Congweb-Delivery"], h["X-Congweb-Attempt"]) == (
            "job.succeeded",
            str(first.delivery_id),
            str(n),
        )
    assert receiver.requests[0]["body"] == receiver.requests[1]["body"]  # a retry sends the same bytes
    payload = json.loads(receiver.requests[0]["body"])
    assert payload["event"] == "job.succeeded" and payload["delivery_id"] == str(first.delivery_id)
    assert datetime.fromisoformat(payload["sent_at"]) <= timezone.now()
    j = payload["job"]
    assert (j["id"], j["kind"], j["status"], j["partial"], j["error"]) == (job.pk, "cong", "succeeded", False, "")
    assert j["url"] == f"{settings.SITE_URL}/jobs/{job.pk}/"
    assert j["api_url"] == f"{settings.SITE_URL}/api/v1/jobs/{job.pk}/"
    # The headline numbers only: no server paths, no artifacts.
    assert j["results"] == {
        "results_version": 1,
        "kind": "cong",
        "methods": {"cong_s": {"gold_mean": 0.25, "gold_ci": [0.1, 0.4], "n": 4}},
    }
    raw = receiver.requests[0]["body"].decode()
    assert hook.secret not in raw and "/srv/runs" not in raw and "alice" not in raw


@pytest.mark.parametrize("status", [404, 400, 410, 301])
def test_an_answer_outside_2xx_other_than_429_and_5xx_is_final(user, receiver, broker, status):
    receiver.statuses = [status]
    hook = webhooks.webhook_create(owner=user, url=receiver.url)
    row = webhooks.webhook_ping(webhook=hook)
    assert webhook_deliver_task(row.pk) == D.FAILED
    row.refresh_from_db()
    assert (row.status_code, row.next_retry_at) == (status, None)
    assert row.error.startswith(f"HTTP {status}")
    assert WebhookDelivery.objects.count() == 1 and broker() == []
    assert len(receiver.requests) == 1  # a redirect is not followed


def test_no_answer_and_429_are_retried_until_the_attempts_run_out(user, receiver, broker, settings):
    settings.WEBHOOK_RETRY_DELAYS = [5]  # two attempts in all
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}/"
    hook = webhooks.webhook_create(owner=user, url=closed)
    first = webhooks.webhook_ping(webhook=hook)
    assert webhook_deliver_task(first.pk) == D.RETRYING
    first.refresh_from_db()
    assert first.status_code is None and "Connection" in first.error
    second = WebhookDelivery.objects.get(attempt=2)
    assert second.next_retry_at is None and first.next_retry_at - first.attempted_at == timedelta(seconds=5)
    Webhook.objects.filter(pk=hook.pk).update(url=receiver.url)
    receiver.statuses = [429]
    assert webhook_deliver_task(second.pk) == D.FAILED  # the last attempt: no third
    assert WebhookDelivery.objects.count() == 2
    assert [t for t, _, _ in broker()] == [webhooks.DELIVER_TASK]  # only the one retry was scheduled
    # A redelivered task of an attempt already made does nothing.
    assert webhook_deliver_task(first.pk) == D.RETRYING and WebhookDelivery.objects.count() == 2


def test_https_is_tls_to_the_checked_address(user, receiver, broker):
    """An https:// URL gets a TLS handshake (here with a plain-HTTP server: it fails, and that is retried)."""
    hook = webhooks.webhook_create(owner=user, url=receiver.url.replace("http://", "https://"))
    row = webhooks.webhook_ping(webhook=hook)
    assert webhook_deliver_task(row.pk) == D.RETRYING
    row.refresh_from_db()
    assert row.status_code is None and "SSL" in row.error, row.error
    assert receiver.requests == []  # the server saw a handshake, never a request


@pytest.mark.parametrize("end", ["finish", "fail", "mark_cancelled", "cancel_queued", "reap"])
def test_every_way_a_job_ends_queues_one_delivery_per_active_webhook(
    user, receiver, broker, settings, end, django_capture_on_commit_callbacks
):
    hooks = [webhooks.webhook_create(owner=user, url=receiver.url) for _ in range(2)]
    webhooks.webhook_create(owner=user, url=receiver.url, active=False)
    stale = timezone.now() - timedelta(seconds=settings.JOB_STALE_AFTER_SECONDS + 5)
    job = _job(user, status=S.QUEUED if end == "cancel_queued" else S.RUNNING, task_id="t", attempts=3)
    with django_capture_on_commit_callbacks(execute=True):
        if end == "finish":
            services.job_finish(job_id=job.pk, results={}, task_id="t")
        elif end == "fail":
            services.job_fail(job_id=job.pk, error="boom", task_id="t")
        elif end == "mark_cancelled":
            services.job_mark_cancelled(job_id=job.pk, task_id="t")
        elif end == "cancel_queued":
            services.job_cancel(job=job)
        else:
            Job.objects.filter(pk=job.pk).update(heartbeat_at=stale, max_attempts=3)
            assert services.jobs_reap_stale(send=False) == [(job.pk, "failed")]
        # A second call on the ended job changes nothing and queues nothing.
        assert not services.job_finish(job_id=job.pk, results={}, task_id="t")
    job.refresh_from_db()
    event = {"succeeded": "job.succeeded", "failed": "job.failed", "cancelled": "job.cancelled"}[job.status]
    rows = list(WebhookDelivery.objects.order_by("webhook_id"))
    assert [(d.webhook_id, d.event, d.job_id) for d in rows] == [(h.pk, event, job.pk) for h in hooks]
    assert sorted(args[0] for _, args, _ in broker()) == [d.pk for d in rows]
    if end == "fail":
        assert rows[0].payload["job"]["error"] == "boom"


def test_a_job_ending_with_no_webhooks_sends_nothing(user, broker, django_capture_on_commit_callbacks):
    job = _job(user, task_id="t")
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        assert services.job_finish(job_id=job.pk, results={}, task_id="t")
    assert callbacks == [] and broker() == [] and not WebhookDelivery.objects.exists()


# --- the SSRF guard --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/hook",
        "http://localhost/hook",
        "http://10.0.0.5/hook",
        "http://192.168.1.1/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://0.0.0.0/hook",
    ],
)
def test_private_addresses_are_refused_unless_allowed(user, settings, url):
    settings.WEBHOOKS_ALLOW_PRIVATE = False
    with pytest.raises(ValidationError) as exc:
        webhooks.webhook_create(owner=user, url=url)
    assert "refused" in exc.value.message_dict["url"][0]
    settings.WEBHOOKS_ALLOW_PRIVATE = True
    assert webhooks.webhook_create(owner=user, url=url).url == url


def test_the_guard_follows_debug_when_unset_and_refuses_bad_urls_always(user, settings):
    settings.WEBHOOKS_ALLOW_PRIVATE = None
    settings.DEBUG = False
    assert not webhooks.allow_private()
    settings.DEBUG = True
    assert webhooks.allow_private()
    public = webhooks.webhook_create(owner=user, url="https://93.184.215.14/hook")  # a literal: no DNS needed
    assert public.events == webhooks.EVENTS and len(public.secret) >= webhooks.SECRET_MIN_LENGTH
    for url, why in [
        ("ftp://93.184.215.14/", "only http"),
        ("file:///etc/passwd", "only http"),
        ("http://user:pw@93.184.215.14/", "no user"),
        ("http:///nohost", "no host"),
        ("http://no-such-host.invalid/", "does not resolve"),
    ]:
        with pytest.raises(ValidationError) as exc:
            webhooks.webhook_create(owner=user, url=url)
        assert why in exc.value.message_dict["url"][0], url
    with pytest.raises(ValidationError) as exc:
        webhooks.webhook_create(owner=user, url="https://93.184.215.14/", secret="short")
    assert "secret" in exc.value.message_dict


def test_the_guard_is_checked_again_at_delivery(user, receiver, broker, settings):
    hook = webhooks.webhook_create(owner=user, url=receiver.url)  # allowed then ...
    row = webhooks.webhook_ping(webhook=hook)
    settings.WEBHOOKS_ALLOW_PRIVATE = False  # ... refused now: final, nothing posted
    assert webhook_deliver_task(row.pk) == D.FAILED
    row.refresh_from_db()
    assert "refused" in row.error and receiver.requests == [] and broker() == []


# --- the API ---------------------------------------------------------------------------------------------------
def _client(user) -> APIClient:
    c = APIClient()
    c.force_authenticate(user)
    return c


def test_api_create_shows_the_secret_once_and_only_the_owner_sees_a_webhook(
    user, other_user, receiver, broker, django_capture_on_commit_callbacks
):
    c = _client(user)
    res = c.post("/api/v1/webhooks/", {"url": receiver.url, "events": ["job.failed"]}, format="json")
    assert res.status_code == 201, res.content
    body = res.json()
    hook = Webhook.objects.get(pk=body["id"])
    assert body["secret"] == hook.secret and len(hook.secret) >= webhooks.SECRET_MIN_LENGTH
    assert body["events"] == ["job.failed"] and body["active"] is True
    given = c.post("/api/v1/webhooks/", {"url": receiver.url, "secret": "s" * 20}, format="json").json()
    assert given["secret"] == "s" * 20 and given["events"] == webhooks.EVENTS
    listed = c.get("/api/v1/webhooks/").json()
    assert [h["id"] for h in listed] == [hook.pk, given["id"]] and all("secret" not in h for h in listed)
    assert "secret" not in c.get(f"/api/v1/webhooks/{hook.pk}/").json()

    with django_capture_on_commit_callbacks(execute=True):
        ping = c.post(f"/api/v1/webhooks/{hook.pk}/test/")
    assert ping.status_code == 202 and ping.json()["event"] == "ping"
    assert broker() == [(webhooks.DELIVER_TASK, [ping.json()["id"]], None)]
    webhook_deliver_task(ping.json()["id"])
    log = c.get(f"/api/v1/webhooks/{hook.pk}/deliveries/").json()
    assert log["count"] == 1 and (log["results"][0]["state"], log["results"][0]["status_code"]) == ("delivered", 200)
    assert json.loads(receiver.requests[0]["body"])["webhook"] == {
        "id": hook.pk,
        "url": receiver.url,
        "events": ["job.failed"],
    }

    other = _client(other_user)
    assert other.get("/api/v1/webhooks/").json() == []
    for method, path in [
        ("get", f"/api/v1/webhooks/{hook.pk}/"),
        ("delete", f"/api/v1/webhooks/{hook.pk}/"),
        ("get", f"/api/v1/webhooks/{hook.pk}/deliveries/"),
        ("post", f"/api/v1/webhooks/{hook.pk}/test/"),
    ]:
        assert getattr(other, method)(path).status_code == 404, (method, path)
    assert WebhookDelivery.objects.count() == 1 and Webhook.objects.filter(pk=hook.pk).exists()
    assert c.delete(f"/api/v1/webhooks/{hook.pk}/").status_code == 204
    assert not Webhook.objects.filter(pk=hook.pk).exists() and not WebhookDelivery.objects.exists()
    assert APIClient().get("/api/v1/webhooks/").status_code == 401


def test_api_refuses_a_private_url_where_not_allowed(user, settings):
    settings.WEBHOOKS_ALLOW_PRIVATE = False
    res = _client(user).post("/api/v1/webhooks/", {"url": "http://127.0.0.1:9/"}, format="json")
    assert res.status_code == 400 and "refused" in res.json()["url"][0]
    res = _client(user).post("/api/v1/webhooks/", {"url": "https://93.184.215.14/", "events": ["job.x"]}, format="json")
    assert res.status_code == 400 and "events" in res.json()
    assert not Webhook.objects.exists()


def test_webhooks_per_user_are_capped(user, settings):
    settings.WEBHOOKS_MAX_PER_USER = 2
    for _ in range(2):
        webhooks.webhook_create(owner=user, url="https://93.184.215.14/")
    res = _client(user).post("/api/v1/webhooks/", {"url": "https://93.184.215.14/"}, format="json")
    assert res.status_code == 400 and "at most 2" in res.json()["url"][0]


# --- the settings page -----------------------------------------------------------------------------------------
def test_the_page_adds_shows_the_secret_once_pings_and_deletes(client, user, other_user, receiver):
    client.force_login(user)
    assert client.get("/settings/notifications/").status_code == 200
    res = client.post("/settings/notifications/", {"action": "add", "url": receiver.url, "events": ["job.succeeded"]})
    hook = Webhook.objects.get(owner=user)
    assert res.status_code == 200 and hook.secret in res.content.decode() and hook.events == ["job.succeeded"]
    page = client.get("/settings/notifications/").content.decode()
    assert receiver.url.replace("&", "&amp;") in page and hook.secret not in page
    bad = client.post("/settings/notifications/", {"action": "add", "url": "gopher://x/"})
    assert bad.status_code == 400 and "only http" in bad.content.decode()
    assert client.post("/settings/notifications/", {"action": "ping", "webhook": hook.pk}).status_code == 302
    assert WebhookDelivery.objects.get().event == "ping"

    client.force_login(other_user)
    assert client.post("/settings/notifications/", {"action": "delete", "webhook": hook.pk}).status_code == 404
    assert client.post("/settings/notifications/", {"action": "delete", "webhook": "x"}).status_code == 404
    client.force_login(user)
    assert client.post("/settings/notifications/", {"action": "delete", "webhook": hook.pk}).status_code == 302
    assert not Webhook.objects.exists()


# --- e-mail ----------------------------------------------------------------------------------------------------
def test_email_on_job_end_when_the_owner_asked_for_it(user, broker, django_capture_on_commit_callbacks, client):
    client.force_login(user)
    res = client.post("/settings/notifications/", {"action": "email", "email_on_job_end": "on"})
    assert res.status_code == 400 and "no e-mail address" in res.content.decode()  # none on the account yet
    user.email = "alice@example.org"
    user.save()
    assert client.post("/settings/notifications/", {"action": "email", "email_on_job_end": "on"}).status_code == 302
    job = _job(user, task_id="t")
    with django_capture_on_commit_callbacks(execute=True):
        assert services.job_fail(job_id=job.pk, error="out of memory", task_id="t")
    assert broker() == [(webhooks.EMAIL_TASK, [job.pk], None)]
    assert job_email_task(job.pk) is True  # as the worker runs it: Django's e-mail backend (locmem in tests)
    (msg,) = mail.outbox
    assert msg.to == ["alice@example.org"] and msg.subject == f"[congweb] job {job.pk} failed"
    assert "out of memory" in msg.body and f"/jobs/{job.pk}/" in msg.body
    # Turned off: the queued task sends nothing.
    assert client.post("/settings/notifications/", {"action": "email"}).status_code == 302
    assert job_email_task(job.pk) is False and len(mail.outbox) == 1


# --- the guide's receiver code ---------------------------------------------------------------------------------
def test_the_guides_verify_function_accepts_a_real_delivery_and_nothing_else(user, receiver, broker):
    """docs/NOTIFICATIONS.md's Python snippet, run as written on what the receiver got."""
    from tests.docs.examples import ROOT, fenced_blocks

    (snippet,) = [b.body for b in fenced_blocks("docs/NOTIFICATIONS.md") if b.lang == "python"]
    scope: dict = {}
    exec(compile(snippet, str(ROOT / "docs/NOTIFICATIONS.md"), "exec"), scope)
    verify = scope["verify"]
    hook = webhooks.webhook_create(owner=user, url=receiver.url)
    webhook_deliver_task(webhooks.webhook_ping(webhook=hook).pk)
    (req,) = receiver.requests
    headers, body = req["headers"], req["body"]
    assert verify(hook.secret, headers, body)
    assert not verify(hook.secret, headers, body + b" ")  # a changed body
    assert not verify("another-secret-of-some-length", headers, body)
    old = str(int(headers["X-Congweb-Timestamp"]) - 3600)  # a validly signed request, an hour old: a replay
    assert not verify(
        hook.secret,
        {**headers, "X-Congweb-Timestamp": old, "X-Congweb-Signature": _signed(hook.secret, old, body)},
        body,
    )
    assert not verify(hook.secret, {k: v for k, v in headers.items() if k != "X-Congweb-Signature"}, body)


# --- end to end with a real worker -----------------------------------------------------------------------------
@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_a_real_worker_delivers_retries_after_a_500_and_then_delivers(user, worker_env, receiver, tmp_path):
    """The same path as in production: the job's end commits, the task goes through Redis, a `celery worker`
    process (consuming gpu,default as make serve's does) posts, gets a 500, queues the retry with its countdown,
    and posts again; the receiver checks the signature with the secret."""
    from .conftest import WorkerProc, wait_for

    env = {**worker_env, "WEBHOOK_RETRY_DELAYS": "1,1", "WEBHOOKS_ALLOW_PRIVATE": "1"}
    worker = WorkerProc(env, tmp_path / "worker.log")
    worker.start()
    try:
        receiver.statuses = [500, 200]
        hook = webhooks.webhook_create(owner=user, url=receiver.url)
        job = _job(user, task_id="t")
        assert services.job_fail(job_id=job.pk, error="boom", task_id="t")  # autocommit: sent at once
        done = lambda: WebhookDelivery.objects.filter(state=D.DELIVERED).first()  # noqa: E731
        delivered = wait_for(done, 60, what="the retried delivery")
        rows = list(WebhookDelivery.objects.order_by("attempt").values_list("attempt", "state", "status_code"))
        assert rows == [(1, D.RETRYING, 500), (2, D.DELIVERED, 200)], worker.log_text()[-3000:]
        assert delivered.payload["job"]["error"] == "boom" and delivered.event == "job.failed"
        assert len(receiver.requests) == 2
        for req in receiver.requests:
            h = req["headers"]
            assert h["X-Congweb-Signature"] == _signed(hook.secret, h["X-Congweb-Timestamp"], req["body"])
    finally:
        worker.discard()
