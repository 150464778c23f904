"""DPO with TRL's DPOTrainer: ConG's last stage (and, via ``train_dpo``, weak alignment).

ConG (docs/METHOD.md, the pipeline): chosen = the CD response, rejected = the SFT'd strong model's own sample;
reference beta 0.5, lr 6e-7, 1 epoch, sigmoid loss. Reference log-probs are precomputed once (TRL's
``precompute_ref_log_probs``), so no second copy of the strong model sits in memory while training.

Precomputed reference log-probs with several processes and sharded modes: the pinned TRL (1.16,
``DPOTrainer._precompute_ref_logps``) supports them all, so no pass of our own is needed. Each process scores its
share of the batches, the scores are gathered, the first process writes them to a cache file named by a fingerprint
it broadcasts, and every process reads that file: ``_shared_dataset`` keeps the data set in the stage folder so the
cache lands where all processes can read it. Under ZeRO-3 TRL wraps the not-yet-sharded model in a DeepSpeed
inference engine for that pass; under fsdp (the policy is sharded only when training starts) it loads the
reference from the model folder for the pass and frees it; with LoRA the reference is the model with its adapter
disabled (TRL's copy of the untrained adapter, which is the same).

``filter_by_implicit_reward`` (off by default = the paper's recipe) keeps only pairs whose chosen
response has a higher implicit reward log pi_post/pi_pre (summed over tokens) than the rejected one
under the weak pair: a cheap way to drop pairs where the CD sample is not actually better.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ml.io import read_jsonl, stage_done, write_jsonl
from ml.reporter import Reporter
from ml.stages._responses import EmptyResponses, drop_empty, drop_truncated, ends_complete, finish_key
from ml.stages._scale import check_runnable, prepare_once
from ml.stages._train import TrainConfig, encode_pair, load_for_training, run_training, training_kwargs
from ml.stages.callbacks import ReporterCallback, for_rank

if TYPE_CHECKING:
    from trl import DPOTrainer

STAGE = "dpo"


@dataclass(kw_only=True)
class DPOStageConfig(EmptyResponses, TrainConfig):
    data: str = field(
        default="",
        metadata={
            "internal": True,
            "help": "Preference JSONL with 'prompt', 'chosen', 'rejected'. Or leave empty and give chosen_data "
            "and rejected_data.",
        },
    )
    chosen_data: str = field(
        default="",
        metadata={
            "internal": True,
            "help": "JSONL of chosen responses ('prompt', 'response'; e.g. CD samples), joined with rejected_data "
            "by 'index' when both have it, else by line order.",
        },
    )
    rejected_data: str = field(
        default="",
        metadata={
            "internal": True,
            "help": "JSONL of rejected responses ('prompt', 'response'; e.g. the strong model's own samples).",
        },
    )
    beta: float = field(default=0.5, metadata={"help": "DPO beta (reference 0.5 for ConG's DPO)."})
    loss_type: str = field(default="sigmoid", metadata={"help": "TRL DPO loss type (reference: sigmoid)."})
    learning_rate: float = field(default=6e-7, metadata={"help": "Peak learning rate (reference 6e-7)."})
    num_train_epochs: float = field(default=1.0, metadata={"help": "Epochs (reference 1)."})
    precompute_ref_log_probs: bool = field(
        default=True,
        metadata={"help": "Compute reference log-probs once before training instead of keeping a reference model."},
    )
    filter_by_implicit_reward: bool = field(
        default=False,
        metadata={
            "help": "Keep only pairs whose chosen has a higher implicit reward than rejected under the weak pair "
            "(needs weak_aligned and weak_base). Off = the paper's recipe."
        },
    )
    weak_aligned: str = field(
        default="", metadata={"internal": True, "help": "pi_post folder (only for the implicit-reward filter)."}
    )
    weak_base: str = field(
        default="", metadata={"internal": True, "help": "pi_pre folder (only for the implicit-reward filter)."}
    )
    score_batch_size: int = field(default=8, metadata={"help": "Batch size for the filter's reward scoring."})
    max_examples: int | None = field(default=None, metadata={"help": "Use only the first N pairs (None = all)."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.data and not (self.chosen_data and self.rejected_data):
            raise ValueError("give data (a prompt/chosen/rejected JSONL) or both chosen_data and rejected_data")
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0 (got {self.beta})")
        if self.filter_by_implicit_reward and not (self.weak_aligned and self.weak_base):
            raise ValueError("filter_by_implicit_reward needs weak_aligned and weak_base (the weak pair's folders)")


def join_pairs(
    chosen_rows: list[dict[str, Any]], rejected_rows: list[dict[str, Any]], field_name: str = "response"
) -> list[dict[str, Any]]:
    """Preference rows from two sample files for the same prompts (by 'index' if both carry it)."""
    if all("index" in r for r in chosen_rows) and all("index" in r for r in rejected_rows):
        by_index = {r["index"]: r for r in rejected_rows}
        matched = [(c, by_index[c["index"]]) for c in chosen_rows if c["index"] in by_index]
    else:
        matched = list(zip(chosen_rows, rejected_rows))
    out = []
    for c, r in matched:
        if str(c["prompt"]) != str(r["prompt"]):
            raise ValueError(f"chosen and rejected rows disagree on the prompt: {c['prompt']!r} vs {r['prompt']!r}")
        row = {"prompt": c["prompt"], "chosen": c[field_name], "rejected": r[field_name]}
        if "index" in c:
            row["index"] = c["index"]
        for side, src in (("chosen", c), ("rejected", r)):  # whether each side was cut (ml.stages._responses)
            if finish_key() in src:
                row[finish_key(side)] = src[finish_key()]
        out.append(row)
    return out


def filter_pairs(
    rows: list[dict[str, Any]], chosen_rewards: list[float], rejected_rewards: list[float]
) -> list[dict[str, Any]]:
    """Keep pairs where chosen's implicit reward beats rejected's (ties are dropped: no preference)."""
    if not len(rows) == len(chosen_rewards) == len(rejected_rewards):
        raise ValueError("one reward per pair is needed for chosen and for rejected")
    return [
        {**r, "chosen_implicit": c, "rejected_implicit": j}
        for r, c, j in zip(rows, chosen_rewards, rejected_rewards)
        if c > j
    ]


def _implicit_sums(cfg: DPOStageConfig, prompts: list[str], responses: list[str]) -> list[float]:
    from ml.modeling import load_causal_lm, load_tokenizer
    from ml.scoring import implicit_rewards

    aligned = load_causal_lm(cfg.weak_aligned, device=cfg.device)
    base = load_causal_lm(cfg.weak_base, device=cfg.device)
    tok = load_tokenizer(cfg.weak_aligned)
    scores = implicit_rewards(
        aligned=aligned,
        base=base,
        tokenizer=tok,
        prompts=prompts,
        responses=responses,
        batch_size=cfg.score_batch_size,
        use_chat_template=cfg.use_chat_template,
        append_eos=True,
    )
    return [float(s["sum"]) for s in scores]


def load_preferences(
    cfg: DPOStageConfig, reporter: Reporter | None = None
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """(the preference rows to train on, {"n_empty_dropped", "n_truncated_dropped"}: pairs left out for an empty
    side or a side cut at the length limit)."""
    if cfg.data:
        rows = read_jsonl(cfg.data, required=("prompt", "chosen", "rejected"))
    else:
        rows = join_pairs(
            read_jsonl(cfg.chosen_data, required=("prompt", "response")),
            read_jsonl(cfg.rejected_data, required=("prompt", "response")),
        )
    # A pair with an empty side is no usable preference (ml.stages._responses), nor is one of two identical sides.
    rows, n_empty = drop_empty(
        rows, ("chosen", "rejected"), keep=cfg.keep_empty_responses, stage=STAGE, reporter=for_rank(reporter)
    )
    rows, n_cut = drop_truncated(
        rows,
        (finish_key("chosen"), finish_key("rejected")),
        drop=cfg.drop_truncated,
        stage=STAGE,
        reporter=for_rank(reporter),
    )
    rows = [r for r in rows if str(r["chosen"]).strip() != str(r["rejected"]).strip()]
    dropped = {"n_empty_dropped": n_empty, "n_truncated_dropped": n_cut}
    return (rows[: cfg.max_examples] if cfg.max_examples else rows), dropped


def _trainer_class() -> type[DPOTrainer]:
    from trl import DPOTrainer

    class _DPOTrainer(DPOTrainer):
        """DPOTrainer that accepts rows already tokenised as prompt_ids/chosen_ids/rejected_ids.

        TRL re-tokenises prompt+completion jointly; we tokenise the two sides separately (see
        ``_train``) so DPO trains on the very tokens generation and scoring use.
        """

        def _prepare_dataset(self, dataset: Any, processing_class: Any, args: Any, dataset_name: str) -> Any:
            if "prompt_ids" in dataset.column_names:
                return dataset
            return super()._prepare_dataset(dataset, processing_class, args, dataset_name)

    return _DPOTrainer


def train_dpo(
    cfg: DPOStageConfig,
    rows: list[dict[str, Any]],
    reporter: Reporter | None,
    *,
    stage: str,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """DPO on preference rows; shared by ``dpo`` and ``weak_align``."""
    from trl import DPOConfig

    if not rows:
        raise ValueError(f"{stage}: no preference pairs to train on")
    model, tok = load_for_training(cfg)
    data = []
    for r in rows:
        # A side cut at the length limit gets no EOS (ml.stages._responses; kept only with drop_truncated off).
        p, c = encode_pair(
            tok,
            str(r["prompt"]),
            str(r["chosen"]),
            use_chat_template=cfg.use_chat_template,
            max_length=cfg.max_length,
            eos=ends_complete(r, finish_key("chosen")),
        )
        _, j = encode_pair(
            tok,
            str(r["prompt"]),
            str(r["rejected"]),
            use_chat_template=cfg.use_chat_template,
            max_length=cfg.max_length,
            eos=ends_complete(r, finish_key("rejected")),
        )
        data.append({"prompt_ids": p, "chosen_ids": c, "rejected_ids": j})
    args = DPOConfig(
        **training_kwargs(cfg, model),
        beta=cfg.beta,
        loss_type=[cfg.loss_type],
        max_length=cfg.max_length,
        precompute_ref_log_probs=cfg.precompute_ref_log_probs,
        dataset_num_proc=None,
    )
    callback = ReporterCallback(reporter, stage)
    trainer = _trainer_class()(
        model=model,
        args=args,
        train_dataset=_shared_dataset(data, args, cfg),
        processing_class=tok,
        callbacks=[callback],
    )
    return run_training(trainer, cfg, callback, stage=stage, extra={"n_pairs": len(data), **(extra or {})})


def _shared_dataset(data: list[dict[str, Any]], args: Any, cfg: DPOStageConfig) -> Any:
    """The training rows as a Dataset. With several processes (ml.distributed) it lives on disk in the stage
    folder, written by the first: TRL's precomputed reference log-probs are cached next to the dataset's files
    and the first process writes that cache for all, which an in-memory dataset keeps in a private temp folder
    the others cannot read."""
    from datasets import Dataset, load_from_disk

    if args.world_size == 1:
        return Dataset.from_list(data)
    digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cfg.output_dir) / f"train_data-{digest}"
    with args.main_process_first(desc="training data"):
        if not (path / "dataset_info.json").exists():
            Dataset.from_list(data).save_to_disk(str(path))
        return load_from_disk(str(path))


def dpo(config: DPOStageConfig, reporter: Reporter | None = None) -> dict[str, Any]:
    done = stage_done(config.output_dir)
    if done is not None:
        return done
    check_runnable(config)
    reporter = for_rank(reporter)
    out = Path(config.output_dir)
    pairs_path = out / "pairs.jsonl"
    # Read on a resume too (it is cheap): the dropped count belongs in the result either way.
    rows, dropped = load_preferences(config, reporter)
    extra: dict[str, Any] = dict(dropped)

    def settle_pairs() -> bool:  # the first process only (prepare_once): the filter's scoring runs once
        extra["n_pairs_before_filter"] = len(rows)
        kept = rows
        if config.filter_by_implicit_reward:
            reporter.log(f"{STAGE}: scoring {len(rows)} pairs under the weak pair for the implicit-reward filter")
            prompts = [str(r["prompt"]) for r in rows]
            chosen = _implicit_sums(config, prompts, [str(r["chosen"]) for r in rows])
            rejected = _implicit_sums(config, prompts, [str(r["rejected"]) for r in rows])
            kept = filter_pairs(rows, chosen, rejected)
            reporter.log(f"{STAGE}: kept {len(kept)} of {len(rows)} pairs")
        write_jsonl(pairs_path, kept)
        return True

    # On a resume the (possibly filtered) pairs were settled on the first run.
    if not pairs_path.exists() and not prepare_once(pairs_path.exists, settle_pairs, reporter):
        return {"stage": STAGE, "stopped": True}
    extra["filtered"] = config.filter_by_implicit_reward
    return train_dpo(config, read_jsonl(pairs_path), reporter, stage=STAGE, extra=extra)
