"""What a worker process keeps in step with the database while ml runs: the heartbeat of what it holds (a job
or a shard) and the mirror of generated rows into GeneratedPair. Shared by jobs.runner (a job) and jobs.sharding
(a shard), which is why it lives apart from both.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path

from django.conf import settings
from django.db import connection

from jobs import services
from jobs.models import GeneratedPair, Job

log = logging.getLogger(__name__)


class Heartbeat(threading.Thread):
    """Calls ``beat`` (a job's or a shard's heartbeat service) every JOB_HEARTBEAT_SECONDS from its own thread
    (and DB connection), so a long step in the stage never makes a healthy holder look dead to the reaper."""

    def __init__(self, what: str, beat: Callable[[], object]) -> None:
        super().__init__(name=f"heartbeat-{what}", daemon=True)
        self.what, self.beat = what, beat
        self.interval = float(getattr(settings, "JOB_HEARTBEAT_SECONDS", 15))
        self._stop_event = threading.Event()

    def run(self) -> None:
        try:
            while not self._stop_event.wait(self.interval):
                try:
                    self.beat()
                except Exception:  # a DB blip: try again next beat
                    log.exception("heartbeat failed for %s", self.what)
        finally:
            connection.close()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=10)


class PairMirror:
    """Copies rows of a generation stage's samples.jsonl into GeneratedPair rows as they appear.

    It reads only complete lines past the last byte offset it saw; when the stage rewrites the file
    (it does once, sorted, at the end) the offset is past the new size and reading restarts at 0.
    """

    def __init__(
        self,
        job_id: int,
        path: Path,
        index_offset: int = 0,
        gold: str = "",
        *,
        shard: int | None = None,
        worker: str = "",
        side: str = "chosen",
    ) -> None:
        self.job_id, self.path, self.index_offset = job_id, Path(path), index_offset
        # "chosen" rows (CD) make the pairs; "plain" and "rejected" rows fill that side of the pair with the same
        # prompt index (ml.io.PAIR_SIDES says which stage makes which).
        self.side = side
        self.shard, self.worker = shard, worker  # stored with each pair: who generated it
        self.offset = 0
        self.stored = self.score_errors = 0
        # Score each pair with the job's (labelling) gold as it is mirrored, so reviewers can filter and sort by it
        # (generation rows carry only the implicit reward). Programmatic golds are cheap; a reward model (rm:<folder>)
        # scores each sync's new rows in batches, in this worker process, on its default device.
        self.gold = None
        if gold and side == "chosen":
            from ml.gold import get_gold

            self.gold = get_gold(gold)

    def sync(self) -> int:
        if not self.path.exists():
            return 0
        size = self.path.stat().st_size
        if size < self.offset:
            self.offset = 0
        with self.path.open("rb") as fh:
            fh.seek(self.offset)
            data = fh.read()
        end = data.rfind(b"\n")
        if end < 0:
            return 0
        rows = []
        for line in data[:end].split(b"\n"):
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and "index" in row and row.get("sample", 0) == 0:
                rows.append(row)
        new = self._store(rows)
        # Only now: a store that raised is retried from the same rows at the next sync (and the job's final
        # sync, outside the progress hook, fails the job loudly instead of "succeeding with 0 pairs").
        self.offset += end + 1
        return new

    def _store(self, rows: list[dict]) -> int:
        if not rows:
            return 0
        if self.side != "chosen":
            return self._store_side(rows)
        have = set(GeneratedPair.objects.filter(job_id=self.job_id).values_list("prompt_index", flat=True))
        new = 0
        for row in self._scored([r for r in rows if int(r["index"]) + self.index_offset not in have]):
            _, created = services.pair_store(
                job_id=self.job_id, row=row, index_offset=self.index_offset, shard=self.shard, worker=self.worker
            )
            new += int(created)
            self.stored += int(created)
            self.score_errors += int(created and bool(row.get("score_error")))
        return new

    def _scored(self, rows: list[dict]) -> list[dict]:
        """The rows with their gold score, or the reason there is none (score_error): all at once (one batched call
        to a reward model), else, when the batch fails, row by row, so one unscorable prompt costs only its own."""
        todo = [i for i, r in enumerate(rows) if "gold" not in r] if self.gold is not None else []
        if not todo:
            return rows
        assert self.gold is not None  # todo is empty without a gold
        gold = self.gold

        def pair(row: dict) -> tuple[str, str]:
            return str(row.get("prompt", "")), str(row.get("response", ""))

        out = list(rows)
        try:
            for i, score in zip(todo, gold.score_many([pair(rows[i]) for i in todo])):
                out[i] = {**rows[i], "gold": score}
        except Exception:
            for i in todo:
                try:
                    out[i] = {**rows[i], "gold": gold(*pair(rows[i]))}
                except Exception as exc:  # a prompt the gold cannot score: keep the pair, say why
                    out[i] = {**rows[i], "score_error": f"{type(exc).__name__}: {exc}"[:2000]}
        return out

    def _store_side(self, rows: list[dict]) -> int:
        # A row whose pair was never made is skipped; the job's results count the pairs with each side filled.
        texts = {int(row["index"]) + self.index_offset: row.get("response", "") for row in rows}
        return services.pair_sides_store(job_id=self.job_id, side=self.side, texts=texts)


def job_gold(job: Job) -> str:
    """The gold reward that scores the job's pairs as they are mirrored: its labelling gold (the request's, else its
    prompt dataset's), as ml resolves it."""
    from jobs.services.creation import job_gold_name

    gold = job_gold_name(job.config or {})
    import ml.toyworld  # noqa: F401  (registers the toy world golds)

    return gold
