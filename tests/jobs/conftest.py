"""Fixtures for the jobs app: users, tiny model folders under a temporary model root, datasets, and a
REAL Celery worker process (``celery_worker_proc``) sharing the test database and Redis.

The test database must be a FILE when SQLite is used, so a worker subprocess can open the same one
(pytest-django's default SQLite test database lives in memory); see pytest_configure below.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WORDS = "the a good bad movie film great awful plot acting was is very not".split()


def pytest_configure(config):
    from django.conf import settings

    db = settings.DATABASES["default"]
    if db["ENGINE"].endswith("sqlite3") and not db.get("TEST", {}).get("NAME"):
        path = Path(tempfile.gettempdir()) / f"congweb-test-{os.getpid()}.sqlite3"
        db.setdefault("TEST", {})["NAME"] = str(path)


def save_tiny_model(path: Path, words=WORDS, seed: int = 0, n_positions: int = 1024) -> Path:
    """A tiny GPT-2 folder. Its context is GPT-2's own (1024 positions) so that every job kind's default token
    budgets fit, as they do on real models: a smaller one makes job_create refuse the defaults (ml.budget)."""
    from ml.tiny import tiny_gpt2, word_tokenizer

    tok = word_tokenizer(words)
    model = tiny_gpt2(len(tok), n_layer=1, n_embd=16, n_head=1, n_positions=n_positions, seed=seed)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


@pytest.fixture(scope="session")
def tiny_model_root(tmp_path_factory) -> Path:
    """A model root holding three tiny models: a weak pair sharing a vocab, and one with another vocab."""
    root = tmp_path_factory.mktemp("model_root")
    save_tiny_model(root / "weak_base", seed=0)
    save_tiny_model(root / "weak_aligned", seed=1)
    save_tiny_model(root / "other_vocab", words=[*WORDS, "extra", "tokens"], seed=2)
    return root


@pytest.fixture
def model_root(tiny_model_root, settings, tmp_path):
    settings.MODEL_ROOTS = [tiny_model_root]
    settings.VAR_DIR = tmp_path / "var"
    settings.RUNS_DIR = tmp_path / "var" / "runs"
    return tiny_model_root


@pytest.fixture
def user(django_user_model):
    return django_user_model.objects.create_user(username="alice", password="pw-alice-123")


@pytest.fixture
def other_user(django_user_model):
    return django_user_model.objects.create_user(username="bob", password="pw-bob-123")


@pytest.fixture
def staff_user(django_user_model):
    return django_user_model.objects.create_user(username="root", password="pw-root-123", is_staff=True)


def make_prompts(n: int, start: int = 0) -> bytes:
    import json

    return "".join(json.dumps({"prompt": f"the movie {i} was"}) + "\n" for i in range(start, start + n)).encode()


@pytest.fixture
def weak_pair(model_root, user):
    from jobs.services import model_register

    wb = model_register(name="wb", path=str(model_root / "weak_base"), kind="weak", owner=user)
    wa = model_register(name="wa", path=str(model_root / "weak_aligned"), kind="weak", owner=user)
    return wb, wa


@pytest.fixture
def prompts_ds(model_root, user):
    from jobs.services import dataset_create

    return dataset_create(name="p", chunks=[make_prompts(4)], owner=user)


# --- a real Celery worker ------------------------------------------------------------------------------
def db_url_for_worker() -> str:
    """A DATABASE_URL naming the database the tests use now (the test DB, not the configured one)."""
    from django.db import connection

    s = connection.settings_dict
    if s["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{s['NAME']}"
    if "postgresql" in s["ENGINE"]:
        from urllib.parse import quote

        auth = quote(s.get("USER") or "")
        if s.get("PASSWORD"):
            auth += ":" + quote(s["PASSWORD"])
        host = s.get("HOST") or "127.0.0.1"
        port = f":{s['PORT']}" if s.get("PORT") else ""
        return f"postgres://{auth}{'@' if auth else ''}{host}{port}/{s['NAME']}"
    raise RuntimeError(f"no worker URL for database engine {s['ENGINE']}")


def point_celery_at(redis_url: str) -> None:
    """Make this process's Celery app send to the test Redis (settings were read before the fixture)."""
    from congweb.celery import app
    from congweb.redis_urls import celery_url

    app.close()  # drop pooled connections to any previous broker ...
    app._pool = None
    app.amqp._producer_pool = None  # ... and the producers bound to them
    app.conf.broker_url = celery_url(redis_url)
    app.conf.broker_write_url = None
    app.conf.broker_read_url = None
    with app.connection_for_write() as conn:
        assert (
            conn.as_uri(include_password=True)
            .split("?")[0]
            .endswith(celery_url(redis_url).split("://", 1)[1].split("?")[0])
        )


class WorkerProc:
    """A `celery worker` subprocess (its own process group, so kill -9 takes the pool children too)."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self, wait: float = 60.0) -> None:
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "congweb",
                "worker",
                "-Q",
                "gpu,default",
                "-c",
                "1",
                "--pool",
                "prefork",
                "--loglevel",
                "INFO",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-n",
                f"test{time.monotonic_ns()}@%h",
            ],
            cwd=ROOT,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited at start:\n{self.tail()}")
            if b"ready." in self.log_path.read_bytes():
                return
            time.sleep(0.2)
        raise RuntimeError(f"worker not ready in {wait}s:\n{self.tail()}")

    def tail(self, n: int = 4000) -> str:
        return self.log_path.read_bytes()[-n:].decode(errors="replace")

    def kill9(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill9()
        if getattr(self, "log", None):
            self.log.close()


@pytest.fixture
def worker_env(redis_url, transactional_db, model_root, tmp_path, settings):
    """Environment for worker subprocesses: same DB, same Redis, same model root and runs dir."""
    from congweb.redis_urls import celery_url

    settings.JOB_HEARTBEAT_SECONDS = 1
    settings.JOB_STALE_AFTER_SECONDS = 4
    settings.CELERY_BROKER_URL = celery_url(redis_url)
    settings.CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [redis_url]}}
    }
    point_celery_at(redis_url)
    # Drop stale broker state from earlier tests on a shared (CI) Redis.
    import redis as redis_lib

    client = redis_lib.Redis.from_url(redis_url)
    client.delete("gpu", "default", "unacked", "unacked_index")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "DJANGO_SETTINGS"))}
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "congweb.settings",
            "DATABASE_URL": db_url_for_worker(),
            "REDIS_URL": redis_url,
            "MODEL_ROOTS": str(model_root),
            "VAR_DIR": str(settings.VAR_DIR),
            "RUNS_DIR": str(settings.RUNS_DIR),
            "JOB_HEARTBEAT_SECONDS": "1",
            "JOB_STALE_AFTER_SECONDS": "4",
            "OMP_WAIT_POLICY": "PASSIVE",
            "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
            "LOG_LEVEL": "INFO",
        }
    )
    return env


@pytest.fixture
def celery_worker_proc(worker_env, tmp_path):
    """A started worker; ``.kill9()`` it and ``WorkerProc(...).start()`` another to test recovery."""
    w = WorkerProc(worker_env, tmp_path / "worker.log")
    w.start()
    started = [w]

    def spawn() -> WorkerProc:
        nw = WorkerProc(worker_env, tmp_path / f"worker{len(started)}.log")
        nw.start()
        started.append(nw)
        return nw

    w.spawn = spawn  # type: ignore[attr-defined]
    yield w
    for p in started:
        p.stop()


def wait_for(pred, timeout: float, interval: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
