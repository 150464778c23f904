"""One REDIS_URL, spelled the way each client wants it.

Users give one URL: ``redis://host:port/db`` or ``unix:///path/to/redis.sock?db=N``. redis-py and
channels_redis accept both; Celery's Redis transport spells sockets ``redis+socket://``.
"""

from __future__ import annotations

from urllib.parse import urlsplit


def celery_url(redis_url: str) -> str:
    if redis_url.startswith("unix://"):
        return "redis+socket://" + redis_url[len("unix://") :]
    return redis_url


def socket_path(redis_url: str) -> str | None:
    if redis_url.startswith(("unix://", "redis+socket://")):
        return urlsplit(redis_url).path
    return None
