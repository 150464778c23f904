"""Training stages on several processes: torch.distributed driven by the HF Trainer's accelerate backend.

There is no launcher of our own: ``python -m ml stage NAME --config C --nproc N`` re-runs the same command under
torch's launcher (``torch.distributed.run``, which ``accelerate launch`` also uses for multi-process jobs). Each
process is one rank; the Trainer sees ``WORLD_SIZE``/``RANK`` and wraps the model in DistributedDataParallel,
over NCCL on GPUs and gloo on CPUs (so two processes on a 2-core machine test the same code path).
``per_device_train_batch_size`` stays per process: the global batch is per_device x processes x accumulation.
Only the first rank reports progress, saves model/ and writes DONE.json; every rank waits for it to finish.
"""

from __future__ import annotations

import os
import subprocess
import sys


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
