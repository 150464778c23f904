"""Generation stages: contrastive decoding between the weak pair (ConG's data) and plain sampling from
pi_post alone (WeakSFT's data). Both write ``samples.jsonl`` in one format:

    {"index", "sample", "prompt", "response", "token_ids", "n_tokens", "finish_reason",
     "implicit_reward_sum", "implicit_reward_mean", "alpha"}

(plain samples carry the implicit reward only when a base model is given, and "alpha": null).

Resumption: the work is split into fixed chunks (prompts sorted by token length, then cut into
``batch_size`` pieces; sorting keeps padding low). Chunk k always samples from a generator seeded by
(seed, k), and rows are appended a whole chunk at a time. A rerun after a crash repairs the file,
skips chunks whose rows are all there and regenerates the others whole, writing only the missing
rows: the result is the same as an uninterrupted run, sampled or greedy. When all chunks are done
the file is rewritten in (index, sample) order and DONE.json holds the summary.

Sharding (ml.shards): with ``shard="i/n"`` a run takes only chunks i, i+n, ... into its own folder under
``output_dir/shards/``; ``merge_shards`` joins the n shards into the same samples.jsonl and DONE.json that one
unsharded run writes (chunk seeds are the chunk's number in the whole stage, so the rows are identical).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar

import torch

from ml.cd_config import plain_field
from ml.contrastive import (
    CDConfig,
    batch_seed,
    check_weak_pair,
    contrastive_generate,
    encode_prompt,
    eos_ids_of,
)
from ml.io import (
    SAMPLES,
    append_jsonl,
    mark_done,
    read_prompts,
    repair_jsonl,
    write_json,
    write_jsonl,
)
from ml.plain_sampling import sample_plain
from ml.reporter import Reporter, or_null
from ml.shards import SHARD_HELP, Shardable, merge_shards
from ml.stages._responses import truncated_rate

_CD_FIELDS = {f.name for f in fields(CDConfig)}
_Config = TypeVar("_Config", bound="_GenerateCommon")


def _coerce_cd(value: Any, owner: str) -> CDConfig:
    if isinstance(value, CDConfig):
        return value
    if isinstance(value, dict):
        unknown = set(value) - _CD_FIELDS
        if unknown:
            raise ValueError(f"{owner}: unknown decoding setting(s) {sorted(unknown)}; known: {sorted(_CD_FIELDS)}")
        return CDConfig(**value)
    raise ValueError(f"{owner}: decoding settings must be a CDConfig or a dict, got {type(value).__name__}")


def _from_flat(cls: type[_Config], data: dict[str, Any], nested: str) -> _Config:
    """Build a config from a flat dict: keys naming CDConfig fields go into the nested decoding config."""
    own = {f.name for f in fields(cls)}
    cd = dict(data.get(nested) or {})
    top: dict[str, Any] = {}
    for k, v in data.items():
        if k == nested:
            continue
        if k in own:
            top[k] = v
        elif k in _CD_FIELDS:
            cd[k] = v
        else:
            raise ValueError(f"{cls.__name__}: unknown setting {k!r}")
    decoding: dict[str, Any] = {nested: CDConfig(**cd)}
    return cls(**top, **decoding)


@dataclass
class _GenerateCommon(Shardable):
    prompts: str = field(default="", metadata={"internal": True, "help": "JSONL file with a 'prompt' field per line."})
    output_dir: str = field(default="", metadata={"internal": True, "help": "Where samples.jsonl and DONE.json go."})
    max_prompts: int | None = field(default=None, metadata={"help": "Use only the first N prompts (None = all)."})
    samples_per_prompt: int = field(default=1, metadata={"help": "Samples per prompt (> 1 needs do_sample=True)."})
    device: str | None = field(
        default=None, metadata={"internal": True, "help": "cpu, cuda, cuda:1 ... (None = CUDA if present)."}
    )
    dtype: str | None = field(
        default=None, metadata={"internal": True, "help": "float32, bfloat16, float16 (None = per device)."}
    )
    report_samples: int = field(default=2, metadata={"help": "Rows per batch sent to reporter.sample()."})
    shard: str | None = field(default=None, metadata={"internal": True, "help": SHARD_HELP})

    def _check_common(self, decoding: CDConfig) -> None:
        if not self.prompts:
            raise ValueError("prompts is empty: give a JSONL file with a 'prompt' field per line")
        if not self.output_dir:
            raise ValueError("output_dir is empty: say where samples.jsonl should go")
        if self.max_prompts is not None and self.max_prompts < 1:
            raise ValueError(f"max_prompts must be None or >= 1, got {self.max_prompts}")
        if self.samples_per_prompt < 1:
            raise ValueError(f"samples_per_prompt must be >= 1, got {self.samples_per_prompt}")
        if self.samples_per_prompt > 1 and not decoding.do_sample:
            raise ValueError(
                "samples_per_prompt > 1 with greedy decoding repeats one answer; set do_sample=True "
                "or samples_per_prompt=1"
            )
        if self.report_samples < 0:
            raise ValueError(f"report_samples must be >= 0, got {self.report_samples}")
        self.part()  # a malformed shard fails here, not mid-run

    def decoding_config(self) -> CDConfig:
        raise NotImplementedError

    def shard_plan(self) -> tuple[int, int]:
        n = len(read_prompts(self.prompts, limit=self.max_prompts))
        return n * self.samples_per_prompt, self.decoding_config().batch_size

    def finish_shards(self, fn: Callable[..., dict[str, Any]], count: int, reporter: Reporter) -> dict[str, Any]:
        return merge_shards(self, count)


@dataclass
class CDGenerateConfig(_GenerateCommon):
    aligned: str = field(default="", metadata={"internal": True, "help": "pi_post: the aligned weak model's folder."})
    base: str = field(
        default="", metadata={"internal": True, "help": "pi_pre: the weak base model's folder (same vocabulary)."}
    )
    cd: CDConfig = field(
        default_factory=CDConfig,
        metadata={"help": "Contrastive decoding settings (a CDConfig or a dict of its fields)."},
    )
    # Read by the CD job (ml.execute), which then runs plain_generate from plain_config(); cd_generate ignores it.
    plain: bool = plain_field()

    def __post_init__(self) -> None:
        if not self.aligned or not self.base:
            raise ValueError("CD needs both weak models: set aligned (pi_post) and base (pi_pre) folders")
        self.cd = _coerce_cd(self.cd, "CDGenerateConfig.cd")
        self._check_common(self.cd)

    def decoding_config(self) -> CDConfig:
        return self.cd

    def plain_config(self, output_dir: str) -> PlainGenerateConfig:
        """Plain pi_post samples for the same prompts with the same sampling settings (one per prompt: the side a
        pair shows beside the CD response), scored against pi_pre like the CD rows."""
        return PlainGenerateConfig(
            model=self.aligned,
            base=self.base,
            prompts=self.prompts,
            output_dir=output_dir,
            max_prompts=self.max_prompts,
            device=self.device,
            dtype=self.dtype,
            report_samples=self.report_samples,
            sampling=self.cd,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CDGenerateConfig:
        """Flat or nested: {"aligned":..., "alpha": 0.3} and {"aligned":..., "cd": {"alpha": 0.3}} both work."""
        return _from_flat(cls, data, "cd")


@dataclass
class PlainGenerateConfig(_GenerateCommon):
    model: str = field(
        default="", metadata={"internal": True, "help": "The model to sample from (pi_post for WeakSFT data)."}
    )
    base: str | None = field(
        default=None,
        metadata={
            "internal": True,
            "help": "Optional pi_pre folder: when given, rows also carry the implicit reward log pi_post - log pi_pre.",
        },
    )
    sampling: CDConfig = field(
        default_factory=CDConfig,
        metadata={
            "help": "Sampling settings (temperature, top_p, repetition_penalty, max_new_tokens, seed, batch_size, "
            "stop_strings, use_chat_template); alpha and relative_top are unused."
        },
    )

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("model is empty: give the folder of the model to sample from")
        self.sampling = _coerce_cd(self.sampling, "PlainGenerateConfig.sampling")
        self._check_common(self.sampling)

    def decoding_config(self) -> CDConfig:
        return self.sampling

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PlainGenerateConfig:
        return _from_flat(cls, data, "sampling")


# ---------------------------------------------------------------------------------------------------
# The shared resumable driver

ChunkFn = Callable[[list[str], int], list[dict[str, Any]]]  # (prompts, chunk no) -> one result per prompt


def _chunks(config: _GenerateCommon, lengths: list[int]) -> list[list[tuple[int, int]]]:
    """The stage's chunks of (prompt index, sample): longest prompts first, ``batch_size`` per chunk."""
    batch = config.decoding_config().batch_size
    items = [(i, s) for i in range(len(lengths)) for s in range(config.samples_per_prompt)]
    items.sort(key=lambda it: (-lengths[it[0]], it[0], it[1]))
    return [items[k : k + batch] for k in range(0, len(items), batch)]


def stage_summary(
    stage: str, config: _GenerateCommon, rows: list[dict[str, Any]], n_prompts: int, alpha: float | None
) -> dict[str, Any]:
    sums = [r["implicit_reward_sum"] for r in rows if r.get("implicit_reward_sum") is not None]
    means = [r["implicit_reward_mean"] for r in rows if r.get("implicit_reward_mean") is not None]
    return {
        "stage": stage,
        "n": len(rows),
        "n_prompts": n_prompts,
        "samples_per_prompt": config.samples_per_prompt,
        "alpha": alpha,
        "samples": str(Path(config.output_dir) / SAMPLES),
        "mean_implicit_reward": sum(sums) / len(sums) if sums else None,
        "mean_implicit_reward_per_token": sum(means) / len(means) if means else None,
        "mean_tokens": sum(r["n_tokens"] for r in rows) / len(rows),
        "truncated_rate": truncated_rate(rows),  # cut at max_new_tokens: training leaves them out by default
    }


def _run(
    *,
    stage: str,
    config: _GenerateCommon,
    decoding: CDConfig,
    tokenizer: Any,
    alpha: float | None,
    chunk_fn: ChunkFn,
    reporter: Reporter | None,
) -> dict[str, Any]:
    rep = or_null(reporter)
    shard = config.part()
    out_dir = config.work_dir()
    path = out_dir / SAMPLES
    prompts = read_prompts(config.prompts, limit=config.max_prompts)
    if not prompts:
        raise ValueError(f"{config.prompts} holds no prompts")
    lengths = [len(encode_prompt(tokenizer, p, use_chat_template=decoding.use_chat_template)) for p in prompts]
    # Chunk numbers are the whole stage's: a shard seeds chunk k as the unsharded run does.
    chunks = [(k, c) for k, c in enumerate(_chunks(config, lengths)) if shard is None or shard.takes(k)]

    have = repair_jsonl(path)
    stale = [r for r in have if r.get("alpha") != alpha]
    if stale:
        raise ValueError(
            f"{path} holds samples made with alpha={stale[0].get('alpha')}, not {alpha}; use a new "
            "output_dir (or delete that file) to generate with these settings"
        )
    present = {(int(r["index"]), int(r.get("sample", 0))) for r in have}
    write_json(out_dir / "config.json", {"stage": stage, **asdict(config)})

    total = sum(len(c) for _, c in chunks)
    n_done = sum(1 for _, c in chunks for it in c if it in present)
    new_tokens, gen_seconds = 0, 0.0
    for k, chunk in chunks:
        missing = [it for it in chunk if it not in present]
        if not missing:
            continue
        if rep.should_stop():
            rep.log(f"{stage}: stopped with {n_done} of {total} samples written")
            return {"stage": stage, "stopped": True, "n": n_done, "total": total, "samples": str(path)}
        t0 = time.perf_counter()
        results = chunk_fn([prompts[i] for i, _ in chunk], k)
        gen_seconds += time.perf_counter() - t0
        rows = []
        for (i, s), res in zip(chunk, results):
            new_tokens += res["n_tokens"]
            if (i, s) in present:
                continue
            rows.append({"index": i, "sample": s, "prompt": prompts[i], **res, "alpha": alpha})
        append_jsonl(path, rows)
        present.update((r["index"], r["sample"]) for r in rows)
        n_done += len(rows)
        for r in rows[: config.report_samples]:
            rep.sample(
                {
                    "stage": stage,
                    **{key: r[key] for key in ("index", "sample", "prompt", "response")},
                    "implicit_reward_sum": r.get("implicit_reward_sum"),
                    "implicit_reward_mean": r.get("implicit_reward_mean"),
                    "alpha": r.get("alpha"),  # a sweep's page puts the sample under its alpha
                }
            )
        rewards = [r["implicit_reward_mean"] for r in rows if r.get("implicit_reward_mean") is not None]
        if rewards:
            rep.metric(f"{stage}/implicit_reward_mean", sum(rewards) / len(rewards), n_done)
        rep.progress(stage, n_done, total)

    rows = sorted(repair_jsonl(path), key=lambda r: (r["index"], r.get("sample", 0)))
    write_jsonl(path, rows)  # whole file in prompt order for readers
    timing = {"new_tokens": new_tokens, "gen_seconds": gen_seconds}
    if shard is not None:  # the merge reads these; the stage's summary is written by merge_shards
        return mark_done(out_dir, {"stage": stage, "shard": str(shard), "n": len(rows), "total": total, **timing})
    summary = stage_summary(stage, config, rows, len(prompts), alpha)
    return mark_done(out_dir, {**summary, "tokens_per_s": new_tokens / gen_seconds if gen_seconds > 0 else None})


def _load_pair(
    aligned_path: str, base_path: str | None, device: str | None, dtype: str | None
) -> tuple[Any, Any, Any | None, torch.device]:
    from ml.modeling import check_same_vocab, load_causal_lm, load_tokenizer, pick_device

    dev = pick_device(device)
    tok = load_tokenizer(aligned_path)
    aligned = load_causal_lm(aligned_path, device=dev, dtype=dtype)
    base = None
    if base_path:
        check_same_vocab(tok, load_tokenizer(base_path))  # before loading a second model for nothing
        base = load_causal_lm(base_path, device=dev, dtype=dtype)
    return tok, aligned, base, dev


def _row_result(token_ids: list[int], text: str, finish: str, reward: Mapping[str, Any] | None) -> dict[str, Any]:
    return {
        "response": text,
        "token_ids": token_ids,
        "n_tokens": len(token_ids),
        "finish_reason": finish,
        "implicit_reward_sum": None if reward is None else reward["sum"],
        "implicit_reward_mean": None if reward is None else reward["mean"],
    }


def cd_generate(config: CDGenerateConfig, reporter: Reporter | None = None) -> dict[str, Any]:
    """One CD response per prompt (per sample) into output_dir/samples.jsonl; resumable, idempotent."""
    done = config.finished()
    if done is not None:
        return done
    tok, aligned, base, _ = _load_pair(config.aligned, config.base, config.device, config.dtype)
    cd = config.cd

    def chunk_fn(prompts: list[str], k: int) -> list[dict[str, Any]]:
        cfg = replace(cd, seed=batch_seed(cd.seed, k), batch_size=len(prompts))
        gens = contrastive_generate(aligned=aligned, base=base, tokenizer=tok, prompts=prompts, config=cfg)
        return [_row_result(g.token_ids, g.text, g.finish_reason, g.implicit_reward.as_dict()) for g in gens]

    return _run(
        stage="cd_generate",
        config=config,
        decoding=cd,
        tokenizer=tok,
        alpha=cd.alpha,
        chunk_fn=chunk_fn,
        reporter=reporter,
    )


def plain_generate(config: PlainGenerateConfig, reporter: Reporter | None = None) -> dict[str, Any]:
    """Plain samples from one model: CD at alpha 1 (ml.plain_sampling), with the implicit reward when ``base`` is
    given."""
    done = config.finished()
    if done is not None:
        return done
    from ml.scoring import implicit_rewards_from_ids

    tok, model, base, _ = _load_pair(config.model, config.base, config.device, config.dtype)
    if base is not None:
        check_weak_pair(model, base, tok)
    sp = config.sampling
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos_ids_of(model, tok)[0]

    def chunk_fn(prompts: list[str], k: int) -> list[dict[str, Any]]:
        # One definition of plain sampling for every stage and the diagnostic (ml.plain_sampling: CD at alpha 1).
        results, ids_list = sample_plain(model, tok, prompts, sp, seed=batch_seed(sp.seed, k))
        pairs = [(prompt_ids, ids) for prompt_ids, (ids, _, _) in zip(ids_list, results)]
        rewards = (
            implicit_rewards_from_ids(aligned=model, base=base, pairs=pairs, batch_size=len(pairs), pad_id=int(pad))
            if base is not None
            else [None] * len(pairs)
        )
        return [_row_result(ids, text, finish, r) for (ids, text, finish), r in zip(results, rewards)]

    return _run(
        stage="plain_generate",
        config=config,
        decoding=sp,
        tokenizer=tok,
        alpha=None,
        chunk_fn=chunk_fn,
        reporter=reporter,
    )


GenerateConfig = _GenerateCommon  # the base of every generation stage's config
