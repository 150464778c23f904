"""Pretraining the toy models: a plain torch loop (AdamW, next-token loss on corpus lines).

A corpus line is token-for-token what the stages train and generate on (see ml.stages._train):
prompt tokens, then the response's tokens, then eos, with no bos. A hand loop is used instead of
the HF Trainer because on two CPU cores its per-step overhead would dominate tiny models.
"""

from __future__ import annotations

import math
import random
import time
from typing import Any

import torch

from ml.reporter import Reporter, or_null

from .worlds.base import ModelRecipe


def encode_corpus(tokenizer: Any, pairs: list[tuple[str, str]]) -> list[list[int]]:
    """Word-level ids per line. Looked up directly in the vocab (100x faster than calling the fast
    tokenizer per line); an unknown word is a bug in the world, so it raises."""
    vocab = tokenizer.get_vocab()
    eos = tokenizer.eos_token_id
    out: list[list[int]] = []
    for prompt, response in pairs:
        try:
            out.append([vocab[w] for w in prompt.split()] + [vocab[w] for w in response.split()] + [eos])
        except KeyError as exc:
            raise ValueError(f"corpus word {exc} is not in the world's vocabulary") from None
    return out


def pretrain(
    model: Any,
    lines: list[list[int]],
    recipe: ModelRecipe,
    *,
    seed: int = 0,
    reporter: Reporter | None = None,
    stage: str = "pretrain",
) -> dict[str, Any]:
    """Train ``model`` in place; returns {"steps", "final_loss", "seconds"} (or "stopped": True)."""
    reporter = or_null(reporter)
    model.train()
    gen = random.Random(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = max(1, recipe.steps // 20)
    t0, loss_ema, step = time.time(), None, 0
    order: list[int] = []
    for step in range(1, recipe.steps + 1):
        if len(order) < recipe.batch_size:
            extra = list(range(len(lines)))
            gen.shuffle(extra)
            order += extra
        batch = [lines[i] for i in order[: recipe.batch_size]]
        del order[: recipe.batch_size]
        width = max(len(b) for b in batch)
        ids = torch.zeros((len(batch), width), dtype=torch.long)  # pad id 0 on the right: masked out
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, b in enumerate(batch):
            ids[i, : len(b)] = torch.tensor(b)
            mask[i, : len(b)] = 1
        labels = ids.masked_fill(mask == 0, -100)
        # Cosine decay after a short linear warmup: the usual recipe, robust across model sizes.
        lr = recipe.lr * min(1.0, step / warmup) * 0.5 * (1 + math.cos(math.pi * (step - 1) / recipe.steps))
        for g in opt.param_groups:
            g["lr"] = lr
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss_ema = loss.item() if loss_ema is None else 0.9 * loss_ema + 0.1 * loss.item()
        if step % 20 == 0 or step == recipe.steps:
            reporter.progress(stage, step, recipe.steps)
            reporter.metric(f"{stage}/loss", loss_ema, step)
            if reporter.should_stop():
                model.eval()
                return {"steps": step, "final_loss": loss_ema, "seconds": time.time() - t0, "stopped": True}
    model.eval()
    return {"steps": step, "final_loss": loss_ema, "seconds": round(time.time() - t0, 2)}
