"""What every toy world provides: prompts, a pretraining corpus, a vocabulary, a gold reward, a
validity check and the recipe (model sizes, steps, weak-alignment settings) that builds its models.

Everything is deterministic from a seed: generators take a ``random.Random`` or a seed, never the
global RNG, so a build on another machine produces the same prompts and corpus.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Any

# Tokens that may trail a decoded response (when a caller decodes without skipping specials).
_TRAILING_SPECIALS = {"<eos>", "<pad>", "<bos>"}


def words(text: str) -> list[str]:
    """Whitespace tokens of a response, without trailing special tokens."""
    toks = text.split()
    while toks and toks[-1] in _TRAILING_SPECIALS:
        toks.pop()
    return toks


@dataclass(frozen=True)
class ModelRecipe:
    """A tiny GPT-2 and how long to pretrain it (plain next-token loss on the corpus)."""

    n_layer: int = field(default=2, metadata={"help": "transformer layers"})
    n_embd: int = field(default=64, metadata={"help": "hidden size"})
    n_head: int = field(default=2, metadata={"help": "attention heads (must divide n_embd)"})
    steps: int = field(default=400, metadata={"help": "pretraining optimizer steps"})
    batch_size: int = field(default=64, metadata={"help": "corpus lines per step"})
    lr: float = field(default=3e-3, metadata={"help": "peak AdamW learning rate (cosine decay, short warmup)"})

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("steps and batch_size must be >= 1 and lr > 0")


@dataclass(frozen=True)
class WeakAlignRecipe:
    """How pi_post is made from pi_pre: gold-labelled pairs of pi_pre's own samples, then DPO.

    Deliberately light (few steps): the paper's premise is a weak, noisy aligned model."""

    n_prompts: int = field(default=480, metadata={"help": "prompts pi_pre samples on for preference pairs"})
    samples_per_prompt: int = field(default=5, metadata={"help": "pi_pre samples per prompt (reference: 5)"})
    temperature: float = field(default=0.8, metadata={"help": "sampling temperature for pi_pre's samples"})
    top_p: float = field(default=0.95, metadata={"help": "nucleus sampling for pi_pre's samples"})
    beta: float = field(default=0.1, metadata={"help": "DPO beta (reference: 0.1)"})
    lr: float = field(default=1e-4, metadata={"help": "DPO learning rate"})
    steps: int = field(default=60, metadata={"help": "DPO optimizer steps"})
    batch_size: int = field(default=32, metadata={"help": "DPO pairs per step"})


@dataclass(frozen=True)
class Recipe:
    """Everything ``build`` needs for one size of one world."""

    weak: ModelRecipe
    strong: ModelRecipe
    weak_align: WeakAlignRecipe
    corpus_lines: int = 20000
    n_train_prompts: int = 400
    n_heldout_prompts: int = 200
    n_positions: int = 64
    max_new_tokens: int = 40
    # Overrides for ml.pipeline's per-stage settings. The reference learning rates (SFT 1e-5, DPO
    # 6e-7) are for billion-parameter models; sub-million-parameter toy models need larger ones.
    # The ratios follow the reference (DPO lr well below SFT lr; ConG DPO beta 0.5).
    stages: dict[str, dict[str, Any]] = field(default_factory=lambda: strong_stage_overrides())

    def scaled(self, **kw: Any) -> Recipe:
        return replace(self, **kw)


def strong_stage_overrides(
    *,
    lr: float = 5e-4,
    dpo_lr: float = 3e-5,
    batch: int = 16,
    epochs: float = 2.0,
    max_length: int = 64,
    eval_samples: int = 3,
) -> dict[str, dict[str, Any]]:
    """Per-stage settings for ml.pipeline (its PipelineConfig's sft/dpo/wspo/... mappings)."""
    train = {"per_device_train_batch_size": batch, "max_length": max_length, "save_steps": 10_000, "logging_steps": 10}
    return {
        "sft": {**train, "learning_rate": lr, "num_train_epochs": epochs},
        "wspo": {**train, "learning_rate": lr, "num_train_epochs": epochs},
        "auxconf": {**train, "learning_rate": lr, "num_train_epochs": epochs},
        "dpo": {**train, "learning_rate": dpo_lr, "num_train_epochs": 1.0, "beta": 0.5},
        # The weak models share the strong one's context: training pi_pre must fit it too (512 would not).
        "weak_align": {"max_length": max_length},
        "generate": {"batch_size": 64},
        "self_sample": {"batch_size": 64},
        "evaluate": {"n_samples": eval_samples, "batch_size": 64},
    }


def tiny_recipe() -> Recipe:
    """A build that finishes in seconds: for tests and the web app's tests, not for measuring anything."""
    return Recipe(
        weak=ModelRecipe(n_layer=1, n_embd=32, n_head=2, steps=30, batch_size=32, lr=5e-3),
        strong=ModelRecipe(n_layer=1, n_embd=48, n_head=2, steps=30, batch_size=32, lr=5e-3),
        weak_align=WeakAlignRecipe(n_prompts=16, samples_per_prompt=2, steps=4, batch_size=8, lr=1e-4),
        corpus_lines=600,
        n_train_prompts=24,
        n_heldout_prompts=16,
        stages=strong_stage_overrides(batch=8, epochs=1.0, eval_samples=1),
    )


class World:
    """Base class; subclasses define the language. ``name`` is also the gold name suffix."""

    name: str = ""
    description: str = ""

    # --- language -------------------------------------------------------------------------
    def vocab(self) -> list[str]:
        raise NotImplementedError

    def sample_prompt(self, rng: random.Random) -> str:
        raise NotImplementedError

    def sample_response(self, prompt: str, rng: random.Random) -> str:
        """One pretraining-corpus response: the generic (unaligned) distribution of the world."""
        raise NotImplementedError

    # --- judging --------------------------------------------------------------------------
    def gold(self, prompt: str, response: str) -> float:
        raise NotImplementedError

    def valid(self, prompt: str, response: str) -> bool:
        raise NotImplementedError

    # The labelling gold: a misspecified proxy of ``gold`` that weak alignment's pairs are labelled with, so that the
    # labeler is not the evaluator (as in the paper: a reward model labels, another judge evaluates).
    proxy_description: str = ""

    def proxy(self, prompt: str, response: str) -> float:
        raise NotImplementedError

    def recipe(self, size: str = "default") -> Recipe:
        raise NotImplementedError

    # --- derived, shared by all worlds ---------------------------------------------------
    @property
    def gold_name(self) -> str:
        return f"toy:{self.name}"

    @property
    def label_gold_name(self) -> str:
        return f"toy:{self.name}:proxy"

    def tokenizer(self) -> Any:  # a transformers PreTrainedTokenizerFast
        from ml.tiny import word_tokenizer

        return word_tokenizer(self.vocab())

    def corpus(self, seed: int, n: int) -> list[tuple[str, str]]:
        """``n`` (prompt, response) pairs; prompts drawn afresh, so they overlap any split by chance."""
        rng = random.Random(f"{self.name}:corpus:{seed}")
        out = []
        for _ in range(n):
            p = self.sample_prompt(rng)
            out.append((p, self.sample_response(p, rng)))
        return out

    def prompt_splits(self, seed: int, sizes: dict[str, int]) -> dict[str, list[str]]:
        """Disjoint prompt sets, e.g. {"weak": 480, "train": 400, "heldout": 200}.

        Drawn in one stream with de-duplication, so no prompt is in two splits."""
        rng = random.Random(f"{self.name}:prompts:{seed}")
        seen: set[str] = set()
        out: dict[str, list[str]] = {}
        for split, n in sizes.items():
            items: list[str] = []
            tries = 0
            while len(items) < n:
                tries += 1
                if tries > 200 * max(n, 1):
                    raise ValueError(f"world {self.name!r} cannot supply {n} distinct {split} prompts")
                p = self.sample_prompt(rng)
                if p not in seen:
                    seen.add(p)
                    items.append(p)
            out[split] = items
        return out
