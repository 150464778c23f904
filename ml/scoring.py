"""Teacher-forced scoring: response log-probs, implicit rewards log pi_post - log pi_pre, and a local
reward-model judge.

Tokenization boundary (the same as generation's): the prompt is encoded with
``ml.contrastive.encode_prompt`` (chat template optional), the response separately with
``encode_response`` (no special tokens), and the two id lists are concatenated. Generation appends
its tokens to exactly those prompt ids, so the reward of a generated response scored here differs
from ``Generation.implicit_reward`` only where decode -> re-encode of the text does not round-trip
(and by the EOS token, which a generation includes when it stopped there: pass ``append_eos=True``
to score it too).

Batches are LEFT padded with explicit position ids, as in generation, so only the last
``max(response length) + 1`` positions need logits (``logits_to_keep``): scoring long prompts with a
large vocabulary would otherwise materialise batch x length x vocab floats.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch

from ml.contrastive import check_weak_pair, context_limit, encode_prompt, encode_response
from ml.gold import GoldReward
from ml.modeling import pad_batch


def _device_of(model: Any) -> torch.device:
    device: torch.device = next(model.parameters()).device
    return device


def _fit(p: list[int], r: list[int], limit: int | None) -> tuple[list[int], list[int]]:
    """Over the context limit the prompt loses its start first, then the response its end."""
    if limit is None or len(p) + len(r) <= limit:
        return p, r
    keep_p = max(1, limit - len(r))
    p = p[-keep_p:]
    return p, r[: limit - len(p)]


def encode_pairs(
    tokenizer: Any,
    prompts: list[str],
    responses: list[str],
    *,
    use_chat_template: bool = False,
    append_eos: bool = False,
) -> list[tuple[list[int], list[int]]]:
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses; they must pair up")
    eos = tokenizer.eos_token_id
    if append_eos and eos is None:
        raise ValueError("append_eos=True but the tokenizer has no EOS token")
    out: list[tuple[list[int], list[int]]] = []
    for p, r in zip(prompts, responses):
        rid = encode_response(tokenizer, r) + ([int(eos)] if append_eos else [])
        out.append((encode_prompt(tokenizer, p, use_chat_template=use_chat_template), rid))
    return out


def token_logprobs_from_ids(
    model: Any, pairs: list[tuple[list[int], list[int]]], *, batch_size: int = 16, pad_id: int = 0
) -> list[list[float]]:
    """log p(response token | prefix) for every response token of every (prompt_ids, response_ids)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if any(len(r) > 0 and len(p) == 0 for p, r in pairs):
        # The first response token is predicted from the position before it; with no prompt there is none,
        # and the batch would read a pad position's (alone: the next token's) logits instead.
        raise ValueError("a pair has response ids but no prompt ids (encode_prompt starts an empty prompt at BOS)")
    device = _device_of(model)
    limit = context_limit(model)
    pairs = [_fit(list(p), list(r), limit) for p, r in pairs]
    params = inspect.signature(model.forward).parameters
    out: list[list[float]] = [[] for _ in pairs]  # every row is set below (empty responses stay [])
    # Similar lengths together: less padding.
    order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
    with torch.inference_mode():
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            seqs = [pairs[i][0] + pairs[i][1] for i in idx]
            R = max(len(pairs[i][1]) for i in idx)
            if R == 0:
                for i in idx:
                    out[i] = []
                continue
            ids, mask = pad_batch(seqs, pad_id, side="left")
            pos = (mask.cumsum(-1) - 1).clamp_min(0)
            kw = {"logits_to_keep": R + 1} if "logits_to_keep" in params else {}
            logits = model(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                position_ids=pos.to(device),
                use_cache=False,
                **kw,
            ).logits
            logits = logits[:, -(R + 1) :]  # position k of this slice is sequence position L - R - 1 + k
            for j, i in enumerate(idx):
                r = pairs[i][1]
                if not r:
                    out[i] = []
                    continue
                # Response token t sits at L - len(r) + t and is predicted one position earlier.
                start = R - len(r)
                lp = torch.log_softmax(logits[j, start : start + len(r)].float(), dim=-1)
                tgt = torch.tensor(r, dtype=torch.long, device=lp.device).unsqueeze(1)
                out[i] = lp.gather(1, tgt).squeeze(1).tolist()
    return out


def token_logprobs(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    responses: list[str],
    *,
    batch_size: int = 16,
    use_chat_template: bool = False,
    append_eos: bool = False,
) -> list[list[float]]:
    pairs = encode_pairs(tokenizer, prompts, responses, use_chat_template=use_chat_template, append_eos=append_eos)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return token_logprobs_from_ids(model, pairs, batch_size=batch_size, pad_id=int(pad))


def sequence_logprobs(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    responses: list[str],
    *,
    batch_size: int = 16,
    use_chat_template: bool = False,
    append_eos: bool = False,
) -> list[float]:
    """Per pair: sum of log p(response token | prompt, earlier response tokens)."""
    return [
        float(sum(x))
        for x in token_logprobs(
            model,
            tokenizer,
            prompts,
            responses,
            batch_size=batch_size,
            use_chat_template=use_chat_template,
            append_eos=append_eos,
        )
    ]


def _reward_dicts(lp_a: list[list[float]], lp_b: list[list[float]]) -> list[dict[str, float | int]]:
    out: list[dict[str, float | int]] = []
    for a, b in zip(lp_a, lp_b):
        diff = [x - y for x, y in zip(a, b)]
        n = len(diff)
        total = float(sum(diff))
        out.append({"sum": total, "mean": total / n if n else 0.0, "n_tokens": n})
    return out


def implicit_rewards_from_ids(
    *, aligned: Any, base: Any, pairs: list[tuple[list[int], list[int]]], batch_size: int = 16, pad_id: int = 0
) -> list[dict[str, float | int]]:
    lp_a = token_logprobs_from_ids(aligned, pairs, batch_size=batch_size, pad_id=pad_id)
    lp_b = token_logprobs_from_ids(base, pairs, batch_size=batch_size, pad_id=pad_id)
    return _reward_dicts(lp_a, lp_b)


def implicit_rewards(
    *,
    aligned: Any,
    base: Any,
    tokenizer: Any,
    prompts: list[str],
    responses: list[str],
    batch_size: int = 16,
    use_chat_template: bool = False,
    append_eos: bool = False,
    base_tokenizer: Any = None,
) -> list[dict[str, float | int]]:
    """Per pair {"sum", "mean", "n_tokens"} of log pi_post - log pi_pre over the response tokens
    (aligned = pi_post, base = pi_pre; mean is 0.0 for an empty response)."""
    check_weak_pair(aligned, base, tokenizer, base_tokenizer)
    pairs = encode_pairs(tokenizer, prompts, responses, use_chat_template=use_chat_template, append_eos=append_eos)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return implicit_rewards_from_ids(aligned=aligned, base=base, pairs=pairs, batch_size=batch_size, pad_id=int(pad))


class RewardModelJudge:
    """A local reward model (an ``AutoModelForSequenceClassification`` folder with one output) as a judge.

    Text layout: with a chat template (and ``use_chat_template``) the pair is rendered as a user and an
    assistant message; otherwise prompt ids + response ids, as everywhere else in ``ml``. Batches are
    left padded so the model's "last non-pad token" pooling lands on the last real token.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        device: str | None = None,
        dtype: str | None = None,
        batch_size: int = 16,
        use_chat_template: bool = True,
    ) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from ml.modeling import pick_device, pick_dtype

        path = Path(path)
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"{path} is not a Hugging Face model folder (no config.json)")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.path, self.batch_size, self.use_chat_template = str(path), batch_size, use_chat_template
        self.device = pick_device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = (
            AutoModelForSequenceClassification.from_pretrained(
                str(path), dtype=pick_dtype(self.device, dtype), trust_remote_code=False
            )
            .to(self.device)
            .eval()
        )
        if self.model.config.num_labels != 1:
            raise ValueError(
                f"{path} has {self.model.config.num_labels} outputs; a reward model needs exactly one (num_labels=1)"
            )
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id

    def _encode(self, prompt: str, response: str) -> list[int]:
        tok = self.tokenizer
        if self.use_chat_template and getattr(tok, "chat_template", None):
            text = tok.apply_chat_template(
                [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}], tokenize=False
            )
            ids = list(tok(text, add_special_tokens=False)["input_ids"])
        else:
            ids = encode_prompt(tok, prompt, use_chat_template=False) + encode_response(tok, response)
        limit = context_limit(self.model)
        return ids[-limit:] if limit else ids

    def score_batch(self, prompts: list[str], responses: list[str]) -> list[float]:
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses; they must pair up")
        seqs = [self._encode(p, r) for p, r in zip(prompts, responses)]
        pad = int(self.model.config.pad_token_id)
        out: list[float] = [0.0] * len(seqs)
        order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
        with torch.inference_mode():
            for s in range(0, len(order), self.batch_size):
                idx = order[s : s + self.batch_size]
                ids, mask = pad_batch([seqs[i] for i in idx], pad, side="left")
                pos = (mask.cumsum(-1) - 1).clamp_min(0)
                logits = self.model(
                    input_ids=ids.to(self.device), attention_mask=mask.to(self.device), position_ids=pos.to(self.device)
                ).logits
                for j, i in enumerate(idx):
                    out[i] = float(logits[j, 0])
        return out

    def __call__(self, prompt: str, response: str) -> float:
        return self.score_batch([prompt], [response])[0]

    def as_gold(self, name: str | None = None) -> GoldReward:
        return GoldReward(name=name or f"rm:{self.path}", score=self)
