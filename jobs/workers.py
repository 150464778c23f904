"""Which workers are alive, and what they serve: a small registry in the broker's Redis.

Each worker process announces itself (``congweb:worker:<node name>`` -> its queues, device count and whether it
has CUDA) every ``ANNOUNCE_EVERY`` seconds with a time-to-live of ``TTL``, and removes the key on a clean shutdown;
a worker killed outright drops out within ``TTL``. Reading it is one SCAN, so a job can ask "how many workers serve
the generation queue?" (``shards: auto``) without Celery's broadcast inspect, which waits out its timeout.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from django.conf import settings

log = logging.getLogger(__name__)

PREFIX = "congweb:worker:"
TTL = 30
ANNOUNCE_EVERY = 10
GENERATION_QUEUE = "gpu"  # where job and shard tasks go (CELERY_TASK_ROUTES)


def _client() -> Any:
    import redis

    url = settings.CELERY_BROKER_URL
    if url.startswith("redis+socket://"):  # Celery's spelling of a unix socket (congweb.redis_urls)
        url = "unix://" + url[len("redis+socket://") :]
    return redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)


def device_count() -> int:
    """WORKER_GPUS when set (documented override), else what torch sees (0 on a CPU host)."""
    if os.environ.get("WORKER_GPUS", "").strip():
        return max(0, int(os.environ["WORKER_GPUS"]))
    try:
        import torch

        return int(torch.cuda.device_count())
    except Exception:
        return 0


def has_cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


def announce(name: str, queues: list[str], gpus: int, cuda: bool = False) -> None:
    payload = {"name": name, "queues": queues, "gpus": gpus, "cuda": cuda}
    _client().set(PREFIX + name, json.dumps(payload), ex=TTL)


# Capacity routing (docs/SCALING.md): a job training on N > 1 devices goes to queue "gpu-xN", and a worker that
# serves the generation queue with G devices also consumes gpu-x2 ... gpu-xG (it adds them itself at start-up).
# A worker never receives a job it cannot hold, and such a job waits in the broker, not on a worker.


def queue_for(gpus: int) -> str:
    """The queue of a job that trains on ``gpus`` devices (one device: the generation queue)."""
    return GENERATION_QUEUE if gpus <= 1 else f"{GENERATION_QUEUE}-x{gpus}"


def capacity_queues(gpus: int) -> list[str]:
    """The extra queues a worker with ``gpus`` devices consumes."""
    return [queue_for(n) for n in range(2, gpus + 1)]


def waiting_reason(gpus: int) -> str:
    """Why a job needing ``gpus`` devices cannot start now ("" when a live worker can take it)."""
    if gpus <= 1:
        return ""
    everyone = live(queue="")  # one registry read for both questions
    if any(w.get("gpus", 0) >= gpus and queue_for(gpus) in w.get("queues", []) for w in everyone):
        return ""
    most = max((int(w.get("gpus", 0)) for w in everyone if GENERATION_QUEUE in w.get("queues", [])), default=0)
    return (
        f"waiting for a worker with {gpus} GPUs (the live workers have at most {most}); start one on a host with "
        f"{gpus} devices, or set WORKER_GPUS"
    )


def any_cuda() -> bool:
    """Whether a live worker of the generation queue has a CUDA device (what QLoRA needs)."""
    return any(w.get("cuda") for w in live())


def withdraw(name: str) -> None:
    _client().delete(PREFIX + name)


def live(queue: str = GENERATION_QUEUE) -> list[dict[str, Any]]:
    """The live workers consuming ``queue`` (every queue: ``""``); empty when the broker is not Redis or cannot
    be reached."""
    try:
        client = _client()
        keys = list(client.scan_iter(match=PREFIX + "*", count=500))
        values = client.mget(keys) if keys else []
    except Exception:
        log.warning("could not read the worker registry", exc_info=True)
        return []
    out = []
    for raw in values:
        if raw:
            w = json.loads(raw)
            if not queue or queue in w.get("queues", []):
                out.append(w)
    return sorted(out, key=lambda w: w["name"])


def torch_threads(node: str) -> int:
    """torch CPU threads for a task on worker ``node`` (name@host): WORKER_TORCH_THREADS when set, else this
    host's cores shared among the live workers on the same host, at least 1. Several workers on one host each
    running torch's default (one thread per core) would oversubscribe the cores and all run slower."""
    if os.environ.get("WORKER_TORCH_THREADS", "").strip():
        return max(1, int(os.environ["WORKER_TORCH_THREADS"]))
    host = node.rpartition("@")[2]
    here = sum(1 for w in live(queue="") if w["name"].rpartition("@")[2] == host) if host else 0
    return max(1, (os.cpu_count() or 1) // max(1, here))


def apply_torch_threads(node: str) -> int:
    import torch

    n = torch_threads(node)
    torch.set_num_threads(n)
    return n


class Announcer(threading.Thread):
    """The worker's announcement, refreshed from a daemon thread of the worker's main process."""

    def __init__(self, name: str, queues: list[str]) -> None:
        super().__init__(name="congweb-announce", daemon=True)
        self.worker, self.queues, self.gpus, self.cuda = name, queues, device_count(), has_cuda()
        self._stop_event = threading.Event()

    def run(self) -> None:
        while True:
            try:
                announce(self.worker, self.queues, self.gpus, self.cuda)
            except Exception:  # the broker is down: the worker itself reconnects; try again next round
                log.warning("could not announce worker %s", self.worker, exc_info=True)
            if self._stop_event.wait(ANNOUNCE_EVERY):
                return

    def stop(self) -> None:
        self._stop_event.set()
        try:
            withdraw(self.worker)
        except Exception:
            pass


# The stale-job reaper (jobs.services.jobs_reap_stale) in every worker of the generation queue, so that a job whose
# worker was killed is requeued with no celery beat running (`make web` + `make worker` alone). Beat's periodic task
# stays supported: several reapers at once are safe, as every change the reaper makes is an UPDATE conditional on
# the job still being running/cancelling with a stale heartbeat, so exactly one of them wins each job.


def reap_interval() -> float:
    """Seconds between reaper passes: half the stale window (1..60 s), so a dead worker's job is requeued at most
    1.5 windows after its last heartbeat."""
    return max(1.0, min(60.0, settings.JOB_STALE_AFTER_SECONDS / 2))


class Reaper(threading.Thread):
    """``reap`` (jobs.services.jobs_reap_stale, passed in by jobs.tasks: this module is below the services) from a
    daemon thread of the worker's main process: once at start, then every ``reap_interval()`` seconds. Logs one line
    per job it touched: "reaper on <worker>: job 12 requeued"."""

    def __init__(self, name: str, reap: Callable[[], list[tuple[int, str]]]) -> None:
        super().__init__(name="congweb-reaper", daemon=True)
        self.worker, self.reap, self.interval = name, reap, reap_interval()
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.reap_once()
            if self._stop_event.wait(self.interval):
                return

    def reap_once(self) -> list[tuple[int, str]]:
        from django.db import connections

        done: list[tuple[int, str]] = []
        try:
            done = self.reap()
        except Exception:  # the database or broker is down: the next pass tries again
            log.warning("the reaper on %s could not finish a pass", self.worker, exc_info=True)
        finally:
            # This thread's connections only. None is held idle between passes: a restarted database costs no
            # failed pass, and the pool children forked meanwhile inherit no open connection of this thread.
            connections.close_all()
        for job_id, what in done:
            log.info("reaper on %s: job %s %s", self.worker, job_id, what)
        return done

    def stop(self) -> None:
        self._stop_event.set()
