"""Contrastive-decoding throughput: a benchmark, not a test.

Measures, on the same models, prompts and token counts (every row generates exactly
--max-new-tokens tokens: EOS is ignored everywhere, so all variants do the same work):

  reference  a batch-1 loop shaped like the ConG reference code: one prompt at a time, both models
             with a KV cache, CD score + transformers processors + sampling each step, EOS check with
             .item() each step;
  batched    ml.contrastive.contrastive_generate at each --batch-sizes (default 1, 8, 32);
  bound      the two-model bound: plain batched model.generate of pi_post, then of pi_pre, for the same
             prompts and tokens at the largest batch size (min_new_tokens = max_new_tokens). CD needs
             both forwards per token, so CD at that batch size can at best match this.

Default models are toy-sized tiny GPT-2s built here (2 layers, d=64, ~200-word vocabulary); pass
--aligned/--base folders for real ones. Usage:

    OMP_WAIT_POLICY=PASSIVE python bench/cd_throughput.py --json
    python bench/cd_throughput.py --device cuda --dtype bfloat16 --aligned A --base B --json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from ml.contrastive import CDConfig, contrastive_generate, encode_prompt  # noqa: E402

WORDS = [f"w{i}" for i in range(196)]  # with the 4 specials: a 200-token vocabulary


def toy_models(seed_aligned: int = 1, seed_base: int = 2):
    from ml.tiny import tiny_gpt2, word_tokenizer

    tok = word_tokenizer(WORDS)
    aligned = tiny_gpt2(len(tok), n_layer=2, n_embd=64, n_head=2, n_positions=256, seed=seed_aligned)
    base = tiny_gpt2(len(tok), n_layer=2, n_embd=64, n_head=2, n_positions=256, seed=seed_base)
    return tok, aligned, base


def toy_prompts(n: int, seed: int = 0) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(4, 17, (n,), generator=g).tolist()
    return [" ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (L,), generator=g)) for L in lengths]


def reference_loop(aligned, base, tok, prompts: list[str], cfg: CDConfig, device) -> int:
    """One prompt at a time, as the reference's patched generate does; returns tokens generated."""
    from transformers import DynamicCache
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopPLogitsWarper,
    )

    procs = LogitsProcessorList(
        [
            RepetitionPenaltyLogitsProcessor(cfg.repetition_penalty),
            TemperatureLogitsWarper(cfg.temperature),
            TopPLogitsWarper(cfg.top_p),
        ]
    )
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    total = 0
    with torch.inference_mode():
        for p in prompts:
            ids = torch.tensor([encode_prompt(tok, p, use_chat_template=False)], device=device)
            cache_a, cache_b = DynamicCache(config=aligned.config), DynamicCache(config=base.config)
            step_in = ids
            for _ in range(cfg.max_new_tokens):
                la = aligned(input_ids=step_in, cache=cache_a, use_cache=True).logits[:, -1, :].float()
                lb = base(input_ids=step_in, cache=cache_b, use_cache=True).logits[:, -1, :].float()
                lp_post, lp_pre = la.log_softmax(-1), lb.log_softmax(-1)
                cutoff = lp_post.max(-1, keepdim=True).values + math.log(cfg.relative_top)
                score = (lp_post - (1 - cfg.alpha) * lp_pre).masked_fill(lp_post < cutoff, float("-inf"))
                score = procs(ids, score)
                nxt = torch.multinomial(score.softmax(-1), 1, generator=gen)
                ids = torch.cat([ids, nxt], dim=-1)
                step_in = nxt
                total += 1
                if not cfg.ignore_eos and nxt.item() == tok.eos_token_id:
                    break
    return total


def plain_generate_batched(model, tok, prompts: list[str], cfg: CDConfig, batch_size: int, device) -> int:
    total = 0
    tok.padding_side = "left"
    with torch.inference_mode():
        for s in range(0, len(prompts), batch_size):
            enc = tok(prompts[s : s + batch_size], return_tensors="pt", padding=True)
            out = model.generate(
                input_ids=enc["input_ids"].to(device),
                attention_mask=enc["attention_mask"].to(device),
                do_sample=True,
                temperature=cfg.temperature,
                top_p=cfg.top_p,
                top_k=0,
                repetition_penalty=cfg.repetition_penalty,
                max_new_tokens=cfg.max_new_tokens,
                min_new_tokens=cfg.max_new_tokens,
                pad_token_id=tok.pad_token_id,
            )
            total += (out.shape[1] - enc["input_ids"].shape[1]) * out.shape[0]
    return total


def timed(fn, device) -> tuple[float, int]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    n = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, n


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--aligned", help="pi_post folder (default: toy model built here)")
    ap.add_argument("--base", help="pi_pre folder (default: toy model built here)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None, help="float32, bfloat16, float16 (default: per device)")
    ap.add_argument("--prompts", type=int, default=64, help="prompts per measured variant")
    ap.add_argument(
        "--reference-prompts",
        type=int,
        default=16,
        help="prompts for the (slow) batch-1 reference loop; tok/s is per token, so fewer suffice",
    )
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-sizes", default="1,8,32")
    ap.add_argument("--repeats", type=int, default=5, help="rounds (each runs every variant once)")
    ap.add_argument(
        "--warmup-rounds", type=int, default=None, help="untimed full rounds first (default: 1 on CUDA, 0 on CPU)"
    )
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # generated ids may include the pad id; the padding warning is noise here
    from ml.modeling import load_causal_lm, load_tokenizer, pick_device, pick_dtype

    device = pick_device(args.device)
    dtype = pick_dtype(device, args.dtype)
    if args.aligned and args.base:
        tok = load_tokenizer(args.aligned)
        aligned = load_causal_lm(args.aligned, device=device, dtype=dtype)
        base = load_causal_lm(args.base, device=device, dtype=dtype)
        words = [w for w in tok.get_vocab() if w.isalpha()][:200] or ["hello"]
        g = torch.Generator().manual_seed(0)
        prompts = [
            " ".join(words[int(i)] for i in torch.randint(0, len(words), (int(L),), generator=g))
            for L in torch.randint(4, 17, (args.prompts,), generator=g)
        ]
        models = (
            Path(args.aligned).name
            if Path(args.aligned) == Path(args.base)
            else f"{Path(args.aligned).name} / {Path(args.base).name}"
        )
    else:
        tok, aligned, base = toy_models()
        aligned.to(device=device, dtype=dtype)
        base.to(device=device, dtype=dtype)
        prompts = toy_prompts(args.prompts)
        models = "toy GPT-2 2 layers d=64, 200-token vocab"
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    big = max(batch_sizes)
    cfg = CDConfig(max_new_tokens=args.max_new_tokens, use_chat_template=False, ignore_eos=True, seed=0)

    # Warm-up: first calls pay one-off costs (allocations, lazy imports, kernel selection).
    contrastive_generate(
        aligned=aligned,
        base=base,
        tokenizer=tok,
        prompts=prompts[:big],
        config=CDConfig(**{**cfg.__dict__, "max_new_tokens": 4, "batch_size": big}),
    )
    reference_loop(aligned, base, tok, prompts[:1], CDConfig(**{**cfg.__dict__, "max_new_tokens": 4}), device)
    plain_generate_batched(aligned, tok, prompts[:big], CDConfig(**{**cfg.__dict__, "max_new_tokens": 4}), big, device)

    # Rounds: every variant runs once per round, interleaved, so load from other processes on a shared
    # machine hits all variants alike; the ratios are medians of per-round ratios and each tok/s is the
    # variant's best round. Batch-1 variants use fewer prompts (their per-token cost does not depend on
    # how many prompts there are) to keep a round short.
    few = prompts[: args.reference_prompts]
    variants = {"reference": lambda: reference_loop(aligned, base, tok, few, cfg, device)}
    for b in batch_sizes:
        c = CDConfig(**{**cfg.__dict__, "batch_size": b})
        ps = few if b == 1 else prompts
        variants[f"cd{b}"] = lambda c=c, ps=ps: sum(
            len(g.token_ids)
            for g in contrastive_generate(aligned=aligned, base=base, tokenizer=tok, prompts=ps, config=c)
        )
    variants["plain_post"] = lambda: plain_generate_batched(aligned, tok, prompts, cfg, big, device)
    variants["plain_pre"] = lambda: plain_generate_batched(base, tok, prompts, cfg, big, device)
    # On CUDA the short warm-up above is not enough: a first full-length round still paid for cache growth
    # and clock ramp-up (measured on an H200: batch-64 CD at 502 tok/s in round 1, 1034 in round 2), so
    # one whole round runs untimed first.
    warmup = args.warmup_rounds if args.warmup_rounds is not None else (1 if device.type == "cuda" else 0)
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    rounds: list[dict[str, float]] = []
    for _ in range(args.repeats):
        rate = {}
        for name, fn in variants.items():
            sec, n = timed(fn, device)
            rate[name] = (sec, n)
        assert rate["plain_post"][1] == rate["plain_pre"][1] == len(prompts) * args.max_new_tokens
        tok_s = {k: n / sec for k, (sec, n) in rate.items()}
        # Both models must run for every token: the bound's time is the sum of the two plain runs.
        tok_s["bound"] = rate["plain_post"][1] / (rate["plain_post"][0] + rate["plain_pre"][0])
        rounds.append(tok_s)
    best = {k: max(r[k] for r in rounds) for k in rounds[0]}
    med = statistics.median  # mean of the middle two for an even number of rounds
    batched = {b: best[f"cd{b}"] for b in batch_sizes}
    bound = best["bound"]

    result = {
        "reference_tok_s": best["reference"],
        "batched_tok_s": {str(b): v for b, v in batched.items()},
        "bound_tok_s": bound,
        "speedup_vs_reference": med([r[f"cd{big}"] / r["reference"] for r in rounds]),
        "fraction_of_bound": med([r[f"cd{big}"] / r["bound"] for r in rounds]),
        "per_round": [{k: round(v, 1) for k, v in r.items()} for r in rounds],
        "batch_size_for_ratios": big,
        "repeats": args.repeats,
        "warmup_rounds": warmup,
        "prompts": len(prompts),
        "reference_prompts": args.reference_prompts,
        "max_new_tokens": args.max_new_tokens,
        "models": models,
        "device": str(device),
        "dtype": str(dtype).replace("torch.", ""),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"reference (batch 1 loop): {result['reference_tok_s']:.0f} tok/s")
        for b, v in batched.items():
            print(f"contrastive_generate batch {b}: {v:.0f} tok/s")
        print(f"two-model bound (plain generate x2, batch {big}): {bound:.0f} tok/s")
        print(
            f"speedup vs reference: {result['speedup_vs_reference']:.1f}x; "
            f"fraction of bound: {result['fraction_of_bound']:.2f} (medians over {len(rounds)} rounds)"
        )
    return result


if __name__ == "__main__":
    main()
