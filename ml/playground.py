"""Token streaming for the playground: one prompt, decoded a token at a time, text handed on as it is made.

``stream`` yields events while it decodes: a ``Delta`` (the text the newest token added) after every token, then
one ``Finish`` (the whole response, its ids and why it ended). Three modes:

- ``"model"``: one model on its own (a trained strong model), with the same processors as plain sampling
  (transformers' repetition penalty, temperature, top-p on the raw logits, as ``model.generate`` applies them);
- ``"plain"``: the same loop on pi_post (the weak pair's plain side);
- ``"cd"``: contrastive decoding of pi_post against pi_pre through ml.contrastive's own per-step functions
  (``processed_scores``, ``pick_next``), so the arithmetic is the batch path's and cannot drift from it.

``side_by_side`` interleaves CD and plain pi_post for the same prompt, one token of each in turn, so a page fills
both columns together. Greedy output equals the batch paths' (contrastive_generate, ml.stages.generate's
plain_generate) token for token; a sampled CD stream draws from a generator seeded like contrastive_generate's
first batch, so it equals that too.

Text: the ids are decoded incrementally (a window of the last two token boundaries, as text-generation-inference
does): a delta is emitted only once the new text no longer ends in an incomplete character (U+FFFD), so a
character made of several byte tokens arrives whole. ``Finish.text`` is the response as the batch paths decode
it (cut at a stop string when one appears): the authoritative text, which the deltas add up to when no stop
string cut it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from ml.contrastive import (
    CDConfig,
    _Processors,
    _Stepper,
    batch_seed,
    check_weak_pair,
    context_limit,
    decode_response,
    eos_ids_of,
    pick_next,
    prepare_rows,
    processed_scores,
)

Mode = Literal["model", "plain", "cd"]
MODES: tuple[str, ...] = ("model", "plain", "cd")
REPLACEMENT = "\ufffd"  # what a decoder shows for the first bytes of a character that is not complete yet


@dataclass(frozen=True)
class Delta:
    stream: str
    text: str

    def as_dict(self) -> dict[str, Any]:
        return {"type": "delta", "stream": self.stream, "text": self.text}


@dataclass(frozen=True)
class Finish:
    stream: str
    text: str
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str = "length"  # "eos", "length" or "stop_string", as in ml.contrastive.Generation

    def as_dict(self) -> dict[str, Any]:
        return {
            "type": "finish",
            "stream": self.stream,
            "text": self.text,
            "n_tokens": len(self.token_ids),
            "finish_reason": self.finish_reason,
        }


Event = Delta | Finish


class IncrementalText:
    """The text each new token adds: decodes only the window since the previous emitted boundary (not the whole
    response every step), and holds text back while it ends in an incomplete character."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix_offset = 0  # start of the window: one emitted token of context before ...
        self.read_offset = 0  # ... the ids whose text was not emitted yet

    def push(self, token_id: int) -> str:
        self.ids.append(int(token_id))
        dec = self.tokenizer.decode
        before: str = dec(self.ids[self.prefix_offset : self.read_offset], skip_special_tokens=True)
        now: str = dec(self.ids[self.prefix_offset :], skip_special_tokens=True)
        if len(now) > len(before) and not now.endswith(REPLACEMENT) and now.startswith(before):
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            return now[len(before) :]
        return ""


def _prompt_ids(tokenizer: Any, prompt: str, config: CDConfig, models: list[Any]) -> list[int]:
    """The prompt's ids as the batch paths encode them, with their check that prompt + max_new_tokens fits."""
    limits = [x for x in (context_limit(m) for m in models) if x]
    return prepare_rows(tokenizer, [prompt], config, limit=min(limits) if limits else None)[0].ids


def _eos(model: Any, tokenizer: Any, config: CDConfig) -> set[int]:
    eos = eos_ids_of(model, tokenizer)
    if not eos and not config.ignore_eos:
        raise ValueError("the tokenizer has no EOS token; set ignore_eos=True to generate fixed lengths")
    return set() if config.ignore_eos else set(eos)


def _generator(config: CDConfig, device: torch.device) -> torch.Generator | None:
    if not config.do_sample:
        return None
    gen = torch.Generator(device=device)
    gen.manual_seed(batch_seed(config.seed, 0))  # contrastive_generate's first batch: one prompt, same draws
    return gen


def _decode_loop(
    name: str,
    steppers: list[_Stepper],
    tokenizer: Any,
    ids: list[int],
    config: CDConfig,
    eos: set[int],
    pick: Any,
) -> Iterator[Event]:
    """The shared loop of every mode: prefill, then per token ``pick(logits per model, rep_ids, seen) -> id``,
    feed it to every model's cache, emit its text; a Finish at EOS or max_new_tokens."""
    device = next(steppers[0].model.parameters()).device
    P, T = len(ids), config.max_new_tokens
    rep_from = P if config.repetition_penalty_scope == "generated" else 0
    text = IncrementalText(tokenizer)
    out: list[int] = []
    reason = "length"
    # Inference mode is entered per step, never held across a yield: it is thread-local state, and a generator
    # suspended inside it would leave it on for the caller, or (two interleaved streams) switch it off under the
    # other stream's feet when one of them ends.
    with torch.inference_mode():
        seen = torch.empty((1, P + T), dtype=torch.long, device=device)
        seen[0, :P] = torch.tensor(ids, dtype=torch.long)
        attn = torch.ones((1, P + T), dtype=torch.long, device=device)
        pos = torch.arange(P, device=device).unsqueeze(0)
        logits = [s.prefill(seen[:, :P], attn[:, :P], pos) for s in steppers]
    for t in range(T):
        with torch.inference_mode():
            rep_ids = seen[:, rep_from : P + t] if P + t > rep_from else None
            tok = int(pick(logits, rep_ids, seen[:, : P + t]))
            seen[0, P + t] = tok
        out.append(tok)
        piece = text.push(tok)
        if piece:
            yield Delta(name, piece)
        if tok in eos:
            reason = "eos"
            break
        if config.stop_strings and _has_stop(tokenizer, out, config.stop_strings):
            break
        if t + 1 == T:
            break
        with torch.inference_mode():
            tk = seen[:, P + t : P + t + 1]
            npos = torch.tensor([[P + t]], device=device)
            logits = [s.step(tk, attn[:, : P + t + 1], npos) for s in steppers]
    toks, final, stopped = decode_response(tokenizer, out, config.stop_strings)
    yield Finish(name, final, toks, "stop_string" if stopped else reason)


def _has_stop(tokenizer: Any, ids: list[int], stop_strings: list[str]) -> bool:
    text: str = tokenizer.decode(ids, skip_special_tokens=True)
    return any(s in text for s in stop_strings)


def _single(model: Any, tokenizer: Any, prompt: str, config: CDConfig, name: str) -> Iterator[Event]:
    procs = _Processors(config)
    ids = _prompt_ids(tokenizer, prompt, config, [model])
    eos = _eos(model, tokenizer, config)
    gen = _generator(config, next(model.parameters()).device)

    def pick(logits: list[torch.Tensor], rep_ids: torch.Tensor | None, seen: torch.Tensor) -> int:
        # Plain sampling's one definition (ml.plain_sampling: CD at alpha 1): log-probs, the repetition penalty, then
        # the warpers, then sample or argmax.
        score = torch.log_softmax(logits[0].float(), dim=-1)
        if procs.rep is not None and rep_ids is not None:
            score = procs.rep(rep_ids, score)
        if not config.do_sample:
            return int(score.argmax(dim=-1))
        for w in procs.warpers:
            score = w(seen, score)
        return int(torch.multinomial(torch.softmax(score, dim=-1), 1, generator=gen))

    return _decode_loop(name, [_Stepper(model)], tokenizer, ids, config, eos, pick)


def _cd(aligned: Any, base: Any, tokenizer: Any, prompt: str, config: CDConfig, name: str) -> Iterator[Event]:
    check_weak_pair(aligned, base, tokenizer)
    procs, log_rt = _Processors(config), math.log(config.relative_top)
    ids = _prompt_ids(tokenizer, prompt, config, [aligned, base])
    eos = _eos(aligned, tokenizer, config)
    gen = _generator(config, next(aligned.parameters()).device)

    def pick(logits: list[torch.Tensor], rep_ids: torch.Tensor | None, seen: torch.Tensor) -> int:
        scored = processed_scores(logits[0], logits[1], rep_ids, seen, procs, config, log_rt)
        tok, _ = pick_next(*scored, do_sample=config.do_sample, generator=gen)
        return int(tok[0])

    return _decode_loop(name, [_Stepper(aligned), _Stepper(base)], tokenizer, ids, config, eos, pick)


def stream(
    *,
    model: Any,
    tokenizer: Any,
    prompt: str,
    config: CDConfig,
    mode: Mode = "model",
    base: Any = None,
) -> Iterator[Event]:
    """Events for one response to ``prompt``: Deltas as tokens are made, then one Finish. ``model`` is the model
    to sample ("model", "plain") or pi_post ("cd", which also needs ``base``, pi_pre). Settings are checked (and
    a prompt that does not fit the context refused) before the first event."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "cd":
        if base is None:
            raise ValueError("contrastive decoding needs the weak base model (pi_pre) as base")
        return _cd(model, base, tokenizer, prompt, config, mode)
    return _single(model, tokenizer, prompt, config, mode)


def side_by_side(*, aligned: Any, base: Any, tokenizer: Any, prompt: str, config: CDConfig) -> Iterator[Event]:
    """CD ("cd") and plain pi_post ("plain") for the same prompt and settings, one token of each in turn (a
    stream that finished first lets the other run on alone). Both streams are set up, and checked, first."""
    streams = [
        stream(model=aligned, base=base, tokenizer=tokenizer, prompt=prompt, config=config, mode="cd"),
        stream(model=aligned, tokenizer=tokenizer, prompt=prompt, config=config, mode="plain"),
    ]
    return _interleave(streams)


def _interleave(streams: list[Iterator[Event]]) -> Iterator[Event]:
    live = list(streams)
    try:
        while live:
            for s in list(live):
                # Up to and including the next token's Delta (a token that adds no text yet yields none, so a
                # stream advances by whole tokens only when it has something to show).
                for ev in s:
                    yield ev
                    if isinstance(ev, Delta):
                        break
                else:
                    live.remove(s)
    finally:
        for s in streams:
            close = getattr(s, "close", None)
            if close is not None:
                close()
