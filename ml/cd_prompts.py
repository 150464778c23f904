"""Prompt ids and weak-pair checks for contrastive decoding, shared by generation (ml.contrastive, ml.cd_compiled)
and scoring (ml.scoring).

Split out of ml.contrastive to keep that module under the project's 500-line limit; ml.contrastive re-exports
every name, so ``from ml.contrastive import encode_prompt`` keeps working.
"""

from __future__ import annotations

from typing import Any

from ml.modeling import check_same_vocab, context_of


def encode_prompt(tokenizer: Any, prompt: str, *, use_chat_template: bool) -> list[int]:
    """Prompt ids exactly as generation sees them; scoring uses the same function, then appends the
    separately tokenized response, so rewards and generations agree on the prompt/response boundary."""
    if use_chat_template and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])  # the template has its specials
    else:
        ids = list(tokenizer(prompt)["input_ids"])
    if not ids:
        # An empty prompt still needs one position to predict from; BOS is what it means.
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        if start is None:
            raise ValueError("empty prompt and the tokenizer has neither a BOS nor an EOS token to start from")
        ids = [int(start)]
    return ids


def encode_response(tokenizer: Any, response: str) -> list[int]:
    return list(tokenizer(response, add_special_tokens=False)["input_ids"])


def model_vocab_size(model: Any) -> int:
    return (
        int(model.get_output_embeddings().weight.shape[0])
        if model.get_output_embeddings() is not None
        else int(model.config.vocab_size)
    )


def check_weak_pair(aligned: Any, base: Any, tokenizer: Any, base_tokenizer: Any = None) -> None:
    """CD compares logits id by id: same token->id map and same output size, or a clear ValueError."""
    if base_tokenizer is not None:
        check_same_vocab(tokenizer, base_tokenizer)
    va, vb = model_vocab_size(aligned), model_vocab_size(base)
    if va != vb:
        raise ValueError(
            f"the weak aligned model has {va} output tokens and the weak base model {vb}; contrastive "
            "decoding needs both from the same family with the same vocabulary; pick another pair"
        )
    if len(tokenizer) > va:
        raise ValueError(
            f"the tokenizer has {len(tokenizer)} tokens but the models only {va} outputs; "
            "use the tokenizer that belongs to these models"
        )
    da, db = next(aligned.parameters()).device, next(base.parameters()).device
    if da != db:
        raise ValueError(f"the weak models are on different devices ({da} and {db}); load both on one")


def eos_ids_of(model: Any, tokenizer: Any) -> list[int]:
    """EOS ids from the tokenizer and the generation config (chat models often have several)."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif gen_eos:
        ids.update(int(i) for i in gen_eos)
    return sorted(ids)


def context_limit(model: Any) -> int | None:
    return context_of(model.config)
