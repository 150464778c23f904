"""SFT of the strong model on (prompt, response) pairs: ConG-S on CD samples, WeakSFT on plain ones.

TRL's SFTTrainer with completion-only loss: the loss covers the response tokens (and eos) only.
We hand it pre-tokenised rows (input_ids + completion_mask) built by ``_train.encode_pair`` so the
training sequence is token-for-token what generation and scoring use.
Reference hyperparameters (docs/METHOD.md): lr 1e-5, 2 epochs, cosine, warmup 0.1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ml.io import read_jsonl, stage_done
from ml.reporter import Reporter
from ml.stages._responses import EmptyResponses, drop_empty, drop_truncated, ends_complete
from ml.stages._scale import check_runnable
from ml.stages._train import TrainConfig, encode_pair, load_for_training, run_training, training_kwargs
from ml.stages.callbacks import ReporterCallback, for_rank

if TYPE_CHECKING:
    from ml.stages.auxconf import AuxConfConfig

STAGE = "sft"


@dataclass(kw_only=True)
class SFTStageConfig(EmptyResponses, TrainConfig):
    data: str = field(
        default="",
        metadata={
            "internal": True,
            "help": "JSONL with 'prompt' and 'response' (e.g. a cd_generate/plain_generate samples.jsonl).",
        },
    )
    response_field: str = field(
        default="response", metadata={"internal": True, "help": "Field holding the response text."}
    )
    max_examples: int | None = field(default=None, metadata={"help": "Use only the first N rows (None = all)."})
    learning_rate: float = field(default=1e-5, metadata={"help": "Peak learning rate (reference 1e-5)."})
    num_train_epochs: float = field(default=2.0, metadata={"help": "Epochs (reference 2)."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.data:
            raise ValueError("data is empty: give a JSONL file of prompt/response pairs")


def load_pairs(
    config: SFTStageConfig | AuxConfConfig, stage: str, reporter: Reporter
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """(the prompt/response rows of ``config.data`` to train on, {"n_empty_dropped", "n_truncated_dropped"}).
    Empty and length-cut ones go first (ml.stages._responses says why), then ``max_examples`` caps what is left."""
    rows = read_jsonl(config.data, required=("prompt", config.response_field))
    rows, n_empty = drop_empty(
        rows, (config.response_field,), keep=config.keep_empty_responses, stage=stage, reporter=reporter
    )
    rows, n_cut = drop_truncated(rows, ("finish_reason",), drop=config.drop_truncated, stage=stage, reporter=reporter)
    dropped = {"n_empty_dropped": n_empty, "n_truncated_dropped": n_cut}
    return (rows[: config.max_examples] if config.max_examples else rows), dropped


def load_encoded_pairs(
    config: SFTStageConfig | AuxConfConfig, stage: str, reporter: Reporter
) -> tuple[Any, Any, list[tuple[list[int], list[int]]], dict[str, int]]:
    """The model, its tokenizer, each (prompt ids, response ids + eos) pair of ``config.data`` (no eos after a
    response cut at the length limit) and the dropped counts: the shared start of every stage that trains on
    prompt/response pairs (SFT, AuxConf)."""
    pairs, dropped = load_pairs(config, stage, reporter)
    if not pairs:
        raise ValueError(
            f"{config.data} has no usable prompt/response pairs ({dropped['n_empty_dropped']} empty and "
            f"{dropped['n_truncated_dropped']} length-cut responses dropped)"
        )
    model, tok = load_for_training(config)
    encoded = [
        encode_pair(
            tok,
            str(r["prompt"]),
            str(r[config.response_field]),
            use_chat_template=config.use_chat_template,
            max_length=config.max_length,
            eos=ends_complete(r),
        )
        for r in pairs
    ]
    return model, tok, encoded, dropped


def sft(config: SFTStageConfig, reporter: Reporter | None = None) -> dict[str, Any]:
    done = stage_done(config.output_dir)
    if done is not None:
        return done
    check_runnable(config)
    reporter = for_rank(reporter)
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    model, tok, encoded, dropped = load_encoded_pairs(config, STAGE, reporter)
    rows = [{"input_ids": p + c, "completion_mask": [0] * len(p) + [1] * len(c)} for p, c in encoded]
    dataset = Dataset.from_list(rows)
    args = SFTConfig(
        **training_kwargs(config, model),
        completion_only_loss=True,
        max_length=config.max_length,
        dataset_num_proc=None,
        packing=False,
    )
    callback = ReporterCallback(reporter, STAGE)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tok, callbacks=[callback])
    return run_training(trainer, config, callback, stage=STAGE, extra={"n_examples": len(rows), **dropped})
