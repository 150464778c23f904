"""Training on two processes (ml.distributed): `python -m ml stage NAME --nproc 2` runs DDP over gloo on this CPU
machine, and ends where one process ends at the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ml.io import read_json

from ._stage_fixtures import PROMPTS, save_tiny, write_pairs, write_prefs

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def _stage(name: str, cfg: dict, folder: Path, nproc: int) -> dict:
    folder.mkdir(parents=True)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump({**cfg, "output_dir": str(folder / "out")}), encoding="utf-8")
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    cmd = [sys.executable, "-m", "ml", "stage", name, "--config", str(path), "--quiet", "--nproc", str(nproc)]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads(done.stdout)  # printed once, by the first process
    assert summary == read_json(folder / "out" / "DONE.json")
    return summary


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    return save_tiny(tmp_path_factory.mktemp("m") / "strong", seed=3)


# Every step sees the whole data set (6 examples: one batch of 6, or 3 per process on 2): the same global batch,
# so the two runs take the same optimizer steps and differ only by DDP's averaging of per-process means.
COMMON = {"max_steps": 4, "learning_rate": 1e-3, "warmup_ratio": 0.0, "lr_scheduler_type": "constant", "seed": 0}


@pytest.mark.parametrize(
    ("stage", "data"),
    [
        ("sft", lambda tmp: {"data": write_pairs(tmp / "pairs.jsonl")}),
        ("dpo", lambda tmp: {"data": write_prefs(tmp / "prefs.jsonl")}),
    ],
)
def test_two_processes_end_where_one_does(stage, data, model, tmp_path):
    cfg = {"model": model, "use_chat_template": False, **COMMON, **data(tmp_path)}
    n = len(PROMPTS)
    one = _stage(stage, {**cfg, "per_device_train_batch_size": n}, tmp_path / "one", 1)
    two = _stage(stage, {**cfg, "per_device_train_batch_size": n // 2}, tmp_path / "two", 2)
    assert (one["world_size"], one["distributed"]) == (1, None)
    assert (two["world_size"], two["distributed"]) == (2, "ddp")
    assert one["steps"] == two["steps"] == 4
    # Tolerance 1e-4 (relative): each process averages its own examples' loss and DDP averages the processes,
    # which is the one-process mean when both halves weigh the same, as here (every response has the same token
    # count); what is left is float summation order. Data with unequal halves would differ by more.
    assert two["final_loss"] == pytest.approx(one["final_loss"], rel=1e-4)
    assert two["train_loss"] == pytest.approx(one["train_loss"], rel=1e-4)
    assert one["final_loss"] < one["train_loss"]  # it trained: the last step's loss is below the run's mean
    assert (tmp_path / "two" / "out" / "model" / "config.json").exists()


def test_nproc_is_refused_for_stages_not_yet_run_distributed(tmp_path, capsys):
    from ml.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: m\n", encoding="utf-8")
    assert main(["stage", "wspo", "--config", str(cfg), "--nproc", "2"]) == 2
    assert "--nproc runs sft and dpo so far; wspo runs in one process" in capsys.readouterr().err
