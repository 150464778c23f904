"""Weak alignment: DPO of pi_pre into pi_post (docs/METHOD.md, the pipeline).

Preferences come from a JSONL (``prompt``, ``chosen``, ``rejected``) or are made here the reference
way: sample k responses per prompt from pi_pre (k=5, temperature 0.8, top-p 0.95), score them with a
gold reward, chosen = best, rejected = worst; prompts whose samples all tie are skipped (no signal).
Labelled pairs are appended to output_dir/preferences.jsonl batch by batch, so sampling resumes.
With several processes (ml.distributed) the first one labels and the others wait for labelled.json to say it is
complete, then read the same file (``prepare_once``): one sampler, one writer.
Training: DPO, reference beta 0.1, sigmoid loss.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ml.gold import GoldReward, release_gold_models, resolve_gold
from ml.io import append_jsonl, read_json, read_prompts, repair_jsonl, stage_done, write_json
from ml.judge.reward_model import CACHE_FILE as GOLD_CACHE
from ml.reporter import Reporter
from ml.stages._responses import finish_key
from ml.stages._scale import check_runnable, prepare_once
from ml.stages._train import sample_finished
from ml.stages.callbacks import for_rank
from ml.stages.dpo import DPOStageConfig, train_dpo

STAGE = "weak_align"


@dataclass(kw_only=True)
class WeakAlignConfig(DPOStageConfig):
    prompts: str = field(
        default="",
        metadata={
            "internal": True,
            "help": "Prompt JSONL ('prompt') to sample and label with the gold reward (when data is not given).",
        },
    )
    gold: str | Callable[[str, str], float] | None = field(
        default=None,
        metadata={
            "internal": True,
            "help": "Gold reward that labels the samples: a registered name such as 'toy:review', or a callable "
            "(prompt, response) -> float.",
        },
    )
    k: int = field(default=5, metadata={"help": "Samples per prompt (reference 5)."})
    temperature: float = field(default=0.8, metadata={"help": "Sampling temperature (reference 0.8)."})
    top_p: float = field(default=0.95, metadata={"help": "Nucleus sampling top-p (reference 0.95)."})
    max_new_tokens: int = field(default=64, metadata={"help": "Longest sampled response, in tokens."})
    sample_batch_size: int = field(default=8, metadata={"help": "Prompts per generate() call."})
    max_prompts: int | None = field(default=None, metadata={"help": "Use only the first N prompts."})
    beta: float = field(default=0.1, metadata={"help": "DPO beta (reference 0.1 for weak alignment)."})
    learning_rate: float = field(default=5e-7, metadata={"help": "Peak learning rate."})

    def __post_init__(self) -> None:
        # Either a preference file, or prompts + gold to make one; chosen/rejected files are not used here.
        if not self.data and not self.prompts:
            raise ValueError("give data (a prompt/chosen/rejected JSONL) or prompts plus gold to label samples")
        if not self.data and self.gold is None:
            raise ValueError("sampling preferences needs gold: a registered gold name or a callable")
        if self.k < 2:
            raise ValueError(f"k must be >= 2 to have a best and a worst sample (got {self.k})")
        if not self.data:
            self.data = "<sampled>"  # satisfies DPOStageConfig's check; replaced by preferences.jsonl
        super().__post_init__()
        if self.data == "<sampled>":
            self.data = ""


def best_worst(
    prompt: str,
    responses: list[str],
    gold: GoldReward,
    scores: list[float] | None = None,
    finish: list[str] | None = None,
) -> dict[str, Any] | None:
    """The preference row for one prompt, or None when every sample scores the same. ``scores``: the responses'
    gold scores when the caller scored them already (a batch at once). ``finish``: how each response ended, kept as
    chosen_finish_reason / rejected_finish_reason, so that training gives a response cut at the length limit no EOS
    and drop_truncated can leave it out (WSPO trains on the chosen side; ml.stages._responses)."""
    scores = scores if scores is not None else gold.score_many([(prompt, r) for r in responses])
    order = range(len(responses))
    hi = max(order, key=lambda i: scores[i])
    lo = min(order, key=lambda i: scores[i])
    if scores[hi] == scores[lo]:
        return None
    row: dict[str, Any] = {
        "prompt": prompt,
        "chosen": responses[hi],
        "rejected": responses[lo],
        "chosen_gold": scores[hi],
        "rejected_gold": scores[lo],
    }
    if finish is not None:
        row[finish_key("chosen")], row[finish_key("rejected")] = finish[hi], finish[lo]
    return row


def _labelled(config: WeakAlignConfig) -> int:
    """How many prompts are labelled (labelled.json; ties leave no row in preferences.jsonl, so it counts apart)."""
    progress_path = Path(config.output_dir) / "labelled.json"
    return int(read_json(progress_path)["prompts_done"]) if progress_path.exists() else 0


def label_preferences(config: WeakAlignConfig, reporter: Reporter) -> tuple[Path, bool]:
    """Sample, score and append pairs to preferences.jsonl; returns (path, finished)."""
    from ml.modeling import load_causal_lm, load_tokenizer

    out = Path(config.output_dir)
    path = out / "preferences.jsonl"
    progress_path = out / "labelled.json"
    prompts = read_prompts(config.prompts, config.max_prompts)
    repair_jsonl(path)
    done = _labelled(config)
    if done >= len(prompts):
        return path, True
    if config.gold is None:  # __post_init__ requires gold when there is no preference file
        raise ValueError("sampling preferences needs gold: a registered gold name or a callable")
    # A reward model (rm:<folder>) scores on the stage's device, sample_batch_size pairs at a time, and keeps its
    # scores next to the preferences, so a resumed labelling rescores nothing (ml.judge.reward_model).
    gold = resolve_gold(
        config.gold, device=config.device, batch_size=config.sample_batch_size, cache_file=out / GOLD_CACHE
    )
    model = load_causal_lm(config.model, device=config.device)
    tok = load_tokenizer(config.model)
    bs = config.sample_batch_size
    while done < len(prompts):
        if reporter.should_stop():
            return path, False
        batch = prompts[done : done + bs]
        samples = sample_finished(
            model,
            tok,
            batch,
            n=config.k,
            temperature=config.temperature,
            top_p=config.top_p,
            max_new_tokens=config.max_new_tokens,
            use_chat_template=config.use_chat_template,
            seed=config.seed + done,
        )
        # The batch's k samples per prompt scored in one call (batched for a reward model), then split per prompt.
        flat = iter(gold.score_many([(p, text) for p, rs in zip(batch, samples) for text, _ in rs]))
        rows = [
            row
            for p, rs in zip(batch, samples)
            if (row := best_worst(p, [text for text, _ in rs], gold, [next(flat) for _ in rs], [why for _, why in rs]))
            is not None
        ]
        append_jsonl(path, rows)
        done += len(batch)
        # Written after the rows: a crash between the two re-labels this batch, and the duplicate
        # rows are dropped on load (see _dedupe).
        write_json(progress_path, {"prompts_done": done})
        reporter.progress(f"{STAGE}/label", done, len(prompts))
    return path, True


def _dedupe(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: set[Any] = set()
    out: list[dict[str, Any]] = []
    for r in rows:
        if r["prompt"] not in seen:
            seen.add(r["prompt"])
            out.append(r)
    return out


def weak_align(config: WeakAlignConfig, reporter: Reporter | None = None) -> dict[str, Any]:
    done = stage_done(config.output_dir)
    if done is not None:
        return done
    check_runnable(config)
    reporter = for_rank(reporter)
    from ml.io import read_jsonl

    extra: dict[str, Any] = {}
    if config.data:
        rows = read_jsonl(config.data, required=("prompt", "chosen", "rejected"))
        extra["preferences"] = config.data
    else:
        path = Path(config.output_dir) / "preferences.jsonl"
        n_prompts = len(read_prompts(config.prompts, config.max_prompts))
        finished = prepare_once(
            lambda: _labelled(config) >= n_prompts, lambda: label_preferences(config, reporter)[1], reporter
        )
        release_gold_models()  # a reward model's memory goes back before training
        if not finished:
            return {"stage": STAGE, "stopped": True, "preferences": str(path)}
        rows = _dedupe(read_jsonl(path))
        extra["preferences"] = str(path)
        if rows:
            extra["mean_chosen_gold"] = sum(r["chosen_gold"] for r in rows) / len(rows)
            extra["mean_rejected_gold"] = sum(r["rejected_gold"] for r in rows) / len(rows)
    rows = [r for r in rows if str(r["chosen"]).strip() != str(r["rejected"]).strip()]
    if config.max_examples:
        rows = rows[: config.max_examples]
    if not rows:
        raise ValueError(
            "weak_align: no preference pairs (every prompt's samples tied under the gold reward?); "
            "raise k or temperature, or give more prompts"
        )
    out = train_dpo(config, rows, reporter, stage=STAGE, extra=extra)
    return out
