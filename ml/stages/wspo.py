"""WSPO baseline (Zhu et al., arXiv 2410.18640): make the strong model's own log-ratio track the weak one.

Per response token t of the chosen responses:

    loss_t = ( beta * (log pi_theta(y_t|..) - log pi_ref(y_t|..))  -  (log pi_post(y_t|..) - log pi_pre(y_t|..)) )^2

averaged over all response tokens of a batch; pi_ref is the strong model before training (reference
beta 0.1, lr 1e-5). Both the target (weak log-ratios) and pi_ref's log-probs are computed ONCE before
training and cached in output_dir/wspo_data.jsonl, so training holds one model and a resume reuses them.
With several processes (ml.distributed) the first one computes that file and the others wait for it and read it
(``prepare_once``); pi_ref is the strong model loaded as training loads it, before LoRA (identity at start).

Different tokenizers. The weak pair and the strong model may split a response differently. We move the
weak per-token log-ratios onto strong tokens through characters: each weak token spreads its value
evenly over the characters it covers; a strong token's target is the sum over its characters.
Characters no strong token covers (e.g. spaces a word-level tokenizer drops) go to the next strong
token; zero-width weak tokens give their value to the strong token at their position; the EOS values
map onto each other. The total log-ratio of a response is conserved, and with identical tokenizers
every strong token gets exactly its weak twin's value (we then skip the mapping altogether).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ml.io import read_jsonl, stage_done, write_jsonl
from ml.reporter import Reporter
from ml.stages._responses import EmptyResponses, drop_empty, drop_truncated, ends_complete, finish_key
from ml.stages._scale import check_runnable, load_base, prepare_once
from ml.stages._train import (
    TrainConfig,
    encode_pair,
    encode_prompt,
    encode_response,
    load_for_training,
    pad_collate,
    run_training,
    shifted_token_logps,
    token_logprobs,
    training_kwargs,
)
from ml.stages.callbacks import ReporterCallback, for_rank

STAGE = "wspo"


@dataclass(kw_only=True)
class WSPOConfig(EmptyResponses, TrainConfig):
    data: str = field(
        default="", metadata={"internal": True, "help": "JSONL of the chosen responses: 'prompt' and response_field."}
    )
    response_field: str = field(
        default="response",
        metadata={
            "internal": True,
            "help": "Field with the response ('response' for samples files, 'chosen' for preference files).",
        },
    )
    weak_aligned: str = field(
        default="", metadata={"internal": True, "help": "pi_post folder (the weak aligned model)."}
    )
    weak_base: str = field(default="", metadata={"internal": True, "help": "pi_pre folder (the weak base model)."})
    beta: float = field(default=0.1, metadata={"help": "Scale of the strong log-ratio (reference 0.1)."})
    learning_rate: float = field(default=1e-5, metadata={"help": "Peak learning rate (reference 1e-5)."})
    score_batch_size: int = field(default=8, metadata={"help": "Batch size for the one-off log-prob passes."})
    max_examples: int | None = field(default=None, metadata={"help": "Use only the first N rows (None = all)."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.data:
            raise ValueError("data is empty: give a JSONL of prompts and chosen responses")
        if not (self.weak_aligned and self.weak_base):
            raise ValueError("WSPO needs weak_aligned and weak_base (the weak pair's folders)")
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0 (got {self.beta})")


def wspo_loss(
    policy_logps: torch.Tensor, ref_logps: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, beta: float
) -> torch.Tensor:
    """(beta * (policy - ref) - target)^2 summed over each sequence's response tokens and divided by their count,
    then averaged over the sequences that have any (the reference's normalisation: a long response weighs no more
    than a short one); all tensors [B, L]. A batch with no response token gives 0."""
    err = ((beta * (policy_logps - ref_logps) - target) ** 2 * mask).sum(dim=-1)
    n = mask.sum(dim=-1)
    has = n > 0
    if not bool(has.any()):
        return err.sum() * 0.0
    return (err[has] / n[has]).mean()


def map_token_values(
    text: str, src_offsets: list[tuple[int, int]], src_values: list[float], dst_offsets: list[tuple[int, int]]
) -> list[float]:
    """Move per-token values from one tokenisation of ``text`` to another via characters (module doc)."""
    n = len(text)
    dens = [0.0] * (n + 1)  # index n collects what lies past the text
    for (s, e), v in zip(src_offsets, src_values):
        if e > s:
            share = v / (e - s)
            for c in range(s, min(e, n)):
                dens[c] += share
        else:
            dens[min(s, n)] += v
    out = [0.0] * len(dst_offsets)
    if not dst_offsets:
        return out
    # Owner of each character: the dst token covering it, else the next dst token, else the last one.
    owner = [-1] * (n + 1)
    for k, (s, e) in enumerate(dst_offsets):
        for c in range(s, min(e, n)):
            if owner[c] == -1:
                owner[c] = k
    starts = sorted((s, k) for k, (s, e) in enumerate(dst_offsets))
    nxt = len(dst_offsets) - 1
    si = len(starts) - 1
    for c in range(n, -1, -1):
        while si >= 0 and starts[si][0] >= c:
            nxt = starts[si][1]
            si -= 1
        if owner[c] == -1:
            owner[c] = nxt if c < n else len(dst_offsets) - 1
    for c in range(n + 1):
        out[owner[c]] += dens[c]
    return out


def _offsets(tok: Any, text: str) -> list[tuple[int, int]]:
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    return [(s, e) for s, e in enc["offset_mapping"]]


def weak_targets(cfg: WSPOConfig, rows: list[dict[str, Any]], strong_tok: Any) -> list[dict[str, Any]]:
    """Per example: strong input_ids, prompt length, and the weak log-ratio per strong response token."""
    from ml.modeling import load_causal_lm, load_tokenizer, vocab_fingerprint

    weak_tok = load_tokenizer(cfg.weak_aligned)
    same_tok = vocab_fingerprint(weak_tok) == vocab_fingerprint(strong_tok)
    prompts = [str(r["prompt"]) for r in rows]
    responses = [str(r[cfg.response_field]) for r in rows]
    # A response cut at the length limit gets no EOS (ml.stages._responses).
    ends = [ends_complete(r, finish_key(cfg.response_field)) for r in rows]
    wp = [encode_prompt(weak_tok, p, cfg.use_chat_template) for p in prompts]
    wr = [encode_response(weak_tok, r, cfg.use_chat_template, add_eos=e) for r, e in zip(responses, ends)]
    seqs = [p + r for p, r in zip(wp, wr)]
    ratios: list[list[float]] = []
    lp: dict[str, list[list[float]]] = {}
    for name in ("aligned", "base"):
        model = load_causal_lm(getattr(cfg, f"weak_{name}"), device=cfg.device)
        lp[name] = token_logprobs(model, seqs, batch_size=cfg.score_batch_size, pad_id=weak_tok.pad_token_id or 0)
        del model
    for i, p in enumerate(wp):
        post, pre = lp["aligned"][i][len(p) :], lp["base"][i][len(p) :]
        ratios.append([a - b for a, b in zip(post, pre)])
    out = []
    for i, (prompt, response) in enumerate(zip(prompts, responses)):
        sp, sr = encode_pair(
            strong_tok,
            prompt,
            response,
            use_chat_template=cfg.use_chat_template,
            max_length=cfg.max_length,
            eos=ends[i],
        )
        full_sr = encode_response(strong_tok, response, cfg.use_chat_template, add_eos=ends[i])
        if same_tok:
            target = ratios[i][: len(full_sr)]
        else:
            # With EOS, the last value of each list is EOS's: map the text tokens through characters, EOS to EOS.
            src_off = _offsets(weak_tok, response)
            dst_off = _offsets(strong_tok, response)
            body = map_token_values(response, src_off, ratios[i][: len(src_off)], dst_off)
            target = body + [ratios[i][-1]] if ends[i] else body
        target = target[: len(sr)]
        out.append({"input_ids": sp + sr, "prompt_len": len(sp), "target": [float(t) for t in target]})
    return out


def _trainer_class() -> type[Any]:
    """The Trainer subclass, built on first use (transformers is imported lazily); wspo() sets ``beta`` on it."""
    from transformers import Trainer

    class WSPOTrainer(Trainer):
        beta: float = 0.1

        def compute_loss(
            self,
            model: torch.nn.Module,
            inputs: dict[str, torch.Tensor | Any],
            return_outputs: bool = False,
            num_items_in_batch: torch.Tensor | int | None = None,
        ) -> torch.Tensor | tuple[torch.Tensor, Any]:
            out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
            policy = shifted_token_logps(out.logits, inputs["input_ids"])
            loss = wspo_loss(policy, inputs["ref_logps"], inputs["target"], inputs["response_mask"], self.beta)
            return (loss, out) if return_outputs else loss

    return WSPOTrainer


def wspo(config: WSPOConfig, reporter: Reporter | None = None) -> dict[str, Any]:
    done = stage_done(config.output_dir)
    if done is not None:
        return done
    check_runnable(config)
    reporter = for_rank(reporter)
    from datasets import Dataset
    from transformers import TrainingArguments

    from ml.modeling import load_tokenizer, pick_device

    cache = Path(config.output_dir) / "wspo_data.jsonl"
    # Read on a resume too (it is cheap): the dropped count belongs in the result either way.
    rows = read_jsonl(config.data, required=("prompt", config.response_field))
    rows, n_empty = drop_empty(
        rows, (config.response_field,), keep=config.keep_empty_responses, stage=STAGE, reporter=reporter
    )
    rows, n_cut = drop_truncated(
        rows, (finish_key(config.response_field),), drop=config.drop_truncated, stage=STAGE, reporter=reporter
    )
    rows = rows[: config.max_examples or None]

    def precompute() -> bool:  # the first process only (prepare_once)
        if not rows:
            raise ValueError(f"{config.data} has no usable prompt/response rows ({n_empty} empty responses dropped)")
        reporter.log(f"{STAGE}: computing weak log-ratios and reference log-probs for {len(rows)} responses")
        tok = load_tokenizer(config.model)
        data = weak_targets(config, rows, tok)
        # On this process's device even under zero3 (where load_base's default is the CPU).
        ref_model = load_base(config, pick_device(config.device)).eval()
        ref = token_logprobs(
            ref_model, [d["input_ids"] for d in data], batch_size=config.score_batch_size, pad_id=tok.pad_token_id or 0
        )
        del ref_model
        for d, lp in zip(data, ref):
            d["ref"] = lp[d["prompt_len"] :]
        write_jsonl(cache, data)
        return True

    if not cache.exists() and not prepare_once(cache.exists, precompute, reporter):
        return {"stage": STAGE, "stopped": True}
    data = read_jsonl(cache)
    model, tok = load_for_training(config)
    feats = []
    for d in data:
        n, p = len(d["input_ids"]), d["prompt_len"]
        feats.append(
            {
                "input_ids": d["input_ids"],
                "attention_mask": [1] * n,
                "response_mask": [0.0] * p + [1.0] * (n - p),
                "ref_logps": [0.0] * p + [float(x) for x in d["ref"]],
                "target": [0.0] * p + [float(x) for x in d["target"]],
            }
        )
    pad = tok.pad_token_id or 0
    cls = _trainer_class()
    cls.beta = config.beta
    callback = ReporterCallback(reporter, STAGE)
    trainer = cls(
        model=model,
        args=TrainingArguments(**training_kwargs(config, model)),
        train_dataset=Dataset.from_list(feats),
        data_collator=lambda f: pad_collate(f, pad),
        processing_class=tok,
        callbacks=[callback],
    )
    return run_training(
        trainer,
        config,
        callback,
        stage=STAGE,
        extra={"n_examples": len(feats), "n_empty_dropped": n_empty, "n_truncated_dropped": n_cut},
    )
