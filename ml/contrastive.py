"""Contrastive decoding (CD) between an aligned weak model pi_post and its base pi_pre, batched.

The score at each step is the paper's equation (docs/METHOD.md; ``CDConfig.score_mode`` "formula"):

    lp_post = log_softmax(logits_aligned), lp_pre = log_softmax(logits_base)
    V       = {v : lp_post[v] >= max(lp_post) + log(relative_top)}
    score_v = lp_post[v] - (1 - alpha) * lp_pre[v]  for v in V, -inf elsewhere

or the reference code's numbers (score_mode "reference": lp_pre outside V set to -1e-3 and log-softmaxed again
first), then transformers' own repetition-penalty / temperature / top-p processors and sampling (or argmax).

Where the reference decodes one prompt at a time, this module decodes a batch: prompts are sorted by
length (less padding), LEFT padded, and fed with explicit position ids (GPT-2 style absolute positions
would otherwise count the pads). Each model keeps its own KV cache. Rows that reach EOS are dropped
from the batch (their cache rows too) once enough of them have finished, so finished rows stop costing
compute. Refilling freed rows with new prompts (continuous batching) needs ragged per-row cache lengths,
which DynamicCache does not have: that is the compiled path's job (ml.cd_compiled, ``CDConfig.compile``),
which calls the same per-step arithmetic (``processed_scores``, ``pick_next``).

Token accounting: ``Generation.token_ids`` holds the generated ids up to and INCLUDING the EOS that
ended the row (so a training step that appends EOS sees the same sequence); ``Generation.text`` is the
decoded text without special tokens, truncated at the first stop string.
"""

from __future__ import annotations

import hashlib
import inspect
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

# CDConfig lives in ml.cd_config and the prompt helpers in ml.cd_prompts (this module would otherwise pass the
# 500-line limit); the explicit "as" re-exports keep ``from ml.contrastive import CDConfig, encode_prompt, ...``
# working, for mypy's no_implicit_reexport too.
from ml.cd_config import REPETITION_PENALTY_SCOPES as REPETITION_PENALTY_SCOPES
from ml.cd_config import CDConfig as CDConfig
from ml.cd_prompts import check_weak_pair as check_weak_pair
from ml.cd_prompts import context_limit as context_limit
from ml.cd_prompts import encode_prompt as encode_prompt
from ml.cd_prompts import encode_response as encode_response
from ml.cd_prompts import eos_ids_of as eos_ids_of
from ml.cd_prompts import model_vocab_size as model_vocab_size
from ml.modeling import pad_batch
from ml.reporter import Reporter, or_null

if TYPE_CHECKING:  # transformers is imported lazily at run time (keeps `import ml.contrastive` light)
    from transformers import DynamicCache
    from transformers.generation.logits_process import LogitsProcessor

STAGE = "cd_generate"


@dataclass(frozen=True)
class ImplicitReward:
    """log pi_post - log pi_pre of the generated tokens (full softmax, temperature 1), summed and averaged."""

    sum: float
    mean: float
    n_tokens: int

    def as_dict(self) -> dict[str, float | int]:
        return {"sum": self.sum, "mean": self.mean, "n_tokens": self.n_tokens}


@dataclass
class Generation:
    index: int  # position of the prompt in the input list
    prompt: str
    text: str
    token_ids: list[int]  # generated ids, EOS included when it ended the row, no padding
    implicit_reward: ImplicitReward
    token_log_ratios: list[float]  # per generated token: log pi_post - log pi_pre
    finish_reason: str  # "eos", "length" or "stop_string"


# ---------------------------------------------------------------------------------------------------
# The score


def _cd_step(
    logits_aligned: torch.Tensor, logits_base: torch.Tensor, alpha: float, log_rt: float, mode: str = "formula"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scores plus both log-softmaxes (the latter give the implicit reward for free).

    ``mode`` "formula" is the paper's equation; "reference" reproduces the reference code's numbers, whose
    plausibility filter sets pi_pre's log-probs outside the set to -1e-3 (not -inf) and log-softmaxes them again:
    inside the set that subtracts log Z (about log of the vocabulary outside it) from lp_pre, a per-step constant
    that sampling ignores but the repetition penalty does not."""
    lp_post = torch.log_softmax(logits_aligned.float(), dim=-1)
    lp_pre = torch.log_softmax(logits_base.float(), dim=-1)
    threshold = lp_post.max(dim=-1, keepdim=True).values + log_rt
    outside = lp_post < threshold  # the argmax of lp_post always passes (log_rt <= 0), so V is never empty
    if alpha == 1.0:
        score = lp_post
    elif mode == "reference":
        score = lp_post - (1.0 - alpha) * torch.log_softmax(lp_pre.masked_fill(outside, -1e-3), dim=-1)
    else:
        # A base log-prob of exactly -inf would turn the score into +inf (and sampling into NaN); a huge
        # finite floor keeps such a token the favourite without breaking softmax.
        score = lp_post - (1.0 - alpha) * lp_pre.clamp_min(-1e4)
    score = score.masked_fill(outside, float("-inf"))
    return score, lp_post, lp_pre


def cd_scores(
    logits_aligned: torch.Tensor,
    logits_base: torch.Tensor,
    *,
    alpha: float,
    relative_top: float,
    score_mode: str = "formula",
) -> torch.Tensor:
    """Per-step CD scores, shape like the logits ([..., vocab]); -inf outside the plausible set."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if not 0.0 < relative_top <= 1.0:
        raise ValueError(f"relative_top must be in (0, 1], got {relative_top}")
    if logits_aligned.shape != logits_base.shape:
        raise ValueError(f"logits shapes differ: {tuple(logits_aligned.shape)} vs {tuple(logits_base.shape)}")
    return _cd_step(logits_aligned, logits_base, alpha, math.log(relative_top), score_mode)[0]


# ---------------------------------------------------------------------------------------------------
# Seeds


def batch_seed(seed: int, batch_no: int) -> int:
    """A per-batch seed: batch k of a run is reproducible on its own (e.g. when a stage resumes)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{batch_no}".encode()).digest()[:8], "little") >> 1


# ---------------------------------------------------------------------------------------------------
# The decode loop


class _Stepper:
    """Runs one model forward with its own KV cache; resolves kwarg names once (not per step)."""

    def __init__(self, model: Any) -> None:
        from transformers import DynamicCache

        self.model = model
        self._cache_cls = DynamicCache
        params = inspect.signature(model.forward).parameters
        # transformers 5.2x renamed past_key_values -> cache; accept either spelling.
        self.cache_kw = "cache" if "cache" in params else "past_key_values"
        self.extra: dict[str, Any] = {"use_cache": True}
        if "logits_to_keep" in params:
            self.extra["logits_to_keep"] = 1  # only the last position's logits are needed
        self.cache: DynamicCache | None = None  # set by prefill()

    def prefill(self, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        self.cache = self._cache_cls(config=self.model.config)
        out = self.model(
            input_ids=ids, attention_mask=mask, position_ids=pos, **{self.cache_kw: self.cache}, **self.extra
        )
        logits: torch.Tensor = out.logits[:, -1, :]
        return logits

    def step(self, tok: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        out = self.model(
            input_ids=tok, attention_mask=mask, position_ids=pos, **{self.cache_kw: self.cache}, **self.extra
        )
        logits: torch.Tensor = out.logits[:, -1, :]
        return logits

    def keep_rows(self, rows: torch.Tensor) -> None:
        assert self.cache is not None, "keep_rows() before prefill()"
        self.cache.batch_select_indices(rows)


class _Processors:
    """transformers' own processors, built once per call."""

    def __init__(self, config: CDConfig) -> None:
        from transformers.generation.logits_process import (
            RepetitionPenaltyLogitsProcessor,
            TemperatureLogitsWarper,
            TopPLogitsWarper,
        )

        self.rep = (
            RepetitionPenaltyLogitsProcessor(penalty=float(config.repetition_penalty))
            if config.repetition_penalty != 1.0
            else None
        )
        self.warpers: list[LogitsProcessor] = []
        if config.do_sample:
            if config.temperature != 1.0:
                self.warpers.append(TemperatureLogitsWarper(float(config.temperature)))
            if config.top_p < 1.0:
                self.warpers.append(TopPLogitsWarper(float(config.top_p), min_tokens_to_keep=1))


def processed_scores(
    la: torch.Tensor,
    lb: torch.Tensor,
    rep_ids: torch.Tensor | None,
    seen_ids: torch.Tensor,
    procs: _Processors,
    config: CDConfig,
    log_rt: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One decode step's scores after the processors, plus both log-softmaxes: the whole per-step CD
    arithmetic, shared by the eager loop here and the compiled one (ml.cd_compiled), so they cannot drift.

    ``rep_ids``: the ids the repetition penalty sees (None: none yet); ids >= vocab are ignored by
    transformers' processor, which is how both loops pad them. ``seen_ids``: what the warpers get (they
    ignore it: temperature and top-p only look at the scores)."""
    score, lp_post, lp_pre = _cd_step(la, lb, config.alpha, log_rt, config.score_mode)
    if procs.rep is not None and rep_ids is not None:
        score = procs.rep(rep_ids, score)
    if config.do_sample:
        for w in procs.warpers:
            score = w(seen_ids, score)
    return score, lp_post, lp_pre


def pick_next(
    score: torch.Tensor,
    lp_post: torch.Tensor,
    lp_pre: torch.Tensor,
    *,
    do_sample: bool,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(next token per row, its log pi_post - log pi_pre): a sample or the argmax of the scores."""
    if do_sample:
        tok = torch.multinomial(torch.softmax(score, dim=-1), 1, generator=generator).squeeze(1)
    else:
        tok = score.argmax(dim=-1)
    tk = tok.unsqueeze(1)
    return tok, (lp_post.gather(1, tk) - lp_pre.gather(1, tk)).squeeze(1)


@dataclass
class _Row:
    index: int
    prompt: str
    ids: list[int]


def _decode_batch(
    rows: list[_Row],
    a: _Stepper,
    b: _Stepper,
    procs: _Processors,
    config: CDConfig,
    eos: torch.Tensor,
    pad_id: int,
    vocab: int,
    device: torch.device,
    generator: torch.Generator | None,
) -> dict[int, tuple[list[int], list[float]]]:
    """Decode one batch; returns {row position in ``rows``: (generated ids, per-token log ratios)}
    with ids cut after the first EOS (unless ignore_eos)."""
    B, T = len(rows), config.max_new_tokens
    P = max(len(r.ids) for r in rows)
    ids, mask = pad_batch([r.ids for r in rows], pad_id, side="left")
    ids, mask = ids.to(device), mask.to(device)
    pos = (mask.cumsum(-1) - 1).clamp_min(0)  # left padding: real tokens count from 0

    # Pre-allocated buffers, sliced per step (no per-step torch.cat).
    attn = torch.ones((B, P + T), dtype=torch.long, device=device)
    attn[:, :P] = mask
    # The repetition penalty sees prompt + generated ids like HF generate does, but pads are mapped to
    # `vocab`, an id the processor drops, so padding never penalises a real token.
    seen = torch.full((B, P + T), vocab, dtype=torch.long, device=device)
    seen[:, :P] = ids.masked_fill(mask == 0, vocab)
    gen = torch.empty((B, T), dtype=torch.long, device=device)
    ratios = torch.empty((B, T), dtype=torch.float32, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    row_of = torch.arange(B, device=device)  # current batch row -> position in `rows`
    next_pos = pos[:, -1] + 1

    # Scope "generated": the penalty sees only the ids after the (padded) prompt; nothing at step 0.
    rep_from = P if config.repetition_penalty_scope == "generated" else 0
    log_rt = math.log(config.relative_top)
    check_every = 1 if device.type == "cpu" else 8  # on GPUs a check is a sync; do it less often
    results: dict[int, tuple[list[int], list[float]]] = {}

    def finish(sel: torch.Tensor, steps: int) -> None:
        toks = gen[sel, :steps].tolist()
        lrs = ratios[sel, :steps].tolist()
        for r, t, lr in zip(row_of[sel].tolist(), toks, lrs):
            results[r] = (t, lr)

    with torch.inference_mode():
        la = a.prefill(ids, mask, pos)
        lb = b.prefill(ids, mask, pos)
        steps = 0
        for t in range(T):
            rep_ids = seen[:, rep_from : P + t] if P + t > rep_from else None
            scored = processed_scores(la, lb, rep_ids, seen[:, : P + t], procs, config, log_rt)
            tok, ratio = pick_next(*scored, do_sample=config.do_sample, generator=generator)
            tk = tok.unsqueeze(1)
            ratios[:, t] = ratio
            gen[:, t] = tok
            seen[:, P + t] = tok
            steps = t + 1
            if steps == T:
                break
            if not config.ignore_eos:
                done |= torch.isin(tok, eos)
                if steps % check_every == 0:
                    n_done = int(done.sum())
                    if n_done == done.numel():
                        break
                    # Drop finished rows once a quarter of the batch is done: the index copies of both
                    # caches cost about one step, so doing it for every single finished row would not pay.
                    if n_done and n_done * 4 >= done.numel():
                        finish(done, steps)
                        keep = (~done).nonzero().squeeze(1)
                        a.keep_rows(keep)
                        b.keep_rows(keep)
                        attn, seen, gen, ratios = attn[keep], seen[keep], gen[keep], ratios[keep]
                        next_pos, row_of, tok = next_pos[keep], row_of[keep], tok[keep]
                        done = done[keep]
                        tk = tok.unsqueeze(1)
            cur = attn[:, : P + t + 1]
            npos = next_pos.unsqueeze(1)
            la = a.step(tk, cur, npos)
            lb = b.step(tk, cur, npos)
            next_pos = next_pos + 1
        finish(torch.ones_like(done), steps)

    eos_set = set(eos.tolist())
    out: dict[int, tuple[list[int], list[float]]] = {}
    for r, (toks, lrs) in results.items():
        if not config.ignore_eos:
            for j, tid in enumerate(toks):
                if tid in eos_set:
                    toks, lrs = toks[: j + 1], lrs[: j + 1]
                    break
        out[r] = (toks, lrs)
    return out


def decode_response(tokenizer: Any, toks: list[int], stop_strings: list[str]) -> tuple[list[int], str, bool]:
    """(ids, text, stopped): text without special tokens; with a stop string in it, the ids are cut to the
    shortest prefix whose text holds one and the text just before it, so ids, text and any per-token
    reward describe the same response."""
    text = tokenizer.decode(toks, skip_special_tokens=True)
    if not stop_strings or not any(s in text for s in stop_strings):
        return list(toks), text, False
    for k in range(1, len(toks) + 1):
        piece = tokenizer.decode(toks[:k], skip_special_tokens=True)
        hits = [piece.find(s) for s in stop_strings if s in piece]
        if hits:
            return list(toks[:k]), piece[: min(hits)], True
    return list(toks), text, False  # not reached: the full text holds a stop string


def _finalize(
    row: _Row, toks: list[int], lrs: list[float], tokenizer: Any, config: CDConfig, eos_set: set[int]
) -> Generation:
    reason = "eos" if toks and toks[-1] in eos_set and not config.ignore_eos else "length"
    toks, text, stopped = decode_response(tokenizer, toks, config.stop_strings)
    if stopped:
        reason, lrs = "stop_string", lrs[: len(toks)]
    n = len(toks)
    total = float(sum(lrs))
    return Generation(
        index=row.index,
        prompt=row.prompt,
        text=text,
        token_ids=list(toks),
        implicit_reward=ImplicitReward(sum=total, mean=total / n if n else 0.0, n_tokens=n),
        token_log_ratios=[float(x) for x in lrs],
        finish_reason=reason,
    )


def prepare_rows(tokenizer: Any, prompts: list[str], config: CDConfig, limit: int | None = None) -> list[_Row]:
    rows: list[_Row] = []
    for i, p in enumerate(prompts):
        ids = encode_prompt(tokenizer, p, use_chat_template=config.use_chat_template)
        if config.max_prompt_tokens is not None:
            ids = ids[-config.max_prompt_tokens :]
        if limit is not None and len(ids) + config.max_new_tokens > limit:
            raise ValueError(
                f"prompt {i} has {len(ids)} tokens; with max_new_tokens={config.max_new_tokens} that exceeds "
                f"the model's context of {limit} positions; lower max_new_tokens or set max_prompt_tokens"
            )
        rows.append(_Row(index=i, prompt=p, ids=ids))
    return rows


def contrastive_generate(
    *,
    aligned: Any,
    base: Any,
    tokenizer: Any,
    prompts: list[str],
    config: CDConfig,
    reporter: Reporter | None = None,
    base_tokenizer: Any = None,
) -> list[Generation]:
    """CD generations for ``prompts`` in input order (only the finished ones if should_stop() fired).

    aligned is pi_post, base is pi_pre. ``base_tokenizer``, when given, is checked to share the
    tokenizer's vocabulary. Batch k samples from its own generator seeded by (config.seed, k), so the
    same prompts, config and models give the same output whatever else uses torch's global RNG.
    """
    if isinstance(prompts, str):
        raise ValueError("prompts must be a list of strings, not one string")
    rep = or_null(reporter)
    check_weak_pair(aligned, base, tokenizer, base_tokenizer)
    device = next(aligned.parameters()).device
    vocab = model_vocab_size(aligned)
    limits = [x for x in (context_limit(aligned), context_limit(base)) if x]
    rows = prepare_rows(tokenizer, list(prompts), config, limit=min(limits) if limits else None)
    eos_list = eos_ids_of(aligned, tokenizer)
    if not eos_list and not config.ignore_eos:
        raise ValueError("the tokenizer has no EOS token; set ignore_eos=True to generate fixed lengths")
    eos = torch.tensor(eos_list or [-1], dtype=torch.long, device=device)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos_list or [0])[0]
    if config.compile != "off":
        from ml.cd_compiled import compiled_generate, use_compiled

        if use_compiled(config.compile, aligned, base, rep):
            return compiled_generate(aligned, base, tokenizer, rows, config, eos_list, int(pad_id), reporter=rep)
    a, b, procs = _Stepper(aligned), _Stepper(base), _Processors(config)

    # Longest first: batches of similar length waste little on padding, and memory peaks show up early.
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i].ids))
    batches = [[rows[i] for i in order[s : s + config.batch_size]] for s in range(0, len(order), config.batch_size)]
    out: list[Generation] = []
    done_count = 0
    for k, batch in enumerate(batches):
        gen: torch.Generator | None = None
        if config.do_sample:
            gen = torch.Generator(device=device)
            gen.manual_seed(batch_seed(config.seed, k))
        decoded = _decode_batch(batch, a, b, procs, config, eos, int(pad_id), vocab, device, gen)
        for j, row in enumerate(batch):
            toks, lrs = decoded[j]
            out.append(_finalize(row, toks, lrs, tokenizer, config, set(eos_list)))
        done_count += len(batch)
        rep.progress(STAGE, done_count, len(rows))
        if done_count < len(rows) and rep.should_stop():
            rep.log(f"{STAGE}: stopped after {done_count} of {len(rows)} prompts")
            break
    out.sort(key=lambda g: g.index)
    return out
