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


def mode_unavailable(mode: str) -> str | None:
    """Why ``mode`` cannot run with what is installed here, or None. Checked at submit (a 400) and at run time."""
    if mode not in DISTRIBUTED_MODES:
        return f"unknown distributed mode {mode!r}; use one of {', '.join(DISTRIBUTED_MODES)}"
    if mode.startswith("zero3") and importlib.util.find_spec("deepspeed") is None:
        return f"{mode} runs through DeepSpeed, which is not installed here (pip install deepspeed); use ddp or fsdp"
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
    env = dict(os.environ)
    # Processes share the host's cores: the launcher's default of one thread each is right on a small CPU box,
    # and a CUDA process does its work on the device anyway.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    return subprocess.call([*cmd, "-m", "ml", *argv], env=env)
