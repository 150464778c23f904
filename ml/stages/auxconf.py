"""AuxConf baseline: Burns et al.'s auxiliary confidence loss, adapted to generation.

Burns et al. ("Weak-to-strong generalization", 2023) mix, for classification, the cross-entropy on
the weak labels with a cross-entropy on the strong model's own hardened predictions, so the strong
model can disagree with weak labels it is confident are wrong. For generation we apply it per token
of the weak responses, teacher-forced on the weak sample:

    loss = (1 - w) * CE(logits, weak token)  +  w * CE(logits, argmax(logits).detach())

averaged over response tokens. The "hardened" target is the strong model's own top token at that
position (the hard-threshold variant; argmax, no gradient through it). w ramps linearly from 0 to
``aux_weight`` over the first ``warmup_fraction`` of the optimizer steps (as in Burns et al.: the
model first learns from the weak labels, then is allowed to trust itself), then stays there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ml.io import stage_done
from ml.reporter import Reporter
from ml.stages._responses import EmptyResponses
from ml.stages._scale import check_runnable
from ml.stages._train import TrainConfig, pad_collate, run_training, training_kwargs
from ml.stages.callbacks import ReporterCallback, for_rank
from ml.stages.sft import load_encoded_pairs

STAGE = "auxconf"


@dataclass(kw_only=True)
class AuxConfConfig(EmptyResponses, TrainConfig):
    data: str = field(
        default="", metadata={"internal": True, "help": "JSONL of weak samples: 'prompt' and 'response'."}
    )
    response_field: str = field(
        default="response", metadata={"internal": True, "help": "Field holding the response text."}
    )
    aux_weight: float = field(
        default=0.5,
        metadata={"help": "Final weight w of the self-prediction term, in [0, 1] (Burns et al. used 0.5-0.75)."},
    )
    warmup_fraction: float = field(
        default=0.2, metadata={"help": "Fraction of training over which w ramps linearly from 0 to aux_weight."}
    )
    learning_rate: float = field(default=1e-5, metadata={"help": "Peak learning rate (as for SFT)."})
    num_train_epochs: float = field(default=2.0, metadata={"help": "Epochs (as for SFT)."})
    max_examples: int | None = field(default=None, metadata={"help": "Use only the first N rows (None = all)."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.data:
            raise ValueError("data is empty: give a JSONL of weak prompt/response samples")
        if not 0.0 <= self.aux_weight <= 1.0:
            raise ValueError(f"aux_weight must be in [0, 1] (got {self.aux_weight})")
        if not 0.0 <= self.warmup_fraction <= 1.0:
            raise ValueError(f"warmup_fraction must be in [0, 1] (got {self.warmup_fraction})")


def aux_weight_at(step: int, max_steps: int, aux_weight: float, warmup_fraction: float) -> float:
    if warmup_fraction <= 0 or max_steps <= 0:
        return aux_weight
    return aux_weight * min(1.0, step / (warmup_fraction * max_steps))


def auxconf_loss(logits: torch.Tensor, labels: torch.Tensor, w: float) -> tuple[torch.Tensor, dict[str, float]]:
    """logits [B, L, V] predicting labels [B, L] (already shifted; -100 = ignore)."""
    logits = logits.float()
    mask = labels != -100
    flat = logits[mask]
    weak_ce = torch.nn.functional.cross_entropy(flat, labels[mask])
    hard = flat.detach().argmax(dim=-1)
    self_ce = torch.nn.functional.cross_entropy(flat, hard)
    return (1.0 - w) * weak_ce + w * self_ce, {"weak_ce": weak_ce.item(), "self_ce": self_ce.item()}


def _trainer_class() -> type[Any]:
    """The Trainer subclass, built on first use (transformers is imported lazily); auxconf() sets its weights."""
    from transformers import Trainer

    class AuxConfTrainer(Trainer):
        aux_weight: float = 0.5
        warmup_fraction: float = 0.2

        def compute_loss(
            self,
            model: torch.nn.Module,
            inputs: dict[str, torch.Tensor | Any],
            return_outputs: bool = False,
            num_items_in_batch: torch.Tensor | int | None = None,
        ) -> torch.Tensor | tuple[torch.Tensor, Any]:
            out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
            labels = inputs["labels"][:, 1:]
            w = aux_weight_at(self.state.global_step, self.state.max_steps, self.aux_weight, self.warmup_fraction)
            loss, parts = auxconf_loss(out.logits[:, :-1], labels, w)
            self._aux_last = {"aux_weight": w, **parts}
            return (loss, out) if return_outputs else loss

        def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
            if "loss" in logs and getattr(self, "_aux_last", None):
                logs = {**logs, **self._aux_last}
            super().log(logs, *args, **kwargs)

    return AuxConfTrainer


def auxconf(config: AuxConfConfig, reporter: Reporter | None = None) -> dict[str, Any]:
    done = stage_done(config.output_dir)
    if done is not None:
        return done
    check_runnable(config)
    # Several processes (ml.distributed): nothing is computed or written before training (the pairs are read and
    # tokenised in memory by each process alike), so every process runs this as it is; only the first reports.
    reporter = for_rank(reporter)
    from datasets import Dataset
    from transformers import TrainingArguments

    model, tok, encoded, dropped = load_encoded_pairs(config, STAGE, reporter)
    # Prompt tokens are labelled -100: the loss covers the weak response (and eos) only.
    feats = [
        {"input_ids": p + c, "attention_mask": [1] * (len(p) + len(c)), "labels": [-100] * len(p) + c}
        for p, c in encoded
    ]
    pad = tok.pad_token_id or 0

    def collate(f: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = pad_collate([{k: v for k, v in x.items() if k != "labels"} for x in f], pad)
        width = batch["input_ids"].shape[1]
        labels = torch.full((len(f), width), -100, dtype=torch.long)
        for i, x in enumerate(f):
            labels[i, : len(x["labels"])] = torch.tensor(x["labels"], dtype=torch.long)
        batch["labels"] = labels
        return batch

    cls = _trainer_class()
    cls.aux_weight, cls.warmup_fraction = config.aux_weight, config.warmup_fraction
    callback = ReporterCallback(reporter, STAGE)
    trainer = cls(
        model=model,
        args=TrainingArguments(**training_kwargs(config, model)),
        train_dataset=Dataset.from_list(feats),
        data_collator=collate,
        processing_class=tok,
        callbacks=[callback],
    )
    return run_training(trainer, config, callback, stage=STAGE, extra={"n_examples": len(feats), **dropped})
