"""Shared tiny-model fixtures for ml tests: one word-level tokenizer and two tiny GPT-2s over it.

The two models differ only in their seed, so they disagree (contrastive decoding has something to
contrast). They are initialised wider than default so next-token distributions are peaked like a
trained model's: a freshly initialised GPT-2 is almost uniform, which would make greedy choices hinge
on float noise. Session-scoped fixtures are shared: tests must not modify them (deepcopy first).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from ml.tiny import word_tokenizer  # noqa: E402

TINY_WORDS = (
    "the a cat dog sat ran on under mat log big small red blue and then it was very happy "
    "sad good bad yes no please tell me about story short long one two three"
).split()

TINY_PROMPTS = [
    "the",
    "the cat",
    "tell me about the dog",
    "a big red cat sat on the mat",
    "one two",
    "please tell me a story about the small blue dog",
]


def peaked_tiny_gpt2(
    vocab_size: int,
    *,
    seed: int,
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int = 2,
    n_positions: int = 128,
    init: float = 0.2,
):
    """A tiny GPT-2 like ``ml.tiny.tiny_gpt2`` but with an untied head and a wider init, so next-token
    distributions are peaked (top token ~0.3-0.6) and differ by seed. With tied embeddings a random
    model mostly predicts "repeat the last token", the same in both models."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=vocab_size,
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        tie_word_embeddings=False,
        initializer_range=init,
    )
    model = GPT2LMHeadModel(cfg)
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = 2
    model.generation_config.bos_token_id = 1
    return model.eval()


@dataclass
class TinyPair:
    tokenizer: object
    aligned: object
    base: object


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return word_tokenizer(TINY_WORDS)


@pytest.fixture(scope="session")
def tiny_pair(tiny_tokenizer) -> TinyPair:
    """pi_post (seed 1) and pi_pre (seed 2), same vocabulary, in memory."""
    n = len(tiny_tokenizer)
    return TinyPair(
        tokenizer=tiny_tokenizer,
        aligned=peaked_tiny_gpt2(n, seed=1, n_positions=128),
        base=peaked_tiny_gpt2(n, seed=2, n_positions=128),
    )


@pytest.fixture(scope="session")
def tiny_pair_dirs(tmp_path_factory, tiny_pair) -> dict[str, str]:
    """The same pair saved as Hugging Face folders ({"aligned": path, "base": path})."""
    root = tmp_path_factory.mktemp("tiny_pair")
    out = {}
    for name in ("aligned", "base"):
        path = Path(root) / name
        getattr(tiny_pair, name).save_pretrained(str(path))
        tiny_pair.tokenizer.save_pretrained(str(path))
        out[name] = str(path)
    return out


@pytest.fixture
def tiny_prompts_file(tmp_path) -> str:
    from ml.io import write_jsonl

    path = tmp_path / "prompts.jsonl"
    write_jsonl(path, [{"prompt": p} for p in TINY_PROMPTS])
    return str(path)
