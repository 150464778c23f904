"""Sampling and scoring shared by the report and the pre-flight diagnostic.

For a weak pair (pi_post, pi_pre) and prompts: samples from pi_pre, plain samples from pi_post and
CD samples at several alphas, each scored by the gold reward, the validity check and the implicit
reward log pi_post(y|x) - log pi_pre(y|x) (summed over response tokens, eos included).
"""

from __future__ import annotations

import math
from typing import Any

from ml.gold import GoldReward
from ml.reporter import Reporter, or_null
from ml.stats import mean_ci


def pearson(xs: list[float], ys: list[float]) -> float:
    n = len(xs)
    if n < 3:
        return float("nan")
    mx, my = sum(xs) / n, sum(ys) / n
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else float("nan")


def summarize(rows: list[dict]) -> dict[str, Any]:
    """gold mean with a 95% interval over samples, valid rate, mean implicit reward, n."""
    g = mean_ci([r["gold"] for r in rows])
    imp = [r["implicit"] for r in rows if r.get("implicit") is not None]
    return {"gold_mean": g.mean, "gold_ci": [g.lo, g.hi], "n": len(rows),
            "valid_rate": sum(bool(r["valid"]) for r in rows) / len(rows) if rows else float("nan"),
            "implicit_mean": sum(imp) / len(imp) if imp else None}


def _score(gold: GoldReward, prompts: list[str], texts: list[str], implicit: list[float]) -> list[dict]:
    return [{"prompt": p, "response": t, "gold": gold(p, t), "valid": gold.is_valid(p, t), "implicit": i}
            for p, t, i in zip(prompts, texts, implicit)]


def plain_samples(model, *, aligned, base, tokenizer, prompts: list[str], gold: GoldReward, n: int,
                  seed: int, max_new_tokens: int, temperature: float = 0.8, top_p: float = 0.95,
                  batch_size: int = 128) -> list[dict]:
    """n plain samples per prompt from ``model`` (pi_pre or pi_post), with implicit rewards."""
    from ml.scoring import implicit_rewards
    from ml.stages._train import sample_responses

    texts: list[str] = []
    flat_prompts: list[str] = []
    for s in range(0, len(prompts), batch_size):
        batch = prompts[s:s + batch_size]
        outs = sample_responses(model, tokenizer, batch, n=n, temperature=temperature, top_p=top_p,
                                max_new_tokens=max_new_tokens, use_chat_template=False, seed=seed + s)
        for p, rs in zip(batch, outs):
            flat_prompts += [p] * len(rs)
            texts += rs
    imp = implicit_rewards(aligned=aligned, base=base, tokenizer=tokenizer, prompts=flat_prompts,
                           responses=texts, batch_size=128, append_eos=True)
    return _score(gold, flat_prompts, texts, [float(d["sum"]) for d in imp])


def cd_samples(*, aligned, base, tokenizer, prompts: list[str], gold: GoldReward, alpha: float, n: int,
               seed: int, max_new_tokens: int, reporter: Reporter | None = None,
               batch_size: int = 64, cd_overrides: dict | None = None) -> list[dict]:
    """n CD samples per prompt at ``alpha`` (reference settings unless ``cd_overrides`` says), scored."""
    from ml.contrastive import CDConfig, contrastive_generate

    flat = [p for p in prompts for _ in range(n)]
    cfg = CDConfig(**{"alpha": alpha, "seed": seed, "max_new_tokens": max_new_tokens, "batch_size": batch_size,
                      "use_chat_template": False, **(cd_overrides or {})})
    gens = contrastive_generate(aligned=aligned, base=base, tokenizer=tokenizer, prompts=flat, config=cfg,
                                reporter=or_null(reporter))
    return _score(gold, [g.prompt for g in gens], [g.text for g in gens],
                  [float(g.implicit_reward.sum) for g in gens])


def run_sweep(*, aligned, base, tokenizer, prompts: list[str], gold: GoldReward, alphas, n: int, seed: int,
              max_new_tokens: int, reporter: Reporter | None = None, keep_rows: bool = False,
              cd_overrides: dict | None = None) -> dict[str, Any]:
    """Everything the alpha sweep reports for one weak pair: pre, plain_post, cd[alpha], Pearson.

    ``cd_overrides``: CDConfig fields for the CD runs (e.g. {"repetition_penalty": 1.0} for an ablation)."""
    rep = or_null(reporter)
    pre = plain_samples(base, aligned=aligned, base=base, tokenizer=tokenizer, prompts=prompts, gold=gold, n=n,
                        seed=seed, max_new_tokens=max_new_tokens)
    post = plain_samples(aligned, aligned=aligned, base=base, tokenizer=tokenizer, prompts=prompts, gold=gold,
                         n=n, seed=seed, max_new_tokens=max_new_tokens)
    out: dict[str, Any] = {"pre": summarize(pre), "plain_post": summarize(post), "cd": [],
                           "implicit_gold_pearson": pearson([r["implicit"] for r in post], [r["gold"] for r in post])}
    rows: dict[str, list[dict]] = {"pre": pre, "plain_post": post}
    for k, a in enumerate(alphas):
        cd = cd_samples(aligned=aligned, base=base, tokenizer=tokenizer, prompts=prompts, gold=gold, alpha=a, n=n,
                        seed=seed, max_new_tokens=max_new_tokens, cd_overrides=cd_overrides)
        out["cd"].append({"alpha": a, **summarize(cd)})
        rows[f"cd_{a:g}"] = cd
        rep.progress("toyworld/sweep", k + 1, len(alphas))
        if rep.should_stop():
            out["stopped"] = True
            break
    if keep_rows:
        out["rows"] = rows
    return out
