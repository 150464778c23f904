"""Training on two processes (ml.distributed): `python -m ml stage NAME --nproc 2` runs DDP over gloo on this CPU
machine, and ends where one process ends at the same global batch. Stages that compute something before training
(weak_align's labelled samples, wspo's targets) compute it once, in the first process: the files match a one-process
run's. The one-process references of those stages run in this process (cheaper than another launch)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ml.io import read_json, read_jsonl, write_jsonl
from ml.tiny import tiny_gpt2, word_tokenizer

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


def test_nproc_is_refused_for_stages_that_do_not_train(tmp_path, capsys):
    from ml.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: m\n", encoding="utf-8")
    assert main(["stage", "evaluate", "--config", str(cfg), "--nproc", "2"]) == 2
    assert "evaluate runs in one process" in capsys.readouterr().err


def _in_process(name: str, cfg: dict, folder: Path) -> dict:
    """Stage ``name`` (its module and function share the name) in this process, from the same settings."""
    import importlib

    from ml.cli import stage_config

    fn = getattr(importlib.import_module(f"ml.stages.{name}"), name)
    return fn(stage_config(name, {**cfg, "output_dir": str(folder / "out")}))


def _sort_model(path: Path) -> str:
    """A tiny model speaking the toy sort world, whose gold reward (toy:sort) is registered in every process."""
    from ml.toyworld.worlds.sort import DIGITS, STYLE

    tok = word_tokenizer(["sort", ":", ".", STYLE, *DIGITS])
    tiny_gpt2(len(tok), n_layer=1, n_embd=32, n_head=2, n_positions=64, seed=5).save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return str(path)


def test_weak_align_labels_once_and_trains_on_two_processes(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    write_jsonl(prompts, [{"prompt": f"sort {a} {b} {c} :"} for a, b, c in ("312", "975", "040", "821", "563", "190")])
    # 4 pairs (max_examples), 4 per step on one process, 2 per process on two: the same global batch.
    cfg = {
        "model": _sort_model(tmp_path / "pre"),
        "prompts": str(prompts),
        "gold": "toy:sort",
        "k": 4,
        "max_new_tokens": 6,
        "sample_batch_size": 3,
        "max_examples": 4,
        "use_chat_template": False,
        **COMMON,
    }
    one = _in_process("weak_align", {**cfg, "per_device_train_batch_size": 4}, tmp_path / "one")
    two = _stage("weak_align", {**cfg, "per_device_train_batch_size": 2}, tmp_path / "two", 2)
    assert (one["world_size"], one["distributed"], two["world_size"], two["distributed"]) == (1, None, 2, "ddp")
    # Labelled once: the first process sampled and appended alone (a second writer would duplicate or
    # interleave rows), and with the same seeds as one process.
    prefs = {k: read_jsonl(tmp_path / k / "out" / "preferences.jsonl") for k in ("one", "two")}
    assert prefs["two"] == prefs["one"] and len({r["prompt"] for r in prefs["two"]}) == len(prefs["two"])
    assert read_json(tmp_path / "two" / "out" / "labelled.json") == {"prompts_done": 6}
    assert one["n_pairs"] == two["n_pairs"] == 4 and one["steps"] == two["steps"] == 4
    assert two["final_loss"] == pytest.approx(one["final_loss"], rel=1e-4)  # as in the sft/dpo test above


@pytest.fixture(scope="module")
def weak_pair(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("weak")
    return {"weak_aligned": save_tiny(root / "post", seed=6), "weak_base": save_tiny(root / "pre", seed=7)}


@pytest.mark.parametrize("stage", ["wspo", "auxconf"])
def test_custom_loss_stages_on_two_processes_end_where_one_does(stage, model, weak_pair, tmp_path):
    cfg = {"model": model, "data": write_pairs(tmp_path / "pairs.jsonl"), "use_chat_template": False, **COMMON}
    if stage == "wspo":
        cfg.update(weak_pair)
    n = len(PROMPTS)
    one = _in_process(stage, {**cfg, "per_device_train_batch_size": n}, tmp_path / "one")
    two = _stage(stage, {**cfg, "per_device_train_batch_size": n // 2}, tmp_path / "two", 2)
    assert (one["world_size"], one["distributed"], two["world_size"], two["distributed"]) == (1, None, 2, "ddp")
    assert one["steps"] == two["steps"] == 4
    # Every response has the same token count, so the per-process token means average to the one-process mean.
    assert two["final_loss"] == pytest.approx(one["final_loss"], rel=1e-4)
    assert two["train_loss"] == pytest.approx(one["train_loss"], rel=1e-4)
    if stage == "wspo":  # the targets and reference log-probs were computed once, by the first process
        cached = [read_jsonl(tmp_path / k / "out" / "wspo_data.jsonl") for k in ("one", "two")]
        assert [r["input_ids"] for r in cached[1]] == [r["input_ids"] for r in cached[0]]
        for a, b in zip(cached[0], cached[1]):
            assert b["target"] == pytest.approx(a["target"], abs=1e-6) and b["ref"] == pytest.approx(a["ref"], abs=1e-6)
