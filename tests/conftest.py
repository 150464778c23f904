"""Suite-wide test setup.

- Torch runs single-threaded with passive waits: on this 2-core VM, busy-waiting threads stall.
- Any test that touches the database (django_db) or the broker (fixtures named redis_*/celery_*)
  is marked ``services`` so CI can re-run exactly those against real PostgreSQL and Redis.
- Tests marked ``gpu`` are skipped without CUDA; nothing else is ever skipped silently.
- Passwords are hashed with MD5 in the test process (``fast_password_hasher``): PBKDF2 costs ~0.24 s a
  user. The production hashers stay accepted after it, and a test that needs them (or whose users log
  in through a subprocess, which reads congweb.settings and knows no MD5) sets ``real_password_hashers``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# MLflow tracking (jobs.tracking) is off in tests unless a test turns it on (tests/jobs/test_tracking.py): each job
# would make a fresh store in its test's VAR_DIR (seconds each). Subprocesses (workers, servers) inherit this.
os.environ["TRACKING_ENABLED"] = "0"

import pytest  # noqa: E402

FAST_HASHER = "django.contrib.auth.hashers.MD5PasswordHasher"
# The fixtures that start a real Celery worker process (tests/jobs/conftest.py): their tests get the `worker`
# marker, which make mutate deselects (a mutant must be checked in seconds). Marked by what a test uses, not by
# its name: a test named "..._worker_..." that starts none still runs.
WORKER_FIXTURES = ("celery_worker_proc", "shared_celery_worker", "module_celery_worker")
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
        if any(f in item.fixturenames for f in WORKER_FIXTURES):
            item.add_marker(pytest.mark.worker)
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


@pytest.fixture(scope="session", autouse=True)
def fast_password_hasher():
    """MD5 first for the whole session (new hashes use it); the configured hashers still verify.

    Without Django (the GPU check runs tests/ml with `-p no:django` on images that lack it) there is
    nothing to speed up, and ml's tests must not need Django."""
    try:
        from django.conf import settings
    except ImportError:
        yield []
        return
    from django.test.utils import override_settings

    configured = [h for h in settings.PASSWORD_HASHERS if h != FAST_HASHER]
    with override_settings(PASSWORD_HASHERS=[FAST_HASHER, *configured]):  # setting_changed resets the cache
        yield configured


@pytest.fixture(scope="session", autouse=True)
def tracking_off():
    """TRACKING_ENABLED off in this process too (its settings were read before this file); see above."""
    try:
        from django.test.utils import override_settings
    except ImportError:  # ml's tests without Django
        yield
        return
    with override_settings(TRACKING_ENABLED=False):
        yield


@pytest.fixture
def real_password_hashers(settings, fast_password_hasher):
    """The configured hashers only, as production and every subprocess (web server, worker) use them."""
    settings.PASSWORD_HASHERS = fast_password_hasher
    return fast_password_hasher
