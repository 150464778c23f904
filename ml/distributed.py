"""Training stages on several processes: torch.distributed driven by the HF Trainer's accelerate backend.

There is no launcher of our own: ``python -m ml stage NAME --config C --nproc N`` re-runs the same command under
torch's launcher (``torch.distributed.run``, which ``accelerate launch`` also uses for multi-process jobs). Each
process is one rank; the Trainer sees ``WORLD_SIZE``/``RANK`` and wraps the model in DistributedDataParallel,
over NCCL on GPUs and gloo on CPUs (so two processes on a 2-core machine test the same code path).
``per_device_train_batch_size`` stays per process: the global batch is per_device x processes x accumulation.
Only the first rank reports progress, saves model/ and writes DONE.json; every rank waits for it to finish.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ml.reporter import Reporter

# A stage function, and how a training stage is run: (pipeline's name for it, the function, its config, reporter).
StageFn = Callable[[Any, "Reporter"], dict[str, Any]]
TrainingRunner = Callable[[str, StageFn, Any, "Reporter"], dict[str, Any]]

# How several processes share one training (params.distributed; the CLI's --distributed). Declared here once: the
# stages map a mode to the Trainer's settings (ml.stages._train), the web app and the CLI offer these names.
DISTRIBUTED_MODES = {
    "ddp": "DistributedDataParallel: every device holds the whole model; gradients are averaged (default).",
    "fsdp": "Fully sharded data parallel: weights, gradients and optimizer states split across devices, "
    "wrapped per decoder layer.",
    "zero3": "DeepSpeed ZeRO-3: like fsdp, through DeepSpeed (needs the deepspeed package).",
    "zero3_offload": "DeepSpeed ZeRO-3 with optimizer states and weights offloaded to CPU memory (slower; fits "
    "bigger models).",
}
DEFAULT_MODE = "ddp"


def modes_help() -> str:
    """The modes and what each does, as one line of help text (the web form's setting, the CLI's flag)."""
    return "; ".join(f"{k}: {v}" for k, v in DISTRIBUTED_MODES.items())


RESULT = "result.json"  # a launched stage's summary, stopped or finished, written by its first rank (ml.cli)


def mode_unavailable(mode: str, cuda: bool | None = None) -> str | None:
    """Why ``mode`` cannot run with what is installed here, or None. ``cuda``: whether the run has CUDA GPUs (None:
    not known yet, as when a request is parsed). Checked at submit (a 400) and at run time."""
    if mode not in DISTRIBUTED_MODES:
        return f"unknown distributed mode {mode!r}; use one of {', '.join(DISTRIBUTED_MODES)}"
    if mode.startswith("zero3") and importlib.util.find_spec("deepspeed") is None:
        return f"{mode} runs through DeepSpeed, which is not installed here (pip install deepspeed); use ddp or fsdp"
    if mode == "fsdp" and cuda is False:
        # accelerate applies an FSDP plugin only to GPU process groups: on CPU (gloo) the Trainer silently trains
        # in DDP instead (tried with torch 2.13, transformers 5.24, accelerate 1.15), so fsdp is GPU-only.
        return "fsdp shards the model across CUDA GPUs and this deployment has none; use ddp"
    return None


def qlora_unavailable(cuda: bool) -> str | None:
    """Why QLoRA (4-bit base weights, bitsandbytes) cannot run, or None. ``cuda``: whether the GPU that would run
    it exists (the web app asks its live workers; a stage asks torch)."""
    if not cuda:
        return (
            "QLoRA (load_in_4bit) needs a CUDA GPU and this deployment has none; use LoRA (lora_r > 0) without "
            "load_in_4bit, or run on a GPU worker"
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        return "QLoRA (load_in_4bit) needs the bitsandbytes package (pip install bitsandbytes)"
    return None


def world() -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) when not launched as one of several."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    return world()[0] == 0


def launch(argv: list[str], nproc: int) -> int:
    """Run ``python -m ml <argv>`` as ``nproc`` processes on this host; the exit status of the group."""
    return launch_process(argv, nproc).wait()


def launch_process(
    argv: list[str], nproc: int, stdout: IO[bytes] | None = None, stderr: IO[bytes] | None = None
) -> subprocess.Popen[bytes]:
    """Start ``python -m ml <argv>`` as ``nproc`` processes on this host (torch's launcher)."""
    env = dict(os.environ)
    # Processes share the host's cores: the launcher's default of one thread each is right on a small CPU box,
    # and a CUDA process does its work on the device anyway.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    # --standalone picks a free rendezvous port, so two groups on one host (two workers) never meet.
    return subprocess.Popen([*cmd, "-m", "ml", *argv], env=env, stdout=stdout, stderr=stderr)


class Launched:
    """Runs a training stage as ``nproc`` processes in ``mode``: the pipeline's (and a web job's) training runner
    when a job asks for several devices (``params.gpus``) or a mode other than DDP. It writes the stage's config to
    ``<stage>/launch/config.yaml``, starts ``python -m ml stage NAME --nproc N --report-dir <stage>/launch`` and
    meanwhile replays the ranks' reports into its own reporter; a stop request becomes the STOP file the ranks'
    reporter watches (they checkpoint and stop; a rerun resumes like any stage). Same result as in-process: the
    stage's DONE.json summary."""

    def __init__(self, nproc: int, mode: str = DEFAULT_MODE, poll_seconds: float = 0.5) -> None:
        if nproc < 1:
            raise ValueError(f"nproc must be >= 1, got {nproc}")
        why = mode_unavailable(mode)
        if why:
            raise ValueError(why)
        self.nproc, self.mode, self.poll = nproc, mode, poll_seconds

    def __call__(self, name: str, fn: StageFn, cfg: Any, rep: Reporter) -> dict[str, Any]:
        import dataclasses

        import yaml

        from ml.io import read_json, stage_done
        from ml.reporter import forward_events

        done = stage_done(cfg.output_dir)
        if done is not None:  # finished earlier: what an in-process stage returns at once when rerun
            return done
        d = Path(cfg.output_dir) / "launch"
        d.mkdir(parents=True, exist_ok=True)
        events, stop = d / "events.jsonl", d / "STOP"
        events.write_bytes(b"")  # a previous attempt's reports were replayed then
        stop.unlink(missing_ok=True)
        (d / RESULT).unlink(missing_ok=True)
        data = {**dataclasses.asdict(cfg), "distributed": self.mode}
        held = [k for k, v in data.items() if callable(v)]
        if held:  # e.g. a gold reward given as a Python function: the ranks read their settings from a file
            raise ValueError(
                f"{name}: a stage launched on several processes takes its settings from a file; {', '.join(held)} "
                "is a Python callable there (use a registered name: python -m ml golds)"
            )
        (d / "config.yaml").write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        # The stage's CLI name is its function's (ml.cli's stage table).
        argv = ["stage", fn.__name__, "--config", str(d / "config.yaml"), "--quiet", "--report-dir", str(d)]
        argv += ["--watch-pid", str(os.getpid())]
        rep.log(f"{name}: training on {self.nproc} process(es), {self.mode}")
        with (d / "stdout.log").open("wb") as out, (d / "stderr.log").open("wb") as err:
            proc = launch_process(argv, self.nproc, stdout=out, stderr=err)
            offset = 0
            while proc.poll() is None:
                offset = forward_events(events, offset, rep)
                if rep.should_stop() and not stop.exists():
                    stop.touch()
                time.sleep(self.poll)
            forward_events(events, offset, rep)
        if proc.returncode != 0 or not (d / RESULT).exists():
            raise RuntimeError(
                f"{name} on {self.nproc} processes ({self.mode}) failed with exit status {proc.returncode}: "
                f"{_why(d / 'stderr.log')}"
            )
        summary: dict[str, Any] = read_json(d / RESULT)
        if summary.get("stopped"):  # the ranks stopped together at a step boundary and checkpointed
            return {"stopped": True, "stage": name}
        return summary


def _why(stderr: Path) -> str:
    """What a rank said when it failed: ml.cli's one-line "error: ..." (a bad setting or file), else the last
    exception of a traceback, else the launcher's last lines (a crash: its report names the rank and signal)."""
    text = stderr.read_text(encoding="utf-8", errors="replace")
    lines = text.splitlines()
    said = [ln for ln in lines if ln.startswith("error: ")]
    if said:
        return said[0][len("error: ") :]
    raised = [ln for ln in lines if ln and not ln[0].isspace() and ("Error: " in ln or "Exception: " in ln)]
    return raised[0] if raised else "last output:\n" + text[-2000:]


def run_here(name: str, fn: StageFn, cfg: Any, rep: Reporter) -> dict[str, Any]:
    """The default training runner: the stage in this process."""
    return fn(cfg, rep)


def training_runner(gpus: int, mode: str = DEFAULT_MODE) -> TrainingRunner:
    """How a job with ``gpus`` devices and ``mode`` trains: in this process for one device in DDP (nothing to
    distribute), else launched (one process per device; DeepSpeed wants its launcher even for one)."""
    return run_here if gpus <= 1 and mode == DEFAULT_MODE else Launched(gpus, mode)
