"""Bridge from the HF Trainer to our Reporter: progress per step, loss metrics, log lines, cancel.

Cancel is cooperative: ``reporter.should_stop()`` is read after every optimizer step; when it says
True we ask the Trainer to save a checkpoint of that step and stop, so a rerun resumes from it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

from ml.reporter import Reporter, StopOnly, or_null

if TYPE_CHECKING:
    from transformers import TrainerControl, TrainerState, TrainingArguments

# Keys in the Trainer's log dict worth forwarding as metrics (others: epoch bookkeeping, flops...).
_METRIC_KEYS = (
    "loss",
    "train_loss",
    "learning_rate",
    "grad_norm",
    "rewards/accuracies",
    "rewards/margins",
    "rewards/chosen",
    "rewards/rejected",
    "wspo_loss",
    "aux_weight",
    "weak_ce",
    "self_ce",
)


class ReporterCallback(TrainerCallback):
    """Reports from the first process only when several train one model (ml.distributed); every process
    reads should_stop, so that all of them stop at the same step."""

    def __init__(self, reporter: Reporter | None, stage: str) -> None:
        self.reporter = for_rank(reporter)
        self.stage = stage
        self.stopped = False

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        self.reporter.progress(self.stage, int(state.global_step), int(state.max_steps))
        self._check_stop(control)
        return control

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        self.reporter.progress(self.stage, int(state.global_step), int(state.max_steps))
        self._check_stop(control)
        return control

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> TrainerControl:
        for key, value in (logs or {}).items():
            if key in _METRIC_KEYS and isinstance(value, (int, float)):
                self.reporter.metric(f"{self.stage}/{key}", float(value), int(state.global_step))
        return control

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        how = "stopped" if self.stopped else "finished"
        self.reporter.log(f"{self.stage}: training {how} at step {state.global_step}/{state.max_steps}")
        return control

    def _check_stop(self, control: TrainerControl) -> None:
        if not self.stopped and _agreed(self.reporter.should_stop()):
            self.stopped = True
            control.should_training_stop = True
            control.should_save = True  # checkpoint this step so the rerun loses nothing
            self.reporter.log(f"{self.stage}: stop requested; saving a checkpoint and stopping")


def for_rank(reporter: Reporter | None) -> Reporter:
    """``reporter`` in the first process; in the others one that only answers should_stop (one process speaks for
    a group training one model, ml.distributed). The stages report through it before training too."""
    from ml.distributed import is_main

    return or_null(reporter) if is_main() else StopOnly(or_null(reporter))


def _agreed(stop: bool) -> bool:
    """True in every process when any of them was asked to stop. Each process reads its own stop signal (a file,
    the database) at a slightly different moment; stopping one step apart would leave the others waiting in a
    gradient all-reduce or the checkpoint's barrier for a process that already left. One tiny all-reduce per step."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return stop

    on = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if dist.get_backend() == "nccl" else "cpu"
    flag = torch.tensor([1 if stop else 0], device=on)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())
