"""ProgressReporter: the ml Reporter protocol, backed by the database and the channel layer.

Order matters (paperless-ngx style): every report is first written as a JobEvent row - the reliable
record the page re-syncs from - and only then pushed to the channel group ``job-<id>``, best effort:
channels_redis drops messages when a group is full, and a broker hiccup must never fail a job.
Progress events are throttled per stage (at most ``max_rate`` per second) but the last one of a stage
(done == total) always goes out, and a pending one is flushed on close().
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from jobs.models import JobEvent
from jobs.notify import notify
from jobs.services.events import event_append
from jobs.services.lifecycle import cancel_requested, job_set_progress
from ml.io import jsonable

log = logging.getLogger(__name__)


class ProgressReporter:
    """Reporter for one job. Thread-safe enough for one stage thread plus the heartbeat thread."""

    def __init__(
        self,
        job_id: int,
        *,
        max_rate: float = 5.0,
        stop_check_interval: float = 0.5,
        stage_prefix: str = "",
        on_progress: Callable[[str, int, int], None] | None = None,
    ) -> None:
        self.job_id = job_id
        self.min_interval = 1.0 / max_rate if max_rate > 0 else 0.0
        self.stop_check_interval = stop_check_interval
        self.stage_prefix = stage_prefix
        self.on_progress = on_progress
        self._last_sent: dict[str, float] = {}
        self._pending: dict[str, tuple[int, int]] = {}
        self._stop_checked = 0.0
        self._stop = False
        self._lock = threading.Lock()

    # -- the reliable write, then the fast path ------------------------------------------------------
    def emit(self, type: str, data: dict[str, Any]) -> JobEvent:

        ev = event_append(job_id=self.job_id, type=type, data=jsonable(data))
        notify(self.job_id, ev)
        return ev

    def _stage(self, stage: str) -> str:
        return f"{self.stage_prefix}{stage}" if self.stage_prefix else stage

    # -- Reporter protocol -----------------------------------------------------------------------------
    def progress(self, stage: str, done: int, total: int) -> None:
        stage = self._stage(stage)
        if self.on_progress is not None:
            try:
                self.on_progress(stage, done, total)
            except Exception:
                log.exception("progress hook failed for job %s", self.job_id)
        now = time.monotonic()
        last = total > 0 and done >= total
        with self._lock:
            if not last and now - self._last_sent.get(stage, -1e9) < self.min_interval:
                self._pending[stage] = (done, total)
                return
            self._pending.pop(stage, None)
            self._last_sent[stage] = now
        self._write_progress(stage, done, total)

    def _write_progress(self, stage: str, done: int, total: int) -> None:

        frac = done / total if total else 0.0
        job_set_progress(job_id=self.job_id, stage=stage, progress=frac)
        self.emit(JobEvent.Type.PROGRESS, {"stage": stage, "done": done, "total": total, "fraction": frac})

    def metric(self, name: str, value: float, step: int | None = None) -> None:
        self.emit(JobEvent.Type.METRIC, {"name": name, "value": value, "step": step})

    def sample(self, data: dict[str, Any]) -> None:
        # Samples can be long; the event keeps what a page shows, the full row lives in GeneratedPair.
        small = {k: (v[:2000] if isinstance(v, str) else v) for k, v in data.items() if k != "token_ids"}
        self.emit(JobEvent.Type.SAMPLE, small)

    def log(self, msg: str) -> None:
        self.emit(JobEvent.Type.LOG, {"message": str(msg)[:5000]})

    def should_stop(self) -> bool:
        """True once a cancel was requested; reads the DB at most every stop_check_interval seconds."""
        if self._stop:
            return True
        now = time.monotonic()
        if now - self._stop_checked >= self.stop_check_interval:
            self._stop_checked = now
            try:
                self._stop = cancel_requested(job_id=self.job_id)
            except Exception:  # a DB blip must not stop (or crash) a long run; ask again next time
                log.exception("cancel check failed for job %s", self.job_id)
        return self._stop

    def flush(self) -> None:
        """Write progress events the throttle held back (the last state of each stage)."""
        with self._lock:
            pending, self._pending = self._pending, {}
        for stage, (done, total) in pending.items():
            self._write_progress(stage, done, total)

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> ProgressReporter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
