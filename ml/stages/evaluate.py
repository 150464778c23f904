"""Evaluate a method: responses on held-out prompts, scored by the gold reward.

Input is a model folder (we sample ``n_samples`` seeded responses per prompt) or an existing samples
JSONL (``prompt``, ``response``; e.g. pi_post's plain samples). Output: output_dir/samples.jsonl (one
row per response with its gold score and validity) and output_dir/metrics.json (= DONE.json):
mean gold with a 95% interval, valid rate, paired win rate against a reference method's samples
(same prompt and sample number; ties count half), and, when a weak pair is given, the implicit reward
log pi_post(y|x) - log pi_pre(y|x) of the responses (sum over tokens, and per token); with a ``judge`` too, a local
LLM's pairwise verdicts against the reference (ml.judge.pairwise: win rate and length-controlled win rate).
Generation appends per batch, so a stopped or crashed evaluation resumes where it was.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ml.gold import GoldReward, resolve_gold
from ml.io import SAMPLES, mark_done, read_jsonl, read_prompts, write_json, write_jsonl
from ml.judge.pairwise import DEFAULT_BATCH_SIZE as JUDGE_BATCH_SIZE
from ml.judge.pairwise import DEFAULT_BOOTSTRAP, MAX_BOOTSTRAP, judge_against
from ml.judge.reward_model import CACHE_FILE as GOLD_CACHE
from ml.reporter import Reporter, or_null
from ml.shards import SHARD_HELP, Shardable, join_sample_shards
from ml.stages._responses import truncated_rate
from ml.stats import clustered_mean_ci, mean_ci, win_rate

STAGE = "evaluate"
GENERATED = "generated.jsonl"  # the sampled responses, before scoring (samples.jsonl holds them scored)


@dataclass(kw_only=True)
class EvaluateConfig(Shardable):
    output_dir: str = field(
        metadata={"internal": True, "help": "Folder for samples.jsonl, metrics.json and DONE.json."}
    )
    gold: str | Callable[[str, str], float] | GoldReward = field(
        metadata={
            "internal": True,
            "help": "Gold reward: a registered name such as 'toy:review', or a callable (prompt, response) -> float.",
        }
    )
    model: str = field(
        default="", metadata={"internal": True, "help": "HF folder of the model to sample from (or give samples)."}
    )
    samples: str = field(
        default="",
        metadata={
            "internal": True,
            "help": "Existing JSONL of 'prompt'/'response' rows to score instead of sampling a model.",
        },
    )
    prompts: str = field(
        default="", metadata={"internal": True, "help": "Held-out prompt JSONL ('prompt'); needed with model."}
    )
    name: str = field(
        default="", metadata={"internal": True, "help": "Method name shown in reports (defaults to the folder name)."}
    )
    n_samples: int = field(default=1, metadata={"help": "Responses per prompt."})
    temperature: float = field(default=0.8, metadata={"help": "Sampling temperature."})
    top_p: float = field(default=0.95, metadata={"help": "Nucleus sampling top-p."})
    do_sample: bool = field(default=True, metadata={"help": "Sample (True) or greedy decode (False)."})
    max_new_tokens: int = field(default=64, metadata={"help": "Longest response, in tokens."})
    batch_size: int = field(
        default=8, metadata={"help": "Prompts per generate() call (and pairs per batch of a reward-model gold)."}
    )
    max_prompts: int | None = field(default=None, metadata={"help": "Use only the first N prompts."})
    seed: int = field(default=0, metadata={"help": "Sampling seed (each batch is seeded from it)."})
    reference: str = field(
        default="",
        metadata={
            "internal": True,
            "help": "samples.jsonl of a reference method (e.g. another evaluate run) for the paired win rate.",
        },
    )
    reference_name: str = field(
        default="reference",
        metadata={
            "internal": True,
            "help": "Name of the reference method; the metric is called win_rate_vs_<reference_name>.",
        },
    )
    judge: str = field(
        default="",
        metadata={
            "internal": True,
            "help": "Folder of a causal LM that judges each response against the reference's, in both orders "
            "(ml.judge.pairwise): judge win rate and length-controlled win rate. Empty = no judge; needs reference.",
        },
    )
    judge_batch_size: int = field(
        default=JUDGE_BATCH_SIZE, metadata={"help": "Judging prompts per forward pass of the pairwise judge."}
    )
    judge_bootstrap: int = field(
        default=DEFAULT_BOOTSTRAP,
        metadata={
            "help": f"Bootstrap resamples over prompts for the judge's length-controlled win rate interval (0 = none, "
            f"at most {MAX_BOOTSTRAP})."
        },
    )
    weak_aligned: str = field(
        default="", metadata={"internal": True, "help": "pi_post folder, for implicit-reward statistics."}
    )
    weak_base: str = field(
        default="", metadata={"internal": True, "help": "pi_pre folder, for implicit-reward statistics."}
    )
    ci_method: str = field(default="t", metadata={"help": "95% interval: 't' (Student-t) or 'bootstrap'."})
    use_chat_template: bool = field(
        default=True, metadata={"help": "Format prompts with the tokenizer's chat template when it has one."}
    )
    device: str | None = field(
        default=None, metadata={"internal": True, "help": "'cpu', 'cuda'...; None = CUDA when present."}
    )
    shard: str | None = field(default=None, metadata={"internal": True, "help": SHARD_HELP})

    def shard_plan(self) -> tuple[int, int] | None:
        """Only the sampling is sharded; scoring given samples is not generation."""
        return (len(read_prompts(self.prompts, self.max_prompts)), self.batch_size) if self.model else None

    def finish_shards(self, fn: Callable[..., dict[str, Any]], count: int, reporter: Reporter) -> dict[str, Any]:
        join_sample_shards(self, count, GENERATED)
        return evaluate(self, reporter)  # finds every response sampled: scores them and writes the metrics

    def __post_init__(self) -> None:
        self.part()  # a malformed shard fails here, not mid-run
        if bool(self.model) == bool(self.samples):
            raise ValueError("give exactly one of model (to sample from) or samples (a JSONL to score)")
        if self.model and not self.prompts:
            raise ValueError("sampling a model needs prompts (a held-out prompt JSONL)")
        if self.n_samples < 1 or self.batch_size < 1 or self.max_new_tokens < 1:
            raise ValueError("n_samples, batch_size and max_new_tokens must all be >= 1")
        if self.ci_method not in ("t", "bootstrap"):
            raise ValueError(f"ci_method must be 't' or 'bootstrap', not {self.ci_method!r}")
        if self.judge_batch_size < 1 or not 0 <= self.judge_bootstrap <= MAX_BOOTSTRAP:
            raise ValueError(f"judge_batch_size must be >= 1 and judge_bootstrap in [0, {MAX_BOOTSTRAP}]")
        if bool(self.weak_aligned) != bool(self.weak_base):
            raise ValueError("implicit-reward statistics need both weak_aligned and weak_base (or neither)")
        if not self.name:
            self.name = Path(self.output_dir).name


def _key(row: dict[str, Any]) -> tuple[str, int]:
    return (str(row["prompt"]), int(row.get("sample", 0)))


def _generate(config: EvaluateConfig, path: Path, reporter: Reporter) -> bool:
    """Append sampled responses to path; returns False when stopped."""
    from ml.stages._train import sample_to_jsonl

    return sample_to_jsonl(
        model_dir=config.model,
        prompts=read_prompts(config.prompts, config.max_prompts),
        path=path,
        reporter=reporter,
        progress_name=f"{STAGE}/{config.name}",
        n=config.n_samples,
        temperature=config.temperature,
        top_p=config.top_p,
        do_sample=config.do_sample,
        max_new_tokens=config.max_new_tokens,
        batch_size=config.batch_size,
        seed=config.seed,
        use_chat_template=config.use_chat_template,
        device=config.device,
        shard=config.part(),
    )


def _implicit(config: EvaluateConfig, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from ml.modeling import load_causal_lm, load_tokenizer
    from ml.scoring import implicit_rewards

    aligned = load_causal_lm(config.weak_aligned, device=config.device)
    base = load_causal_lm(config.weak_base, device=config.device)
    tok = load_tokenizer(config.weak_aligned)
    return implicit_rewards(
        aligned=aligned,
        base=base,
        tokenizer=tok,
        prompts=[r["prompt"] for r in rows],
        responses=[r["response"] for r in rows],
        batch_size=config.batch_size,
        use_chat_template=config.use_chat_template,
        append_eos=True,
    )


def score_rows(rows: list[dict[str, Any]], gold: GoldReward) -> list[dict[str, Any]]:
    # One batched call: a reward model scores the rows in batches (GoldReward.score_many), a programmatic gold per row.
    scores = gold.score_many([(str(r["prompt"]), str(r["response"])) for r in rows])
    return [
        {**r, "gold": s, "valid": gold.is_valid(str(r["prompt"]), str(r["response"]))} for r, s in zip(rows, scores)
    ]


def evaluate(config: EvaluateConfig, reporter: Reporter | None = None) -> dict[str, Any]:
    done = config.finished()
    if done is not None:
        return done
    reporter = or_null(reporter)
    t0 = time.time()
    out = Path(config.output_dir)
    raw = config.work_dir() / GENERATED
    if config.model:
        if not _generate(config, raw, reporter):
            return {"stage": STAGE, "name": config.name, "stopped": True}
        if config.shard:  # one part of the sampling: the merge (ml.shards) joins the parts, then this scores them
            n = len(read_jsonl(raw))
            return mark_done(config.work_dir(), {"stage": STAGE, "name": config.name, "shard": config.shard, "n": n})
        rows = read_jsonl(raw)
    else:
        rows = read_jsonl(config.samples, required=("prompt", "response"))
        rows = [
            {
                "index": r.get("index", i),
                "sample": r.get("sample", 0),
                "prompt": r["prompt"],
                "response": r["response"],
                **({"finish_reason": r["finish_reason"]} if "finish_reason" in r else {}),
            }
            for i, r in enumerate(rows)
        ]
        if config.max_prompts:
            keep = sorted({r["index"] for r in rows})[: config.max_prompts]
            rows = [r for r in rows if r["index"] in set(keep)]
    # A reward model (rm:<folder>) runs on the stage's device, in batches of its batch_size, and keeps its scores
    # next to the outputs, so a stage resumed after a crash does not score them again (ml.judge.reward_model).
    gold = resolve_gold(config.gold, device=config.device, batch_size=config.batch_size, cache_file=out / GOLD_CACHE)
    rows = score_rows(rows, gold)
    metrics: dict[str, Any] = {"stage": STAGE, "name": config.name, "gold_name": gold.name}
    golds = [r["gold"] for r in rows]
    # The t interval counts prompts, not samples: n_samples answers to one prompt are not independent.
    g = (
        clustered_mean_ci(golds, [r["index"] for r in rows])
        if config.ci_method == "t"
        else mean_ci(golds, method=config.ci_method, seed=config.seed)
    )
    metrics.update(
        gold_mean=g.mean,
        gold_ci=[g.lo, g.hi],
        n=len(rows),
        n_prompts=len({r["index"] for r in rows}),
        truncated_rate=truncated_rate(rows),
        valid_rate=(sum(r["valid"] for r in rows) / len(rows)) if rows else float("nan"),
        mean_words=(sum(len(str(r["response"]).split()) for r in rows) / len(rows)) if rows else 0.0,
    )
    if config.weak_aligned:
        reporter.log(f"{STAGE}/{config.name}: scoring implicit rewards under the weak pair")
        imp = _implicit(config, rows)
        for r, s in zip(rows, imp):
            r["implicit_sum"], r["implicit_mean"] = float(s["sum"]), float(s["mean"])
        ci = mean_ci([r["implicit_sum"] for r in rows], method=config.ci_method, seed=config.seed)
        metrics.update(
            implicit_mean=ci.mean,
            implicit_ci=[ci.lo, ci.hi],
            implicit_per_token_mean=sum(r["implicit_mean"] for r in rows) / len(rows),
        )
    if config.reference:
        ref = read_jsonl(config.reference, required=("prompt", "response"))
        ref_scores = {_key(r): (r["gold"] if "gold" in r else gold(str(r["prompt"]), str(r["response"]))) for r in ref}
        w = win_rate({_key(r): r["gold"] for r in rows}, ref_scores)
        metrics[f"win_rate_vs_{config.reference_name}"] = w["win_rate"]
        metrics["win_detail"] = {**w, "reference": config.reference_name}
        if config.judge:  # the pairwise LLM judge on the same pairs (ml.judge.pairwise); sets each row's judge_pref
            judged = judge_against(config, rows, ref, reporter, _key)
            if judged is None:
                return {"stage": STAGE, "name": config.name, "stopped": True}
            metrics.update(judged)
    write_jsonl(out / SAMPLES, rows)
    for r in rows[:3]:
        reporter.sample({"stage": STAGE, "method": config.name, **r})
    metrics["seconds"] = round(time.time() - t0, 3)
    write_json(out / "metrics.json", metrics)
    reporter.metric(f"{config.name}/gold_mean", g.mean)
    return mark_done(out, metrics)
