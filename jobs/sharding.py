"""Sharded generation on Celery (ml.shards says what a shard is; docs/SCALING.md says how to deploy it).

The job's own task is the *coordinator*: ml hands it each generation stage (ml.execute's GenerationRunner). It
decides the number of shards (``params.shards``; ``auto`` = live workers on the generation queue, at most one per
batch), records them (JobShard rows), takes the first itself and sends the others as ``shard_run_task``
messages. Any worker that takes one runs it from its own JSONL and mirrors its rows (stamped with the shard and
the worker's name). The coordinator sums the shards' progress into the job's one bar, runs a shard itself when
no worker took it within ``JOB_SHARD_STEAL_AFTER_SECONDS`` or when its worker died (stale heartbeat: the shard
reruns alone, resuming its file), and merges the shards when all have finished. A shard that fails fails the job.
"""

from __future__ import annotations

import logging
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

from django.conf import settings

from jobs import services
from jobs.models import Job, JobShard
from jobs.progress import ProgressReporter
from jobs.worker_io import Heartbeat, PairMirror, job_gold
from ml.io import PAIR_SIDES, SAMPLES
from ml.reporter import Reporter
from ml.shards import Shard, config_from_dict, generation_plan, shard_count, shardable_stages

log = logging.getLogger(__name__)
SS = JobShard.Status


class ShardFailed(RuntimeError):
    pass


class ShardReporter:
    """Reporter for one shard: its progress goes to its row (the coordinator sums the rows into the job's bar),
    samples, metrics and logs to the job's events. It asks to stop when the job is cancelled or its holder
    lost the shard (a stale heartbeat let another worker take it: only one may write the shard's file)."""

    def __init__(self, shard: JobShard, holder: str, job_rep: ProgressReporter, after_progress: Any = None) -> None:
        self.shard, self.holder, self.job_rep = shard, holder, job_rep
        self.after_progress = after_progress
        self.lost = False

    def progress(self, stage: str, done: int, total: int) -> None:
        if not services.shard_progress(shard_id=self.shard.pk, task_id=self.holder, done=done, total=total):
            self.lost = True
        if self.after_progress is not None:
            self.after_progress()

    def metric(self, name: str, value: float, step: int | None = None) -> None:
        self.job_rep.metric(name, value, step)

    def sample(self, data: dict[str, Any]) -> None:
        self.job_rep.sample({**data, "shard": self.shard.index})

    def log(self, msg: str) -> None:
        self.job_rep.log(f"shard {self.shard.index}/{self.shard.count}: {msg}")

    def should_stop(self) -> bool:
        return self.lost or self.job_rep.should_stop()


def run_shard(shard: JobShard, *, holder: str, worker: str, gold: str, after_progress: Any = None) -> str:
    """Run a shard this process has claimed (as ``holder``); record how it ended. Returns that status."""
    cls, fn = shardable_stages()[shard.generator]
    cfg = config_from_dict(cls, {**shard.config, "shard": str(Shard(shard.index, shard.count))})
    job_rep = ProgressReporter(shard.job_id)
    # Only the stages whose rows the job stores as pairs are mirrored (the job's on_generation said which).
    mirror = (
        PairMirror(
            shard.job_id,
            cfg.work_dir() / SAMPLES,
            shard.index_offset,
            gold=gold,
            shard=shard.index,
            worker=worker,
            side=PAIR_SIDES[shard.generator],
        )
        if shard.mirror_pairs
        else None
    )
    rep = ShardReporter(shard, holder, job_rep, after_progress=lambda: _sync(mirror, after_progress))
    beat = Heartbeat(f"shard-{shard.pk}", lambda: services.shard_heartbeat(shard_id=shard.pk, task_id=holder))
    beat.start()
    try:
        out = fn(cfg, rep)
        if mirror is not None:
            mirror.sync()
        job_rep.close()
        status = SS.CANCELLED if out.get("stopped") else SS.SUCCEEDED
        services.shard_end(shard_id=shard.pk, task_id=holder, status=status)
        return str(status)
    except Exception as exc:
        try:
            rep.log("".join(traceback.format_exception(exc))[-5000:])
        except Exception:
            pass
        services.shard_end(shard_id=shard.pk, task_id=holder, status=SS.FAILED, error=f"{type(exc).__name__}: {exc}")
        return str(SS.FAILED)
    finally:
        beat.stop()


def _sync(mirror: Any, then: Any) -> None:
    if mirror is not None:
        mirror.sync()
    if then is not None:
        then()


def run_shard_task(*, shard_id: int, task_id: str, worker: str) -> str:
    """The body of shard_run_task: claim the shard (a queued one at once; a running one only when its worker is
    gone) and run it; else leave it to whoever holds it."""
    shard = services.shard_claim(shard_id=shard_id, task_id=task_id, worker=worker or services.worker_name())
    if shard is None:
        return "not claimed (finished, held by another worker, or its job is not running)"
    return run_shard(shard, holder=task_id, worker=shard.worker, gold=job_gold(shard.job))


class Coordinator:
    """The GenerationRunner of a job's own task (see the module docstring)."""

    def __init__(self, job: Job, *, requested: int | str, task_id: str, worker: str, gold: str) -> None:
        self.job, self.requested, self.task_id, self.worker, self.gold = job, requested, task_id, worker, gold
        self.offsets: dict[str, int] = {}  # stage folder -> prompt index offset (ml.execute's on_generation)
        self.poll = 0.5
        self._last: tuple[int, int] | None = None  # the last (done, total) reported

    def __call__(self, stage: str, fn: Any, config: Any, reporter: Reporter) -> dict[str, Any]:
        if fn.__name__ not in shardable_stages() or config.finished() is not None:
            return fn(config, reporter)
        plan = generation_plan(config)  # reads the prompts file: once per stage
        count = self._count(stage, plan)
        if count == 1:
            return fn(config, reporter)
        base = {k: v for k, v in asdict(config).items() if k != "shard"}
        folder = str(Path(config.output_dir))
        shards = services.shards_plan(
            job_id=self.job.pk,
            stage=stage,
            count=count,
            generator=fn.__name__,
            config=base,
            index_offset=self.offsets.get(folder, 0),
            mirror_pairs=folder in self.offsets,
            totals=[Shard(i, count).units(*plan) for i in range(count)],
        )
        queued = [s for s in shards if s.status == SS.QUEUED]
        sent = {s.pk for s in queued[1:] if services.shard_send(s.pk)}  # the first is the coordinator's own
        reporter.log(f"{stage}: {count} shards; {len(sent)} offered to other workers")
        mine = queued[0].pk if queued else None
        while True:
            if reporter.should_stop():
                return {"stage": stage, "stopped": True, "shards": count}
            rows = list(JobShard.objects.filter(job_id=self.job.pk, stage=stage).order_by("index"))
            self._progress(stage, rows, reporter)
            failed = [r for r in rows if r.status == SS.FAILED]
            if failed:
                raise ShardFailed(f"{stage}: shard {failed[0].index}/{count} failed: {failed[0].error}")
            if all(r.status == SS.SUCCEEDED for r in rows):
                break
            ran = False
            for r in rows:
                if r.status not in (SS.QUEUED, SS.RUNNING):
                    continue
                wait = None if r.pk == mine or r.pk not in sent else settings.JOB_SHARD_STEAL_AFTER_SECONDS
                holder = f"{self.task_id}/{stage}/{r.index}"
                claimed = services.shard_claim(shard_id=r.pk, task_id=holder, worker=self.worker, steal_after=wait)
                if claimed is not None:
                    mine = None
                    run_shard(
                        claimed,
                        holder=holder,
                        worker=self.worker,
                        gold=self.gold,
                        after_progress=lambda: self._progress(stage, None, reporter),
                    )
                    ran = True
                    break
            if not ran:
                time.sleep(self.poll)
        summary: dict[str, Any] = config.finish_shards(fn, count, reporter)
        return summary

    def _count(self, stage: str, plan: tuple[int, int]) -> int:
        have = JobShard.objects.filter(job_id=self.job.pk, stage=stage).values_list("count", flat=True).first()
        if have is not None:
            return int(have)  # a resumed stage keeps the cut its files were made with
        from jobs.workers import live

        workers = len(live()) if self.requested == "auto" else 0
        return shard_count(self.requested, workers, *plan)

    def _progress(self, stage: str, rows: list[JobShard] | None, reporter: Reporter) -> None:
        """One bar for the stage: rows written by all its shards, over all rows."""
        if rows is None:
            rows = list(JobShard.objects.filter(job_id=self.job.pk, stage=stage))
        done = sum(r.total if r.status == SS.SUCCEEDED else r.done for r in rows)
        total = sum(r.total for r in rows)
        if total and (done, total) != self._last:
            self._last = (done, total)
            reporter.progress(stage, done, total)
