"""Notifications when a job ends: per-user webhooks (a signed JSON POST, retried with backoff, every attempt
logged as a WebhookDelivery row) and an optional e-mail. docs/NOTIFICATIONS.md is the user's guide; the SSRF
guard is in docs/SECURITY.md.

Flow: every move of a job to a final status passes through jobs.services.lifecycle._ended, which calls
job_ended here. That writes one pending WebhookDelivery per active webhook of the job's owner that takes the
event and, after commit, sends one delivery task per row (and the e-mail task) to the ``default`` queue.
The task calls delivery_attempt: it signs and POSTs the stored payload, records the answer on the row, and
on no answer, a 429 or a 5xx schedules the next attempt (a new row) with a countdown from
settings.WEBHOOK_RETRY_DELAYS. Nothing here may fail a job: errors are logged.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import ipaddress
import json
import secrets as secrets_lib
import socket
import ssl
import uuid
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from jobs.models import Job, NotificationSettings, Webhook, WebhookDelivery
from jobs.services._common import _err, log

DELIVER_TASK = "jobs.tasks.webhook_deliver_task"
EMAIL_TASK = "jobs.tasks.job_email_task"
PING = "ping"
EVENTS = [e.value for e in Webhook.Event]
EVENT_OF_STATUS = {
    Job.Status.SUCCEEDED: Webhook.Event.SUCCEEDED,
    Job.Status.FAILED: Webhook.Event.FAILED,
    Job.Status.CANCELLED: Webhook.Event.CANCELLED,
}
SIGNATURE_HEADER = "X-Congweb-Signature"
TIMESTAMP_HEADER = "X-Congweb-Timestamp"
SECRET_MIN_LENGTH = 16
EXCERPT_CHARS = 500  # of a receiver's answer kept on the delivery row (WebhookDelivery.response_excerpt)
ERROR_CHARS = 1000  # of a failed job's error in the payload
# The results' top-level values and per-method scores a payload carries (numbers and verdicts, no paths).
SUMMARY_KEYS = ("results_version", "kind", "n", "gold_mean", "gold_ci", "valid_rate", "verdict", "message")
METHOD_KEYS = ("label", "alpha", "gold_mean", "gold_ci", "valid_rate", "implicit_mean", "win_rate_vs_weak_sft", "n")


class UnsafeURL(Exception):
    """The URL may not be posted to (scheme, host, or an address the SSRF guard refuses)."""


# --- the URL and the SSRF guard -------------------------------------------------------------------------------
def allow_private() -> bool:
    """Private, loopback and link-local receivers: settings.WEBHOOKS_ALLOW_PRIVATE, or else DEBUG's value."""
    allowed = getattr(settings, "WEBHOOKS_ALLOW_PRIVATE", None)
    return bool(settings.DEBUG if allowed is None else allowed)


def _public(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped  # ::ffff:127.0.0.1 is loopback
    return addr.is_global and not addr.is_multicast


def url_resolve(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, the address to connect to), or UnsafeURL saying why not.

    Every address the host resolves to must be public unless private ones are allowed; the connection then goes
    to the address checked here (no second lookup that DNS rebinding could answer differently)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise UnsafeURL("only http:// and https:// URLs")
    if not parts.hostname:
        raise UnsafeURL("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise UnsafeURL("no user or password in the URL (the signature authenticates the request)")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise UnsafeURL("the port is not a number") from None
    try:
        infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnsafeURL(f"its host does not resolve ({exc})") from None
    ips = [str(info[4][0]) for info in infos]
    if not ips:
        raise UnsafeURL("its host does not resolve")
    if not allow_private():
        refused = [ip for ip in ips if not _public(ip)]
        if refused:
            raise UnsafeURL(f"{parts.hostname} is a private, loopback or reserved address ({refused[0]}); refused")
    return parts.scheme, parts.hostname, port, ips[0]


def url_check(url: str) -> str:
    """The URL a webhook may be created with, or a ValidationError on "url"."""
    url = (url or "").strip()
    if len(url) > Webhook._meta.get_field("url").max_length:  # type: ignore[operator]
        raise _err("url", "too long")
    try:
        url_resolve(url)
    except UnsafeURL as exc:
        raise _err("url", str(exc)) from None
    return url


# --- webhooks -------------------------------------------------------------------------------------------------
def webhook_create(
    *, owner, url: str, secret: str = "", events: list[str] | None = None, active: bool = True
) -> Webhook:
    """A new webhook; without a secret one is generated (the caller shows it once: it is never shown again)."""
    url = url_check(url)
    events = list(dict.fromkeys(events)) if events else list(EVENTS)
    unknown = [e for e in events if e not in EVENTS]
    if unknown:
        raise _err("events", f"unknown event {unknown[0]!r}; known: {', '.join(EVENTS)}")
    secret = secret or secrets_lib.token_urlsafe(32)
    if len(secret) < SECRET_MIN_LENGTH:
        raise _err("secret", f"at least {SECRET_MIN_LENGTH} characters (or leave it out: one is generated)")
    if len(secret) > Webhook._meta.get_field("secret").max_length:  # type: ignore[operator]
        raise _err("secret", "too long")
    with transaction.atomic():
        if Webhook.objects.select_for_update().filter(owner=owner).count() >= settings.WEBHOOKS_MAX_PER_USER:
            raise _err("url", f"at most {settings.WEBHOOKS_MAX_PER_USER} webhooks per user; delete one first")
        return Webhook.objects.create(owner=owner, url=url, secret=secret, events=events, active=active)


def webhook_delete(*, webhook: Webhook) -> None:
    webhook.delete()  # its delivery log goes with it


def notification_settings(*, user) -> NotificationSettings:
    return NotificationSettings.objects.get_or_create(owner=user)[0]


def notification_settings_update(*, user, email_on_job_end: bool) -> NotificationSettings:
    if email_on_job_end and not user.email:
        raise _err("email_on_job_end", "your account has no e-mail address")
    row = notification_settings(user=user)
    row.email_on_job_end = email_on_job_end
    row.save(update_fields=["email_on_job_end"])
    return row


# --- payload and signature ------------------------------------------------------------------------------------
def results_summary(results: Any) -> dict[str, Any]:
    """The headline numbers of a job's results (GET /jobs/{id}/results/ has everything)."""
    if not isinstance(results, dict):
        return {}
    out: dict[str, Any] = {k: results[k] for k in SUMMARY_KEYS if k in results}
    if isinstance(results.get("methods"), dict):
        out["methods"] = {
            str(m): {k: v[k] for k in METHOD_KEYS if k in v}
            for m, v in results["methods"].items()
            if isinstance(v, dict)
        }
    if isinstance(results.get("alphas"), list):
        out["alphas"] = [{k: v[k] for k in METHOD_KEYS if k in v} for v in results["alphas"] if isinstance(v, dict)]
    return out


def _iso(dt) -> str | None:
    return dt.isoformat() if dt else None


def job_payload(job: Job) -> dict[str, Any]:
    """What a receiver learns of the job: its own fields and links; never another user's data, nor a secret."""
    return {
        "id": job.pk,
        "kind": job.kind,
        "status": job.status,
        "error": job.error[:ERROR_CHARS] if job.status == Job.Status.FAILED else "",
        "partial": job.partial,
        "created": _iso(job.created),
        "started": _iso(job.started),
        "finished": _iso(job.finished),
        "results": results_summary(job.results),
        "url": settings.SITE_URL + reverse("job_detail", args=[job.pk]),
        "api_url": settings.SITE_URL + reverse("api:job-detail", args=[job.pk]),
    }


def payload_bytes(payload: dict[str, Any]) -> bytes:
    """The body as sent (and signed): the same bytes on every attempt."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """The X-Congweb-Signature value: HMAC-SHA256 with the webhook's secret over "<timestamp>.<body>"."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def signature_valid(secret: str, timestamp: str, body: bytes, header: str) -> bool:
    """What a receiver checks (docs/NOTIFICATIONS.md has the same in a few lines), in constant time."""
    return hmac.compare_digest(signature(secret, timestamp, body), header)


# --- queueing -------------------------------------------------------------------------------------------------
def _send_task(name: str, args: tuple, countdown: float | None = None) -> bool:
    """Send a task (by name: this package never imports jobs.tasks) to the default queue; False when the broker
    cannot be reached (logged: a notification never fails the caller)."""
    from congweb.celery import app

    try:
        app.send_task(
            name,
            args,
            countdown=countdown,
            queue=settings.CELERY_TASK_DEFAULT_QUEUE,
            retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.5},
        )
        return True
    except Exception as exc:
        log.error("could not send %s%s to the broker: %s", name, args, exc)
        return False


def _queue(webhook: Webhook, job: Job | None, event: str, body: dict[str, Any]) -> WebhookDelivery:
    delivery_id = uuid.uuid4()
    payload = {"event": event, "delivery_id": str(delivery_id), "sent_at": timezone.now().isoformat(), **body}
    return WebhookDelivery.objects.create(
        webhook=webhook, job=job, event=event, delivery_id=delivery_id, payload=payload
    )


def _send_deliveries(ids: list[int]) -> None:
    for pk in ids:
        if not _send_task(DELIVER_TASK, (pk,)):
            WebhookDelivery.objects.filter(pk=pk, state=WebhookDelivery.State.PENDING).update(
                error="could not reach the task queue; not sent"
            )


def job_ended(*, job_id: int, status: str) -> list[WebhookDelivery]:
    """Queue a finished job's notifications: one delivery per active webhook of its owner that takes the event,
    and the e-mail if the owner asked for it. Sent once the caller's transaction commits. Never raises."""
    try:
        event = EVENT_OF_STATUS[Job.Status(status)]
        job = Job.objects.select_related("owner").get(pk=job_id)
        hooks = [h for h in Webhook.objects.filter(owner_id=job.owner_id, active=True) if event in h.events]
        email = bool(
            job.owner.email
            and NotificationSettings.objects.filter(owner_id=job.owner_id, email_on_job_end=True).exists()
        )
        rows = [_queue(h, job, event, {"job": job_payload(job)}) for h in hooks] if hooks else []
        ids = [d.pk for d in rows]
        if ids:
            transaction.on_commit(lambda: _send_deliveries(ids))
        if email:
            transaction.on_commit(lambda: _send_task(EMAIL_TASK, (job_id,)))
        return rows
    except Exception:
        log.exception("could not queue the notifications of job %s", job_id)
        return []


def webhook_ping(*, webhook: Webhook) -> WebhookDelivery:
    """A test delivery (event "ping"), sent like any other."""
    row = _queue(webhook, None, PING, {"webhook": {"id": webhook.pk, "url": webhook.url, "events": webhook.events}})
    transaction.on_commit(lambda: _send_deliveries([row.pk]))
    return row


# --- delivering -----------------------------------------------------------------------------------------------
def _post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> tuple[int, str]:
    """POST to the address url_resolve checked (never a redirect, never a proxy); (status, start of the answer)."""
    scheme, host, port, ip = url_resolve(url)
    parts = urlsplit(url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    conn: http.client.HTTPConnection
    if scheme == "https":
        conn = _PinnedHTTPS(host, port, ip=ip, timeout=timeout)
    else:
        conn = _PinnedHTTP(host, port, ip=ip, timeout=timeout)
    try:
        conn.request("POST", path, body=body, headers=headers)
        res = conn.getresponse()
        excerpt = res.read(EXCERPT_CHARS * 4).decode(errors="replace")[:EXCERPT_CHARS]
        return res.status, excerpt
    finally:
        conn.close()


class _PinnedHTTP(http.client.HTTPConnection):
    def __init__(self, host: str, port: int, *, ip: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.ip = ip

    def connect(self) -> None:
        self.sock = socket.create_connection((self.ip, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, *, ip: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self.ip = ip

    def connect(self) -> None:  # TLS to the checked address, the certificate checked against the URL's host
        sock = socket.create_connection((self.ip, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]


def retry_delay(attempt: int) -> int | None:
    """Seconds before the attempt after ``attempt`` (1-based), or None when it was the last one."""
    delays = settings.WEBHOOK_RETRY_DELAYS
    return int(delays[attempt - 1]) if attempt <= len(delays) else None


def _retryable(status: int | None) -> bool:
    return status is None or status == 429 or status >= 500


def delivery_attempt(*, delivery_id: int) -> str:
    """Try one pending delivery; returns its new state. A row that is no longer pending (a redelivered task) is
    left alone, so a retry is scheduled at most once per attempt."""
    S = WebhookDelivery.State
    d = WebhookDelivery.objects.select_related("webhook").filter(pk=delivery_id).first()
    if d is None or d.state != S.PENDING:
        return d.state if d is not None else "gone"
    hook, body = d.webhook, payload_bytes(d.payload)
    status: int | None = None
    excerpt = error = ""
    if not hook.active:
        error, final = "the webhook was disabled", True
    else:
        timestamp = str(int(timezone.now().timestamp()))
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "congweb-webhooks/1",
            "X-Congweb-Event": d.event,
            "X-Congweb-Delivery": str(d.delivery_id),
            "X-Congweb-Attempt": str(d.attempt),
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: signature(hook.secret, timestamp, body),
        }
        final = False
        try:
            status, excerpt = _post(hook.url, body, headers, settings.WEBHOOK_TIMEOUT_SECONDS)
        except UnsafeURL as exc:
            error, final = str(exc), True
        except (OSError, http.client.HTTPException) as exc:  # refused, reset, timed out, TLS, a garbled answer
            error = f"{type(exc).__name__}: {exc}"
        if status is not None and not 200 <= status < 300:
            error = f"HTTP {status}" + ("; redirects are not followed" if 300 <= status < 400 else "")
    ok = status is not None and 200 <= status < 300
    delay = None if ok or final or not _retryable(status) else retry_delay(d.attempt)
    now = timezone.now()
    state = S.DELIVERED if ok else S.RETRYING if delay is not None else S.FAILED
    nxt = None
    with transaction.atomic():
        done = WebhookDelivery.objects.filter(pk=d.pk, state=S.PENDING).update(
            state=state,
            status_code=status,
            error=error[:500],
            response_excerpt=excerpt,
            attempted_at=now,
            next_retry_at=now + timedelta(seconds=delay) if delay is not None else None,
        )
        if done and delay is not None:
            nxt = WebhookDelivery.objects.create(
                webhook=hook,
                job_id=d.job_id,
                event=d.event,
                delivery_id=d.delivery_id,
                payload=d.payload,
                attempt=d.attempt + 1,
            )
    if nxt is not None and not _send_task(DELIVER_TASK, (nxt.pk,), countdown=delay):
        WebhookDelivery.objects.filter(pk=nxt.pk).update(error="could not reach the task queue; not sent")
    return state if done else WebhookDelivery.objects.get(pk=d.pk).state


# --- e-mail ---------------------------------------------------------------------------------------------------
def job_email(*, job_id: int) -> bool:
    """E-mail the owner that the job ended (through settings.EMAIL_BACKEND); False when they no longer want it."""
    job = Job.objects.select_related("owner").filter(pk=job_id).first()
    if job is None or not job.is_finished or not job.owner.email:
        return False
    if not NotificationSettings.objects.filter(owner_id=job.owner_id, email_on_job_end=True).exists():
        return False
    info = job_payload(job)
    lines = [f"Job {job.pk} ({job.get_kind_display()}) {job.status} at {info['finished'] or '?'}."]
    if info["error"]:
        lines.append(f"\nError: {info['error']}")
    for method, scores in (info["results"].get("methods") or {}).items():
        if scores.get("gold_mean") is not None:
            lines.append(f"{method}: gold reward {scores['gold_mean']:.4g}")
    if info["results"].get("gold_mean") is not None:
        lines.append(f"gold reward {info['results']['gold_mean']:.4g}")
    lines.append(f"\n{info['url']}")
    lines.append(f"\nTurn these e-mails off at {settings.SITE_URL}{reverse('notifications')}")
    send_mail(
        subject=f"[congweb] job {job.pk} {job.status}",
        message="\n".join(lines),
        from_email=None,
        recipient_list=[job.owner.email],
    )
    return True


def deliveries_recent(*, user, limit: int = 20):
    """The user's latest delivery attempts, newest first (the settings page's log)."""
    return WebhookDelivery.objects.filter(webhook__owner=user).select_related("webhook")[:limit]
