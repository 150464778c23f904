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
