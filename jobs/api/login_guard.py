"""The log-in throttle: failed log-ins are counted per username and per client address, and after
LOGIN_FAILURE_LIMIT of either within LOGIN_FAILURE_WINDOW seconds every attempt is refused - the right
password too - until the window that began with the first failure ends.

One place enforces it for every way in: ``ThrottledModelBackend`` (settings.AUTHENTICATION_BACKENDS)
refuses locked attempts and counts failures on every ``authenticate()`` call: the log-in page, the
admin's log-in and POST /api/v1/auth/token/. Those three also ask ``lock_wait`` first, so they answer
with a message (the page, the admin) or a 429 (the API) instead of "wrong password".

Counters live in the "throttle" cache (Redis, shared by all web processes). While Redis cannot be
reached they fall back to this process's memory, with a warning, rather than failing every log-in.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import time

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend
from django.core.cache import caches
from django.core.cache.backends.locmem import LocMemCache
from django.core.exceptions import PermissionDenied
from redis.exceptions import RedisError
from rest_framework.throttling import BaseThrottle

log = logging.getLogger(__name__)
RETRY_REDIS_AFTER = 30.0  # seconds on the fallback before Redis is tried again

_fallback = LocMemCache("congweb-login-guard", {"OPTIONS": {"MAX_ENTRIES": 100_000}})
_redis_down_until = 0.0


def _cache_call(op: str, *args):
    """``caches["throttle"].op(*args)``, or the in-process fallback while Redis is unreachable."""
    global _redis_down_until
    if time.monotonic() >= _redis_down_until:
        try:
            return getattr(caches["throttle"], op)(*args)
        except (RedisError, OSError) as exc:
            _redis_down_until = time.monotonic() + RETRY_REDIS_AFTER
            log.warning(
                "log-in throttle: the throttle cache is unreachable (%s); counting failures in this "
                "process only for %.0f s",
                exc,
                RETRY_REDIS_AFTER,
            )
    return getattr(_fallback, op)(*args)


def client_address(request) -> str | None:
    """The client's address: REMOTE_ADDR, or the X-Forwarded-For entry that the TRUSTED_PROXY-th proxy
    from us appended (a client can write anything to the left of that). IPv6 clients are counted per
    /64, the block one subscriber usually holds, so rotating addresses inside it does not help."""
    if request is None:
        return None
    meta = request.META
    addr = meta.get("REMOTE_ADDR")
    hops = settings.TRUSTED_PROXY
    xff = meta.get("HTTP_X_FORWARDED_FOR")
    if hops and xff:
        entries = [e.strip() for e in xff.split(",")]
        addr = entries[-min(hops, len(entries))]
    try:
        ip = ipaddress.ip_address(addr or "")
    except ValueError:
        return addr or None
    if ip.version == 6:
        if ip.ipv4_mapped:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_network(address, strict=False).is_loopback
    except ValueError:
        return False


def _keys(username: str | None, address: str | None) -> list[str]:
    keys = []
    if username:
        # Hashed: usernames may be long or hold characters a cache key may not.
        keys.append("user:" + hashlib.sha256(username.strip().lower().encode("utf-8", "replace")).hexdigest()[:40])
    # A loopback peer is this machine: a local reverse proxy not declared in TRUSTED_PROXY (then every
    # user shares the address, and counting it would let anyone lock everyone out) or a local script.
    # The username count still applies to it.
    if address and not _is_loopback(address):
        keys.append("addr:" + address)
    return keys


def lock_wait(username: str | None, address: str | None) -> int | None:
    """Seconds until attempts for this username/address are allowed again; None when they are now."""
    now = time.time()
    waits = []
    for key in _keys(username, address):
        if (_cache_call("get", f"fail:{key}") or 0) >= settings.LOGIN_FAILURE_LIMIT:
            until = _cache_call("get", f"until:{key}") or now + settings.LOGIN_FAILURE_WINDOW
            waits.append(max(1, int(until - now + 0.999)))
    return max(waits) if waits else None


def record_failure(username: str | None, address: str | None) -> None:
    """Count one failed log-in; the first failure of a key opens its window (add is atomic)."""
    window = settings.LOGIN_FAILURE_WINDOW
    for key in _keys(username, address):
        _cache_call("add", f"until:{key}", time.time() + window, window)
        _cache_call("add", f"fail:{key}", 0, window)
        try:
            _cache_call("incr", f"fail:{key}")
        except ValueError:  # expired between add and incr: this failure opens a new window
            _cache_call("set", f"fail:{key}", 1, window)


def record_success(username: str | None) -> None:
    """A right password clears its username's count (not the address's: an attacker who owns one
    account must not be able to reset the count of the address they guess other accounts from)."""
    for key in _keys(username, None):
        _cache_call("delete_many", [f"fail:{key}", f"until:{key}"])


def clear(username: str | None = None, address: str | None = None) -> None:
    """Forget the counts of a username and/or address (tests, and staff unlocking someone)."""
    for key in _keys(username, address):
        _cache_call("delete_many", [f"fail:{key}", f"until:{key}"])


def lock_message(wait: int) -> str:
    minutes = (wait + 59) // 60
    return (
        f"Too many failed log-ins for this account or from your address. Try again in {minutes} "
        f"minute{'s' if minutes != 1 else ''}."
    )


class ThrottledModelBackend(ModelBackend):
    """Django's ModelBackend behind the throttle: locked attempts are refused before the password is
    checked (PermissionDenied stops authenticate() for every backend), failures are counted."""

    def authenticate(self, request, username=None, password=None, **kwargs):
        name = username if username is not None else kwargs.get(get_user_model().USERNAME_FIELD)
        name = None if name is None else str(name)
        address = client_address(request)
        if lock_wait(name, address) is not None:
            raise PermissionDenied("log-in throttled")
        user = super().authenticate(request, username=username, password=password, **kwargs)
        if user is not None:
            record_success(name)
        elif password is not None:
            record_failure(name, address)
        return user


class LoginLockThrottle(BaseThrottle):
    """DRF throttle for the token endpoint: a locked username or address gets 429 with Retry-After."""

    def allow_request(self, request, view) -> bool:
        data = request.data
        username = data.get("username") if hasattr(data, "get") else None
        self._wait = lock_wait(None if username is None else str(username), client_address(request))
        return self._wait is None

    def wait(self):
        return self._wait
