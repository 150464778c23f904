"""The strong SFT model's own responses (docs/METHOD.md, the pipeline): the 'rejected' side of ConG's DPO pairs.

One sampled response per prompt (reference temperature 0.8), batched, appended to
output_dir/samples.jsonl ({"index", "sample", "prompt", "response"}) so a rerun resumes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ml.io import SAMPLES, mark_done, read_jsonl, read_prompts
from ml.reporter import Reporter, or_null
from ml.shards import SHARD_HELP, Shardable, join_sample_shards
from ml.stages._responses import truncated_rate
from ml.stages._train import sample_to_jsonl

STAGE = "self_sample"


@dataclass(kw_only=True)
class SelfSampleConfig(Shardable):
    model: str = field(
        metadata={"internal": True, "help": "HF folder of the model to sample (the ConG-S strong model)."}
    )
    prompts: str = field(
        metadata={"internal": True, "help": "Prompt JSONL ('prompt'): the training prompts CD ran on."}
    )
    output_dir: str = field(metadata={"internal": True, "help": "Folder for samples.jsonl and DONE.json."})
    n_samples: int = field(default=1, metadata={"help": "Responses per prompt (1 in the reference)."})
    temperature: float = field(default=0.8, metadata={"help": "Sampling temperature (reference 0.8)."})
    top_p: float = field(default=0.95, metadata={"help": "Nucleus sampling top-p."})
    max_new_tokens: int = field(default=64, metadata={"help": "Longest response, in tokens."})
    batch_size: int = field(default=8, metadata={"help": "Prompts per generate() call."})
    max_prompts: int | None = field(default=None, metadata={"help": "Use only the first N prompts."})
    seed: int = field(default=0, metadata={"help": "Sampling seed (each batch is seeded from it)."})
    use_chat_template: bool = field(
        default=True, metadata={"help": "Format prompts with the tokenizer's chat template when it has one."}
    )
    device: str | None = field(
        default=None, metadata={"internal": True, "help": "'cpu', 'cuda'...; None = CUDA when present."}
    )
    shard: str | None = field(default=None, metadata={"internal": True, "help": SHARD_HELP})

    def shard_plan(self) -> tuple[int, int]:
        return len(read_prompts(self.prompts, self.max_prompts)), self.batch_size

    def finish_shards(self, fn: Callable[..., dict[str, Any]], count: int, reporter: Reporter) -> dict[str, Any]:
        join_sample_shards(self, count, SAMPLES)
        return self_sample(self, reporter)  # finds every batch written: writes the summary

    def __post_init__(self) -> None:
        self.part()  # a malformed shard fails here, not mid-run
        if not self.model or not self.prompts or not self.output_dir:
            raise ValueError("model, prompts and output_dir are all required")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 (got {self.temperature})")
        if self.n_samples < 1 or self.batch_size < 1 or self.max_new_tokens < 1:
            raise ValueError("n_samples, batch_size and max_new_tokens must all be >= 1")


def self_sample(config: SelfSampleConfig, reporter: Reporter | None = None) -> dict[str, Any]:
    done = config.finished()
    if done is not None:
        return done
    reporter = or_null(reporter)
    path = config.work_dir() / SAMPLES
    prompts = read_prompts(config.prompts, config.max_prompts)
    finished = sample_to_jsonl(
        model_dir=config.model,
        prompts=prompts,
        path=path,
        reporter=reporter,
        progress_name=STAGE,
        n=config.n_samples,
        temperature=config.temperature,
        top_p=config.top_p,
        max_new_tokens=config.max_new_tokens,
        batch_size=config.batch_size,
        seed=config.seed,
        use_chat_template=config.use_chat_template,
        device=config.device,
        shard=config.part(),
    )
    if config.shard and finished:  # one part of the stage: the merge (ml.shards) writes the summary
        return mark_done(config.work_dir(), {"stage": STAGE, "shard": config.shard, "n": len(read_jsonl(path))})
    rows = read_jsonl(path) if path.exists() else []
    summary = {
        "stage": STAGE,
        "n_prompts": len({r["index"] for r in rows}),
        "n_samples": len(rows),
        "samples": str(path),
        "truncated_rate": truncated_rate(rows),
    }
    if not finished:
        return {**summary, "stopped": True}
    return mark_done(config.output_dir, summary)
