"""Sharded generation: one generation stage split into parts that different workers (or processes) run.

A generation stage (ml.stages.generate) cuts its work into fixed chunks: prompts sorted by token length, then
``batch_size`` per chunk, and chunk k is sampled from a generator seeded by (seed, k). Shard i of n takes chunks
i, i+n, i+2n, ... (round-robin over the length order, so every shard gets long and short prompts alike) and
appends them to its own ``<output_dir>/shards/<i>-of-<n>/samples.jsonl``, seeding each chunk by its number in
the whole stage. The shards together therefore hold exactly the rows one unsharded run writes, sampled or
greedy, and ``merge_shards`` joins them in prompt order into ``<output_dir>/samples.jsonl`` with the stage's
DONE.json. Every shard is resumable on its own (append-only JSONL, finished chunks skipped), so a shard whose
worker died reruns alone and the others are left as they are.

Who runs the shards is the caller's business: a ``GenerationRunner`` is handed each generation stage. The
default runs it whole; ``run_shards_here(n)`` runs the shards one after another in this process (the CLI's
``--shards``, and the reference the web app's distributed runner is tested against).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from ml.io import SAMPLES, mark_done, read_jsonl, read_prompts, stage_done, write_jsonl
from ml.reporter import Reporter

SHARDS_DIR = "shards"


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"shard {self.index}/{self.count}: need 0 <= index < count")

    @classmethod
    def parse(cls, text: str) -> Shard:
        """'i/n' (as configs and the CLI write it)."""
        try:
            i, n = (int(part) for part in str(text).split("/"))
        except ValueError:
            raise ValueError(f"shard {text!r}: write it as index/count, e.g. 0/2") from None
        return cls(i, n)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def takes(self, chunk_no: int) -> bool:
        return chunk_no % self.count == self.index

    def units(self, n_items: int, batch_size: int) -> int:
        """How many of the stage's units (rows, or prompts for the sampling stages) this shard generates."""
        return sum(
            min(batch_size, n_items - k * batch_size) for k in range(n_chunks(n_items, batch_size)) if self.takes(k)
        )

    def dir(self, output_dir: str | Path) -> Path:
        return Path(output_dir) / SHARDS_DIR / f"{self.index}-of-{self.count}"


def n_chunks(n_items: int, batch_size: int) -> int:
    return -(-n_items // batch_size) if n_items > 0 else 0


def shard_count(requested: int | str, live_workers: int, n_items: int, batch_size: int) -> int:
    """How many shards a stage is cut into: ``auto`` = the live workers that could run one, never more than
    the stage has chunks (each shard gets at least one batch), and never below 1."""
    wanted = max(1, live_workers) if requested == "auto" else int(requested)
    return max(1, min(wanted, n_chunks(n_items, batch_size)))


SHARD_HELP = "i/n: run only shard i of n (its chunks or batches i, i+n, ...) into output_dir/shards/ (ml.shards)."


class Shardable:
    """What a stage's config offers to run in shards (the generation stages, self_sample, evaluate). The class
    declares ``shard: str | None`` (internal, default None) beside its ``output_dir``."""

    shard: str | None
    output_dir: str

    def part(self) -> Shard | None:
        """The shard this run is (None: the whole stage); a malformed ``shard`` is a ValueError."""
        return Shard.parse(self.shard) if self.shard is not None else None

    def work_dir(self) -> Path:
        """Where this run writes: output_dir, or its shard's folder under it."""
        part = self.part()
        return part.dir(self.output_dir) if part else Path(self.output_dir)

    def finished(self) -> dict[str, Any] | None:
        """The summary of a finished run: the whole stage's, else this shard's."""
        return stage_done(self.output_dir) or (stage_done(self.work_dir()) if self.shard else None)

    def shard_plan(self) -> tuple[int, int] | None:
        """(units the stage generates, units per batch), or None when this config generates nothing."""
        raise NotImplementedError

    def finish_shards(self, fn: GenerateFn, count: int, reporter: Reporter) -> dict[str, Any]:
        """Once every shard has finished: join them and return the stage's summary."""
        raise NotImplementedError


def generation_plan(config: Any) -> tuple[int, int]:
    """(units the stage generates, units per batch): what a caller needs to decide how many shards make sense;
    (0, 1) for a config that generates nothing (it runs whole)."""
    return config.shard_plan() or (0, 1)


def join_sample_shards(config: Shardable, count: int, filename: str) -> list[dict[str, Any]]:
    """Write the shards' ``filename`` rows into output_dir/filename in (index, sample) order, once; the stage then
    runs whole and finds every batch there (ml.stages._train.sample_to_jsonl)."""
    target = Path(config.output_dir) / filename
    rows: list[dict[str, Any]] = []
    for i in range(count):
        part = Shard(i, count).dir(config.output_dir)
        if stage_done(part) is None:
            raise ValueError(f"shard {i}/{count} of {config.output_dir} has not finished; run it before the merge")
        rows.extend(read_jsonl(part / filename))
    rows.sort(key=lambda r: (int(r["index"]), int(r.get("sample", 0))))
    keys = [(int(r["index"]), int(r.get("sample", 0))) for r in rows]
    if len(keys) != len(set(keys)):
        raise ValueError(f"the {count} shards of {config.output_dir} hold a row twice; delete its shards folder")
    if not target.exists():
        write_jsonl(target, rows)
    return rows


def merge_shards(config: Any, count: int) -> dict[str, Any]:
    """Join the finished shards 0..count-1 of a stage into its samples.jsonl (prompt order) and DONE.json, the
    same files one unsharded run writes; tokens_per_s is per generator (all new tokens over all shards' time)."""
    from ml.stages.generate import stage_summary

    done = stage_done(config.output_dir)
    if done is not None:
        return done
    rows: list[dict[str, Any]] = []
    new_tokens, gen_seconds, stage = 0, 0.0, ""
    for i in range(count):
        part = Shard(i, count).dir(config.output_dir)
        s = stage_done(part)
        if s is None:
            raise ValueError(f"shard {i}/{count} of {config.output_dir} has not finished; run it before the merge")
        rows.extend(read_jsonl(part / SAMPLES))
        new_tokens += int(s["new_tokens"])
        gen_seconds += float(s["gen_seconds"])
        stage = s["stage"]
    n_prompts = len(read_prompts(config.prompts, limit=config.max_prompts))
    want = {(i, s) for i in range(n_prompts) for s in range(config.samples_per_prompt)}
    got = [(int(r["index"]), int(r.get("sample", 0))) for r in rows]
    if len(got) != len(set(got)) or set(got) != want:
        raise ValueError(
            f"the {count} shards of {config.output_dir} hold {len(set(got))} distinct of {len(want)} samples "
            f"({len(got)} rows); delete its shards folder and generate again"
        )
    rows.sort(key=lambda r: (r["index"], r.get("sample", 0)))
    write_jsonl(Path(config.output_dir) / SAMPLES, rows)
    alpha = rows[0].get("alpha") if rows else None
    summary = {**stage_summary(stage, config, rows, n_prompts, alpha), "shards": count}
    return mark_done(
        config.output_dir, {**summary, "tokens_per_s": new_tokens / gen_seconds if gen_seconds > 0 else None}
    )


GenerateFn = Callable[[Any, Reporter], dict[str, Any]]


def shardable_stages() -> dict[str, tuple[type, GenerateFn]]:
    """The stages that run in shards, by function name: (config class, function). A runner on another worker
    rebuilds a shard's config from its dict with these."""
    from ml.stages.evaluate import EvaluateConfig, evaluate
    from ml.stages.generate import CDGenerateConfig, PlainGenerateConfig, cd_generate, plain_generate
    from ml.stages.self_sample import SelfSampleConfig, self_sample

    return {
        "cd_generate": (CDGenerateConfig, cd_generate),
        "plain_generate": (PlainGenerateConfig, plain_generate),
        "self_sample": (SelfSampleConfig, self_sample),
        "evaluate": (EvaluateConfig, evaluate),
    }


def config_from_dict(cls: type, data: dict[str, Any]) -> Any:
    from_dict = getattr(cls, "from_dict", None)
    return from_dict(data) if from_dict is not None else cls(**data)


class GenerationRunner(Protocol):
    """Runs one generation stage (``fn(config, reporter)``), whole or in shards, and returns its summary."""

    def __call__(self, stage: str, fn: GenerateFn, config: Any, reporter: Reporter) -> dict[str, Any]: ...


def run_whole(stage: str, fn: GenerateFn, config: Any, reporter: Reporter) -> dict[str, Any]:
    return fn(config, reporter)


def run_shards_here(count: int) -> GenerationRunner:
    """Every shard in turn in this process, then the merge: what a set of workers does, on one."""

    def runner(stage: str, fn: GenerateFn, config: Any, reporter: Reporter) -> dict[str, Any]:
        n = shard_count(count, 1, *generation_plan(config))
        if n == 1 or config.finished() is not None:
            return fn(config, reporter)
        for i in range(n):
            out = fn(replace(config, shard=str(Shard(i, n))), reporter)
            if out.get("stopped"):
                return out
        summary: dict[str, Any] = config.finish_shards(fn, n, reporter)
        return summary

    return runner
