"""Tiny word-level GPT-2 models built in memory: for tests, benchmarks and the toy world.

A word-level ``tokenizers`` tokenizer wrapped as PreTrainedTokenizerFast saves and reloads as a
normal Hugging Face folder, so everything downstream treats toy models like real ones.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]


def word_tokenizer(words: Iterable[str]) -> Any:
    """Whitespace-split word-level tokenizer; specials first so pad=0, bos=1, eos=2, unk=3."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for w in [*SPECIALS, *words]:
        if w not in vocab:
            vocab[w] = len(vocab)
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    # transformers 5's PreTrainedTokenizerFast (TokenizersBackend) has an unannotated __init__.
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=core,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        padding_side="left",
    )


def tiny_gpt2(
    vocab_size: int, *, n_layer: int = 2, n_embd: int = 64, n_head: int = 2, n_positions: int = 128, seed: int = 0
) -> Any:
    """A randomly initialised GPT-2; ids follow ``word_tokenizer``'s specials (transformers 5 wants
    bos/eos/pad set explicitly in small configs)."""
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
    )
    model: Any = GPT2LMHeadModel(cfg)  # Any: PreTrainedModel.eval() is an untyped call
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = 2
    model.generation_config.bos_token_id = 1
    return model.eval()
