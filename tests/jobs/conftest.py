"""Fixtures for the jobs app: users, tiny model folders under a temporary model root, datasets, and
REAL Celery worker processes sharing the test database and Redis:

- ``shared_celery_worker``: one worker per test module, for tests that leave it healthy (they wait for
  their jobs to finish). Between tests the broker must be idle, its queues are emptied and its runs dir
  wiped; a worker that died, or is still busy, is replaced.
- ``celery_worker_proc``: a worker of the test's own, for tests that kill or restart it (``worker_env`` for
  tests that start their own ``WorkerProc``). Shared workers are stopped first: the test has the broker
  to itself.

The test database must be a FILE when SQLite is used, so a worker subprocess can open the same one
(pytest-django's default SQLite test database lives in memory); see pytest_configure below.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from jobs.workers import capacity_queues

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


def tiny_cong_request(user, weak_pair, methods: list[str], **params) -> dict:
    """A job request for a ConG pipeline on the tiny models that runs in seconds in-process (jobs.runner.run_job):
    3 prompts with a gold they can score, 3 new tokens, one training step per stage, the weak base as the strong
    model. The tiny models never stop by themselves within 3 tokens, so the stages train on cut answers
    (drop_truncated off; tests/ml/test_truncation.py checks the default). ``params`` are merged in."""
    from jobs import services

    from .test_runner import _register_tiny_gold

    _register_tiny_gold()
    ds = services.dataset_create(name="c", chunks=[make_prompts(3)], gold="test:positive_words", owner=user)
    wb, wa = weak_pair
    keep_cut = {"drop_truncated": False}
    stages = {"sft": dict(keep_cut), "dpo": dict(keep_cut)}
    for key, value in params.items():
        if key in stages and isinstance(value, dict):
            stages[key] = {**stages[key], **value}
    merged = {
        "max_new_tokens": 3,
        "train_max_steps": 1,
        "max_eval_prompts": 2,
        **{k: v for k, v in params.items() if k not in stages},
        **stages,
    }
    if not {"cong", "cong_filtered"} & set(methods):
        merged.pop("dpo")  # the DPO stage does not run: its settings would be refused
    return {
        "kind": "cong",
        "methods": methods,
        "weak_base": wb.pk,
        "weak_aligned": wa.pk,
        "strong": wb.pk,
        "prompts": ds.pk,
        "params": merged,
    }


@pytest.fixture
def weak_pair(model_root, user):
    from jobs.services import model_register

    wb = model_register(name="wb", path=str(model_root / "weak_base"), kind="weak", owner=user)
    wa = model_register(name="wa", path=str(model_root / "weak_aligned"), kind="weak", owner=user)
    return wb, wa


@pytest.fixture
def pipeline_inputs(user, weak_pair, model_root):
    """What a cong job needs on top of the weak pair: a strong model and a prompt set with a gold reward."""
    from jobs import services

    wb, wa = weak_pair
    strong = services.model_register(name="st", path=str(model_root / "other_vocab"), kind="strong", owner=user)
    gold = services.dataset_create(name="g", chunks=[make_prompts(4)], gold="toy:review", owner=user)
    return {
        "kind": "cong",
        "weak_base": wb.pk,
        "weak_aligned": wa.pk,
        "strong": strong.pk,
        "prompts": gold.pk,
        "alpha": "0.4",
        "methods": ["cong_s"],
    }


@pytest.fixture
def registry(settings, redis_url):
    """The worker registry (jobs.workers) on the test Redis, empty before and after the test."""
    from congweb.redis_urls import celery_url
    from jobs import workers

    settings.CELERY_BROKER_URL = celery_url(redis_url)
    client = workers._client()
    client.delete(*client.scan_iter(match=workers.PREFIX + "*"), "congweb:none")
    yield client
    client.delete(*client.scan_iter(match=workers.PREFIX + "*"), "congweb:none")


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
        self.log_mark = 0  # log_text() starts here: a shared worker's log holds earlier tests' lines
        self.proc: subprocess.Popen | None = None

    def start(self, wait: float = 60.0) -> None:
        self.log = open(self.log_path, "ab")
        # Its Celery node name, as pairs, shards and the worker registry record it (-n ...@%h).
        self.node = f"test{time.monotonic_ns()}@{socket.gethostname()}"
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
                self.node,
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

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def mark_log(self) -> None:
        """From now on log_text() shows only what the worker logs after this point."""
        self.log_mark = self.log_path.stat().st_size if self.log_path.exists() else 0

    def log_text(self) -> str:
        """The worker's log since the last mark_log() (the whole log for a worker of the test's own)."""
        with open(self.log_path, "rb") as f:
            f.seek(self.log_mark)
            return f.read().decode(errors="replace")

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

    def discard(self) -> None:
        """End a worker whose test is over: kill -9, as a warm shutdown spends seconds tearing down the
        interpreter (torch, transformers) and a job it still ran would be of no use to anyone."""
        self.kill9()
        if getattr(self, "log", None):
            self.log.close()


# What every worker of the suite runs with, and the test process with it: identical for all the tests
# one shared worker serves (the worker reads them once, at start).
WORKER_SETTINGS = {"JOB_HEARTBEAT_SECONDS": 1, "JOB_STALE_AFTER_SECONDS": 4}
BROKER_KEYS = ("gpu", "default", "unacked", "unacked_index", *capacity_queues(8))  # the queues the workers
# read (with the capacity queues of jobs on several devices), and kombu's record of delivered, unacknowledged
# messages (acks_late: a job's message stays there until it finished)


def purge_broker(redis_url: str) -> None:
    """Drop broker state an earlier test left (messages no worker took) on a shared (CI) Redis."""
    import redis as redis_lib

    client = redis_lib.Redis.from_url(redis_url)
    client.delete(*BROKER_KEYS)
    # The worker registry (jobs.workers): a worker killed by an earlier test stays listed for its TTL, and
    # `shards: auto` would count it. A live worker announces itself again within ANNOUNCE_EVERY.
    stale = list(client.scan_iter(match="congweb:worker:*"))
    if stale:
        client.delete(*stale)


def broker_idle(redis_url: str) -> bool:
    """No message waits in a queue and none is delivered and unacknowledged: no worker has a job (the
    workers ack late, after the task returned)."""
    import redis as redis_lib

    client = redis_lib.Redis.from_url(redis_url)
    return not (client.llen("gpu") or client.llen("default") or client.hlen("unacked"))


def use_test_broker(settings, redis_url: str) -> None:
    """The test process sends to the test Redis, with the settings the workers run with."""
    from congweb.redis_urls import celery_url

    for name, value in WORKER_SETTINGS.items():
        setattr(settings, name, value)
    settings.CELERY_BROKER_URL = celery_url(redis_url)
    settings.CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [redis_url]}}
    }
    point_celery_at(redis_url)


def worker_process_env(redis_url: str, model_root: Path, var_dir: Path, runs_dir: Path) -> dict[str, str]:
    """Environment for worker subprocesses: the test DB, the test Redis, the model root and runs dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "DJANGO_SETTINGS"))}
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "congweb.settings",
            "DATABASE_URL": db_url_for_worker(),
            "REDIS_URL": redis_url,
            "MODEL_ROOTS": str(model_root),
            "VAR_DIR": str(var_dir),
            "RUNS_DIR": str(runs_dir),
            **{name: str(value) for name, value in WORKER_SETTINGS.items()},
            "OMP_WAIT_POLICY": "PASSIVE",
            "OMP_NUM_THREADS": "1",
            "WORKER_TORCH_THREADS": "1",  # the test process runs beside them on the same two cores
            "PYTHONUNBUFFERED": "1",
            "LOG_LEVEL": "INFO",
        }
    )
    return env


class SharedWorker:
    """One worker a test module's healthy tests share. It is started on first use and replaced when it
    died; ``settle()`` ends each test: the broker idle (the worker finished what the test gave it), else
    the worker is killed, so that nothing a test left running can write into the next one."""

    def __init__(self, env: dict[str, str], redis_url: str, folder: Path, var_dir: Path) -> None:
        self.env = env
        self.redis_url = redis_url
        self.folder = folder
        self.var_dir = var_dir
        self.runs_dir = var_dir / "runs"
        self.worker: WorkerProc | None = None
        self.starts = 0

    def ensure(self) -> WorkerProc:
        if self.worker is None or not self.worker.alive():
            if self.worker is not None:
                self.worker.discard()  # closes the dead one's log
            self.starts += 1
            self.worker = WorkerProc(self.env, self.folder / f"worker{self.starts}.log")
            self.worker.start()
            if self not in _LIVE_SHARED:
                _LIVE_SHARED.append(self)
        return self.worker

    def settle(self, timeout: float = 60.0) -> None:
        """Wait for the worker to finish what the test gave it (polled: the broker idle twice running, as
        a message is briefly in neither the queue nor 'unacked' while the worker takes it); a worker still
        busy after ``timeout`` (a test that failed half way) or dead is dropped. Then empty the queues
        and the runs dir, so the next test starts clean."""
        idle = [False]

        def quiet() -> bool:
            now = broker_idle(self.redis_url)
            twice, idle[0] = now and idle[0], now
            return twice

        w = self.worker
        try:
            if w is not None and w.alive():
                wait_for(quiet, timeout, what="the shared worker to finish the test's jobs")
        except AssertionError:
            self.stop()
            raise
        finally:
            if w is not None and not w.alive():
                self.stop()
            purge_broker(self.redis_url)
            for child in self.var_dir.iterdir():
                if child.is_dir():
                    shutil.rmtree(child)
                else:
                    child.unlink()

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.discard()
        if self in _LIVE_SHARED:
            _LIVE_SHARED.remove(self)

    @staticmethod
    def stop_all() -> None:
        for shared in list(_LIVE_SHARED):
            shared.stop()


_LIVE_SHARED: list[SharedWorker] = []  # shared workers now running (one module's at a time)


@pytest.fixture(scope="module")
def module_celery_worker(redis_url, tiny_model_root, tmp_path_factory, django_db_setup):
    """The module's shared worker (see ``shared_celery_worker``): its log, VAR_DIR and RUNS_DIR sit in one
    folder for the whole module, so the paths it read at start stay the test process's too."""
    folder = tmp_path_factory.mktemp("shared_worker")
    var_dir = folder / "var"
    var_dir.mkdir()
    shared = SharedWorker(
        worker_process_env(redis_url, tiny_model_root, var_dir, var_dir / "runs"), redis_url, folder, var_dir
    )
    yield shared
    shared.stop()


@pytest.fixture
def shared_celery_worker(module_celery_worker, redis_url, transactional_db, model_root, settings):
    """A started worker shared by the module's tests that leave it healthy: never kill, restart or
    reconfigure it (use ``celery_worker_proc``). Each test gets an empty broker, an empty runs dir and
    a clean database; its ``log_text()`` starts at the test."""
    shared = module_celery_worker
    use_test_broker(settings, redis_url)
    settings.VAR_DIR = shared.var_dir
    settings.RUNS_DIR = shared.runs_dir
    purge_broker(redis_url)
    w = shared.ensure()
    w.mark_log()
    yield w
    shared.settle()  # before transactional_db's flush: the worker writes nothing into it


@pytest.fixture
def worker_env(redis_url, transactional_db, model_root, tmp_path, settings):
    """Environment for a test's own worker subprocesses: same DB, same Redis, same model root and runs
    dir. No shared worker runs beside them: it would take their jobs."""
    SharedWorker.stop_all()
    use_test_broker(settings, redis_url)
    purge_broker(redis_url)
    return worker_process_env(redis_url, model_root, settings.VAR_DIR, settings.RUNS_DIR)


@pytest.fixture
def celery_worker_proc(worker_env, tmp_path):
    """A started worker of the test's own; ``.kill9()`` it and ``.spawn()`` another to test recovery."""
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
        p.discard()


def finished_job(job_id: int):
    """The job, once finished: its row says so AND its final status event is in (the event is written just
    after the row, in a statement of its own), so a test may read the whole story straight away; else None."""
    from jobs.models import Job, JobEvent

    job = Job.objects.filter(pk=job_id, status__in=Job.FINISHED).first()
    if job and JobEvent.objects.filter(job_id=job_id, type="status", data__status=job.status).exists():
        return job
    return None


def wait_for(pred, timeout: float, interval: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
