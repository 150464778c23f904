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
  compiled   contrastive_generate with CDConfig.compile="on" (ml.cd_compiled) at the largest batch size,
             same models, prompts and tokens; its compile time is measured apart (an untimed first call)
             and the greedy tokens are checked against the eager path's (--no-compiled skips this);
  ragged     (toy models only) generation lengths drawn from a long-tailed distribution with EOS honoured,
             where refilling finished rows matters: pairs/s of the compiled path against the eager one.
             pi_post is a "countdown" toy GPT-2 (same shape as the others) that continues word w_k with
             w_(k-1) and w_0 with EOS, so a prompt ending in w_k yields exactly k + 1 tokens whatever the
             sampling settings (its relative_top cut leaves one token); pi_pre is the usual toy model.

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
from ml.reporter import RecordingReporter  # noqa: E402

WORDS = [f"w{i}" for i in range(196)]  # with the 4 specials: a 200-token vocabulary


def toy_models(seed_aligned: int = 1, seed_base: int = 2):
    from ml.tiny import tiny_gpt2, word_tokenizer

    tok = word_tokenizer(WORDS)
    aligned = tiny_gpt2(len(tok), n_layer=2, n_embd=64, n_head=2, n_positions=256, seed=seed_aligned)
    base = tiny_gpt2(len(tok), n_layer=2, n_embd=64, n_head=2, n_positions=256, seed=seed_base)
    return tok, aligned, base


def countdown_gpt2(vocab_size: int, n_positions: int = 256):
    """A toy GPT-2 of the usual shape whose output depends on the current token only: word w_k -> w_(k-1),
    w_0 -> EOS, with a margin of ~20 nats. The blocks' output projections and the position embeddings are
    zero (the residual stream is the token embedding), and the untied head maps each embedding to its
    predecessor's. Same FLOPs per token as the random toy models."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(3)
    cfg = GPT2Config(
        vocab_size=vocab_size,
        n_positions=n_positions,
        n_embd=64,
        n_layer=2,
        n_head=2,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    m = GPT2LMHeadModel(cfg)
    with torch.no_grad():
        emb = torch.randn(vocab_size, 64)
        emb = emb - emb.mean(-1, keepdim=True)
        emb = emb / emb.norm(dim=-1, keepdim=True)
        m.transformer.wte.weight.copy_(emb)
        m.transformer.wpe.weight.zero_()
        for blk in m.transformer.h:
            for proj in (blk.attn.c_proj, blk.mlp.c_proj):
                proj.weight.zero_()
                proj.bias.zero_()
        head = torch.zeros(vocab_size, 64)
        first = 4  # w_0's id: the word tokenizer's 4 specials come first
        for k in range(1, len(WORDS)):
            head[first + k - 1] = emb[first + k]  # reading w_k predicts w_(k-1)
        head[2] = emb[first]  # reading w_0 predicts EOS
        m.lm_head.weight.copy_(head * 5.0)
    m.generation_config.pad_token_id, m.generation_config.eos_token_id = 0, 2
    return m.eval()


def ragged_lengths(n: int, max_new: int, seed: int = 0) -> list[int]:
    """Response lengths (EOS included) from a log-normal with median 12 tokens and sigma 1 (long right
    tail: mean ~20, 1 in 10 over 40), clipped to [1, max_new]."""
    g = torch.Generator().manual_seed(seed)
    x = torch.exp(math.log(12.0) + torch.randn(n, generator=g))
    return [int(v) for v in x.round().clamp(1, max_new).tolist()]


def ragged_prompts(lengths: list[int], seed: int = 0) -> list[str]:
    """4..16 random words, then w_(L-1): the countdown model answers w_(L-2) ... w_0 EOS, L tokens."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for L in lengths:
        k = int(torch.randint(3, 16, (1,), generator=g))
        words = [WORDS[int(i)] for i in torch.randint(0, len(WORDS), (k,), generator=g)]
        out.append(" ".join([*words, WORDS[L - 1]]))
    return out


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


def compiled_part(aligned, base, tok, prompts, cfg: CDConfig, big: int, args, toy: bool) -> tuple[dict, dict]:
    """The compiled path's timed variants (name -> fn returning a count) and its one-off results: compile
    times (each first call, untimed in the rounds), the greedy check, the ragged set-up."""

    def run(ps, c, a=aligned, b=base, reporter=None):
        return contrastive_generate(aligned=a, base=b, tokenizer=tok, prompts=ps, config=c, reporter=reporter)

    def first_call(ps, c, **kw):
        rec = RecordingReporter()
        out = run(ps, c, reporter=rec, **kw)
        return out, sum(v for name, v, _ in rec.of("metric") if name == "cd_compile_seconds")

    on = CDConfig(**{**cfg.__dict__, "batch_size": big, "compile": "on"})
    compile_s = {"throughput": first_call(prompts, on)[1]}
    variants = {f"compiled{big}": lambda: sum(len(g.token_ids) for g in run(prompts, on))}
    greedy = {**cfg.__dict__, "batch_size": big, "do_sample": False, "ignore_eos": False}
    eager_g = run(prompts, CDConfig(**greedy))
    comp_g, compile_s["greedy_check"] = first_call(prompts, CDConfig(**{**greedy, "compile": "on"}))
    info = {
        "compiled_matches_eager": [g.token_ids for g in eager_g] == [g.token_ids for g in comp_g],
        "compile_seconds": compile_s,
    }
    if toy and args.ragged_prompts:
        countdown = countdown_gpt2(len(tok))
        lengths = ragged_lengths(args.ragged_prompts, args.ragged_max_new_tokens)
        rp = ragged_prompts(lengths)
        rc = {**cfg.__dict__, "batch_size": big, "ignore_eos": False, "max_new_tokens": args.ragged_max_new_tokens}
        r_eager, r_on = CDConfig(**rc), CDConfig(**{**rc, "compile": "on"})
        eager_r = run(rp, r_eager, a=countdown)
        comp_r, compile_s["ragged"] = first_call(rp, r_on, a=countdown)
        info["ragged"] = {
            "prompts": len(rp),
            "max_new_tokens": args.ragged_max_new_tokens,
            "lengths": {q: sorted(lengths)[int(q / 100 * (len(lengths) - 1))] for q in (10, 50, 90, 99, 100)},
            "mean_length": statistics.mean(lengths),
            "lengths_as_drawn": [len(g.token_ids) for g in eager_r] == lengths,
            "matches_eager": [g.token_ids for g in eager_r] == [g.token_ids for g in comp_r],
        }
        variants["ragged_eager"] = lambda: len(run(rp, r_eager, a=countdown))  # counts pairs, not tokens
        variants["ragged_compiled"] = lambda: len(run(rp, r_on, a=countdown))
    return variants, info


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
    ap.add_argument(
        "--compiled",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure the compiled path (CDConfig.compile='on') and the ragged run (default: on)",
    )
    ap.add_argument("--ragged-prompts", type=int, default=256, help="prompts of the ragged run (0: skip it)")
    ap.add_argument("--ragged-max-new-tokens", type=int, default=128, help="length cap of the ragged run")
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
    compiled_info: dict = {}
    if args.compiled:
        more, compiled_info = compiled_part(aligned, base, tok, prompts, cfg, big, args, toy=not args.aligned)
        variants.update(more)
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

    if args.compiled:
        compiled_info["compiled_tok_s"] = best[f"compiled{big}"]
        compiled_info["compiled_speedup"] = med([r[f"compiled{big}"] / r[f"cd{big}"] for r in rounds])
        if "ragged" in compiled_info:
            rg = compiled_info["ragged"]
            rg["eager_pairs_s"], rg["compiled_pairs_s"] = best["ragged_eager"], best["ragged_compiled"]
            rg["speedup"] = med([r["ragged_compiled"] / r["ragged_eager"] for r in rounds])

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
        **compiled_info,  # compiled_speedup, compiled_matches_eager, compile_seconds, ragged (per_round: pairs/s)
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
        if args.compiled:
            print(
                f"compiled batch {big}: {compiled_info['compiled_tok_s']:.0f} tok/s, "
                f"{compiled_info['compiled_speedup']:.2f}x eager (median); greedy identical: "
                f"{compiled_info['compiled_matches_eager']}; compile seconds: {compiled_info['compile_seconds']}"
            )
        if "ragged" in compiled_info:
            rg = compiled_info["ragged"]
            print(
                f"ragged ({rg['prompts']} prompts, lengths p50 {rg['lengths'][50]}, p99 {rg['lengths'][99]}): eager "
                f"{rg['eager_pairs_s']:.1f} pairs/s, compiled {rg['compiled_pairs_s']:.1f} ({rg['speedup']:.2f}x)"
            )
    return result


if __name__ == "__main__":
    main()
