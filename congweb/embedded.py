"""Start the embedded Redis on demand when settings say there is no external one."""

from __future__ import annotations


def ensure_embedded_redis() -> None:
    from django.conf import settings

    if not getattr(settings, "EMBEDDED_REDIS", False):
        return
    from congweb.embedded_redis import start
    from congweb.redis_urls import socket_path

    sock = socket_path(settings.REDIS_URL)
    if sock is None:  # a TCP URL: a Redis of its own, not ours to start
        return
    start(sock, daemonize=True)
