"""Suite-wide test setup.

- Torch runs single-threaded with passive waits: on this 2-core VM, busy-waiting threads stall.
- Any test that touches the database (django_db) or the broker (fixtures named redis_*/celery_*)
  is marked ``services`` so CI can re-run exactly those against real PostgreSQL and Redis.
- Tests marked ``gpu`` are skipped without CUDA; nothing else is ever skipped silently.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402

SERVICE_FIXTURES = ("redis_url", "embedded_redis", "celery_worker_proc", "live_stack", "channel_layer")


def pytest_configure(config):
    try:
        import torch

        torch.set_num_threads(1)
        torch.set_flush_denormal(True)
    except ImportError:
        pass


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    for item in items:
        uses_db = (
            item.get_closest_marker("django_db") is not None
            or "transactional_db" in item.fixturenames
            or "db" in item.fixturenames
            or "live_server" in item.fixturenames
        )
        if uses_db or any(f in item.fixturenames for f in SERVICE_FIXTURES):
            item.add_marker(pytest.mark.services)
        if item.get_closest_marker("gpu") and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """A real Redis: the one REDIS_URL names (CI: the machine's server), else a fresh embedded one."""
    from django.conf import settings

    if not settings.EMBEDDED_REDIS:
        yield settings.REDIS_URL
        return
    from congweb import embedded_redis

    sock = tmp_path_factory.mktemp("redis") / "redis.sock"
    proc = embedded_redis.start(sock)
    try:
        yield f"unix://{sock}"
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=10)
