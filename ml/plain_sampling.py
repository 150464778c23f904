"""Plain sampling from one model, defined once: CD at alpha = 1, without the second model.

CD at alpha = 1 scores a token by log pi_post, then applies the repetition penalty (on those log-probs, over the
prompt and generated ids or the generated ids only, never the padding), temperature and top-p (ml.contrastive).
``model.generate`` would apply the penalty to raw logits instead (positive ones divided, negative multiplied: not
the same distribution) and would count left-padding ids as seen. So every plain sample in congweb (the
``plain_generate`` stage: WeakSFT/WSPO/AuxConf data and each pair's plain side; the pre-flight diagnostic's pi_pre
and pi_post samples; the toy report's sweep) goes through ``sample_plain``, which hands ``generate`` the CD loop's
own chain: log-softmax first, then the penalty with each row's padding ignored, then the warpers. Greedy tokens
equal ``contrastive_generate`` at alpha = 1 (tests/ml/test_plain_sampling.py).
"""

from __future__ import annotations

from typing import Any

import torch

from ml.cd_config import CDConfig
from ml.contrastive import _Processors, context_limit, decode_response, encode_prompt, eos_ids_of


class _LogSoftmax:
    """A LogitsProcessor turning the raw logits into log-probs, as CD's score is at alpha = 1."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(scores.float(), dim=-1)


def _processors(sp: CDConfig, ignore: int | torch.Tensor) -> Any:
    from transformers import LogitsProcessorList
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    chain: list[Any] = [_LogSoftmax()]
    if sp.repetition_penalty != 1.0:
        chain.append(
            RepetitionPenaltyLogitsProcessor(penalty=float(sp.repetition_penalty), prompt_ignore_length=ignore)
        )
    if sp.do_sample:
        chain += _Processors(sp).warpers
    return LogitsProcessorList(chain)


def sample_plain(
    model: Any, tokenizer: Any, prompts: list[str], sp: CDConfig, *, seed: int
) -> tuple[list[tuple[list[int], str, str]], list[list[int]]]:
    """One response per prompt: ([(token ids, text, finish_reason "eos" | "length" | "stop_string")], the prompts'
    token ids). Seeded by ``seed`` through a forked RNG, so nobody else's random stream moves."""
    eos = eos_ids_of(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    limit = context_limit(model)
    ids_list = []
    for p in prompts:
        ids = encode_prompt(tokenizer, p, use_chat_template=sp.use_chat_template)
        if sp.max_prompt_tokens is not None:
            ids = ids[-sp.max_prompt_tokens :]
        if limit is not None and len(ids) + sp.max_new_tokens > limit:
            raise ValueError(
                f"a prompt of {len(ids)} tokens plus max_new_tokens={sp.max_new_tokens} exceeds "
                f"the model's {limit} positions; lower max_new_tokens or set max_prompt_tokens"
            )
        ids_list.append(ids)
    P = max(len(x) for x in ids_list)
    input_ids = torch.full((len(prompts), P), pad, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for j, ids in enumerate(ids_list):
        input_ids[j, P - len(ids) :] = torch.tensor(ids)
        mask[j, P - len(ids) :] = 1
    # The penalty sees each row's prompt and generated ids ("all") or the generated ids only, never the padding.
    ignore: int | torch.Tensor = (
        P if sp.repetition_penalty_scope == "generated" else torch.tensor([P - len(x) for x in ids_list])
    )
    kw: dict[str, Any] = dict(
        max_new_tokens=sp.max_new_tokens,
        do_sample=sp.do_sample,
        pad_token_id=pad,
        eos_token_id=eos,
        # generate's own processors off: the whole chain is ours, in CD's order.
        repetition_penalty=1.0,
        logits_processor=_processors(sp, ignore),
    )
    if sp.do_sample:
        kw.update(temperature=1.0, top_p=1.0, top_k=0)
    if sp.ignore_eos:
        kw["min_new_tokens"] = sp.max_new_tokens
    dev = next(model.parameters()).device
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(seed)
        with torch.inference_mode():
            out = model.generate(input_ids=input_ids.to(dev), attention_mask=mask.to(dev), **kw)
    results = []
    for ids in out[:, P:].tolist():
        finish = "length"
        if not sp.ignore_eos:
            for n, t in enumerate(ids):
                if t in eos:
                    ids, finish = ids[: n + 1], "eos"
                    break
        ids, text, stopped = decode_response(tokenizer, ids, sp.stop_strings)
        results.append((ids, text, "stop_string" if stopped else finish))
    return results, ids_list
