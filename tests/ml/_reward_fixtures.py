"""A tiny reward model whose scores are known: GPT2ForSequenceClassification (one label) over a word tokenizer, with
the block's outputs zeroed and no position embedding, so the head reads the last token's embedding alone. Each
word's embedding is ``s * (e0 - e1) + (e2 - e3)``: after the final layer norm the score rises strictly with ``s``,
so a response ending in a word with a higher ``s`` scores higher (the assertions can be about order, not floats)."""

from __future__ import annotations

from pathlib import Path

import torch


def save_reward_model(path: Path, words: list[str], word_scores: dict[str, float], *, num_labels: int = 1) -> Path:
    from transformers import GPT2Config, GPT2ForSequenceClassification

    from ml.tiny import word_tokenizer

    tok = word_tokenizer(words)
    cfg = GPT2Config(
        vocab_size=len(tok),
        n_positions=1024,  # GPT-2's own, as the other tiny test models (job budgets fit)
        n_embd=8,
        n_layer=1,
        n_head=1,
        num_labels=num_labels,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    model = GPT2ForSequenceClassification(cfg).eval()
    with torch.no_grad():
        for block in model.transformer.h:  # the residual stream stays the token's own embedding
            for proj in (block.attn.c_proj, block.mlp.c_proj):
                proj.weight.zero_()
                proj.bias.zero_()
        model.transformer.wpe.weight.zero_()
        wte = model.transformer.wte.weight
        wte.zero_()
        wte[:, 2] = 1.0
        wte[:, 3] = -1.0
        vocab = tok.get_vocab()
        for word, s in word_scores.items():
            wte[vocab[word], 0] = s
            wte[vocab[word], 1] = -s
        model.transformer.ln_f.weight.fill_(1.0)
        model.transformer.ln_f.bias.zero_()
        model.score.weight.zero_()
        model.score.weight[:, 0] = 1.0
        model.score.weight[:, 1] = -1.0
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path
