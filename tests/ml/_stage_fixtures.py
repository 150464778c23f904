"""Tiny saved models and data files for the stage tests (built in seconds, nothing downloaded)."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

from ml.io import write_jsonl
from ml.tiny import tiny_gpt2, word_tokenizer

torch.set_num_threads(1)

WORDS = "a b c d e f g h good bad ok yes no please tell me about the cat dog".split()
PROMPTS = [
    "tell me about the cat",
    "tell me about the dog",
    "please tell me",
    "about the dog please",
    "tell me a b",
    "the cat the dog",
]


def save_tiny(path: Path, seed: int = 0, n_embd: int = 32) -> str:
    tok = word_tokenizer(WORDS)
    model = tiny_gpt2(len(tok), n_layer=1, n_embd=n_embd, n_head=2, n_positions=64, seed=seed)
    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return str(path)


def write_prompts(path: Path, prompts=PROMPTS) -> str:
    write_jsonl(path, [{"prompt": p} for p in prompts])
    return str(path)


def write_pairs(path: Path) -> str:
    rows = [{"prompt": p, "response": "good good a b" if i % 2 else "yes ok c d"} for i, p in enumerate(PROMPTS)]
    write_jsonl(path, rows)
    return str(path)


def write_prefs(path: Path) -> str:
    rows = [{"prompt": p, "chosen": "good good a", "rejected": "bad bad b"} for p in PROMPTS]
    write_jsonl(path, rows)
    return str(path)


def count_a(prompt: str, response: str) -> float:
    """Test gold reward: how many times the word 'a' appears in the response."""
    return float(response.split().count("a"))


def _register_test_gold() -> None:
    from ml.gold import GoldReward, register

    register(
        "test:count_a", lambda: GoldReward(name="test:count_a", score=count_a, valid=lambda p, r: len(r.split()) > 0)
    )


_register_test_gold()


FAST = {"per_device_train_batch_size": 2, "learning_rate": 1e-3}


KEEP_CUT = {"drop_truncated": False}


def tiny_config(tmp_path, **kw) -> dict:
    """A whole-pipeline config on tiny models (one training step per stage) for the pipeline and CLI tests."""
    models = tmp_path / "models"
    cfg = {
        "weak_base": save_tiny(models / "pre", seed=11),
        "strong": save_tiny(models / "strong", seed=12, n_embd=48),
        "train_prompts": write_prompts(tmp_path / "train.jsonl"),
        "eval_prompts": write_prompts(tmp_path / "eval.jsonl", ["tell me about the cat", "please tell me"]),
        "gold": "test:count_a",
        "output_dir": str(tmp_path / "run"),
        "max_new_tokens": 6,
        "train_max_steps": 1,
        "weak_align": {"k": 3, **FAST},
        "generate": {"batch_size": 4},
        # Tiny random models rarely say EOS within 6 tokens, so nearly every sample is cut at the limit: these tests
        # check the plumbing and train on them (tests/ml/test_truncation.py checks that they are left out by default).
        "sft": {**FAST, **KEEP_CUT},
        "dpo": {**FAST, **KEEP_CUT},
        "wspo": {**FAST, **KEEP_CUT},
        "auxconf": {**FAST, **KEEP_CUT},
        "evaluate": {"n_samples": 2, "batch_size": 4},
    }
    cfg.update(kw)
    return cfg
