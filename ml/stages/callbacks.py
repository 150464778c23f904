"""Bridge from the HF Trainer to our Reporter: progress per step, loss metrics, log lines, cancel.

Cancel is cooperative: ``reporter.should_stop()`` is read after every optimizer step; when it says
True we ask the Trainer to save a checkpoint of that step and stop, so a rerun resumes from it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

from ml.reporter import NullReporter, Reporter, or_null

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
        if not self.stopped and self.reporter.should_stop():
            self.stopped = True
            control.should_training_stop = True
            control.should_save = True  # checkpoint this step so the rerun loses nothing
            self.reporter.log(f"{self.stage}: stop requested; saving a checkpoint and stopping")


def for_rank(reporter: Reporter | None) -> Reporter:
    """``reporter`` in the first process; in the others one that only answers should_stop (one process speaks for
    a group training one model, ml.distributed). The stages report through it before training too."""
    from ml.distributed import is_main

    return or_null(reporter) if is_main() else _Quiet(or_null(reporter))


class _Quiet(NullReporter):
    """A reporter that says nothing but still answers should_stop (a process other than the first)."""

    def __init__(self, inner: Reporter) -> None:
        self.inner = inner

    def should_stop(self) -> bool:
        return self.inner.should_stop()
