"""Pre-flight check for any weak pair, before spending GPU hours on ConG.

Two measurements on held-out prompts:
1. the Pearson correlation between the implicit reward log pi_post/pi_pre and the gold reward on
   plain pi_post samples. A weak pair whose log-ratio does not track gold cannot guide CD. It is a
   necessary sign, not a sufficient one: the toy world's balanced-prior control has a positive
   correlation and yet CD gains nothing there (docs/RESULTS.md).
2. a small alpha sweep: gold reward of CD samples vs plain pi_post samples. This is the deciding
   measurement, since CD beyond the log-ratio only removes pi_pre's prior and sharpens, which helps
   only where that prior works against the preference.

Generic: any weak pair (loaded models or folders), prompts and a gold reward (a ``GoldReward``, a
registered name, or any callable (prompt, response) -> float). The verdict is plain language
(``message``) plus a code (raises / no_gain / lowers). The sampling and scoring helpers (``run_sweep``
and friends) are shared with the toy-world report (ml.toyworld).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ml.gold import GoldReward, resolve_gold
from ml.reporter import Reporter, or_null
from ml.stages._responses import truncated_rate
from ml.stats import clustered_mean_ci, fisher_z_mean_ci, mean_ci, pearson, pearson_ci

SWEEP_STAGE = "diagnose/sweep"

# ---------------------------------------------------------------------------------------------------
# Sampling and scoring: pi_pre samples, plain pi_post samples and CD samples at several alphas, each
# scored by the gold reward, the validity check and the implicit reward log pi_post(y|x) - log pi_pre(y|x)
# (summed over response tokens, eos included).


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """gold mean with a 95% interval, valid rate, mean implicit reward, n. The interval counts prompts, not samples:
    several samples of one prompt are not independent (ml.stats.clustered_mean_ci)."""
    g = clustered_mean_ci([r["gold"] for r in rows], [r["prompt"] for r in rows])
    imp = [r["implicit"] for r in rows if r.get("implicit") is not None]
    return {
        "gold_mean": g.mean,
        "gold_ci": [g.lo, g.hi],
        "n": len(rows),
        "valid_rate": sum(bool(r["valid"]) for r in rows) / len(rows) if rows else float("nan"),
        "implicit_mean": sum(imp) / len(imp) if imp else None,
        "truncated_rate": truncated_rate(rows),
    }


def _score(
    gold: GoldReward, prompts: list[str], texts: list[str], implicit: list[float], finish: list[str]
) -> list[dict[str, Any]]:
    return [
        {
            "prompt": p,
            "response": t,
            "gold": gold(p, t),
            "valid": gold.is_valid(p, t),
            "implicit": i,
            "finish_reason": f,
        }
        for p, t, i, f in zip(prompts, texts, implicit, finish)
    ]


def plain_samples(
    model: Any,
    *,
    aligned: Any,
    base: Any,
    tokenizer: Any,
    prompts: list[str],
    gold: GoldReward,
    n: int,
    seed: int,
    max_new_tokens: int,
    batch_size: int = 128,
    use_chat_template: bool = True,
    cd_overrides: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """n plain samples per prompt from ``model`` (pi_pre or pi_post), with implicit rewards: sampled by the one
    definition of plain sampling (ml.plain_sampling: CD at alpha 1) with the CD runs' own settings, so the sweep
    compares CD with plain sampling under the same processors."""
    from ml.contrastive import CDConfig, batch_seed
    from ml.plain_sampling import sample_plain
    from ml.scoring import implicit_rewards

    cfg = CDConfig(
        **{
            "seed": seed,
            "max_new_tokens": max_new_tokens,
            "batch_size": batch_size,
            "use_chat_template": use_chat_template,
            **(cd_overrides or {}),
            "alpha": 1.0,
        }
    )
    flat = [p for p in prompts for _ in range(n)]
    texts: list[str] = []
    finish: list[str] = []
    for k, s in enumerate(range(0, len(flat), batch_size)):
        results, _ = sample_plain(model, tokenizer, flat[s : s + batch_size], cfg, seed=batch_seed(seed, k))
        texts += [text for _, text, _ in results]
        finish += [why for _, _, why in results]
    imp = implicit_rewards(
        aligned=aligned,
        base=base,
        tokenizer=tokenizer,
        prompts=flat,
        responses=texts,
        batch_size=128,
        append_eos=True,
        use_chat_template=use_chat_template,
    )
    return _score(gold, flat, texts, [float(d["sum"]) for d in imp], finish)


def cd_samples(
    *,
    aligned: Any,
    base: Any,
    tokenizer: Any,
    prompts: list[str],
    gold: GoldReward,
    alpha: float,
    n: int,
    seed: int,
    max_new_tokens: int,
    reporter: Reporter | None = None,
    batch_size: int = 64,
    cd_overrides: dict[str, Any] | None = None,
    use_chat_template: bool = True,
) -> list[dict[str, Any]]:
    """n CD samples per prompt at ``alpha`` (reference settings unless ``cd_overrides`` says), scored."""
    from ml.contrastive import CDConfig, contrastive_generate

    flat = [p for p in prompts for _ in range(n)]
    cfg = CDConfig(
        **{
            "alpha": alpha,
            "seed": seed,
            "max_new_tokens": max_new_tokens,
            "batch_size": batch_size,
            "use_chat_template": use_chat_template,
            **(cd_overrides or {}),
        }
    )
    gens = contrastive_generate(
        aligned=aligned, base=base, tokenizer=tokenizer, prompts=flat, config=cfg, reporter=or_null(reporter)
    )
    return _score(
        gold,
        [g.prompt for g in gens],
        [g.text for g in gens],
        [float(g.implicit_reward.sum) for g in gens],
        [g.finish_reason for g in gens],
    )


def run_sweep(
    *,
    aligned: Any,
    base: Any,
    tokenizer: Any,
    prompts: list[str],
    gold: GoldReward,
    alphas: Sequence[float],
    n: int,
    seed: int,
    max_new_tokens: int,
    reporter: Reporter | None = None,
    keep_rows: bool = False,
    cd_overrides: dict[str, Any] | None = None,
    use_chat_template: bool = True,
) -> dict[str, Any]:
    """Everything the alpha sweep reports for one weak pair: pre, plain_post, cd[alpha], Pearson.

    ``cd_overrides``: CDConfig fields for the CD runs (e.g. {"repetition_penalty": 1.0} for an ablation)."""
    rep = or_null(reporter)
    pre = plain_samples(
        base,
        aligned=aligned,
        base=base,
        tokenizer=tokenizer,
        prompts=prompts,
        gold=gold,
        n=n,
        seed=seed,
        max_new_tokens=max_new_tokens,
        use_chat_template=use_chat_template,
        cd_overrides=cd_overrides,
    )
    post = plain_samples(
        aligned,
        aligned=aligned,
        base=base,
        tokenizer=tokenizer,
        prompts=prompts,
        gold=gold,
        n=n,
        seed=seed,
        max_new_tokens=max_new_tokens,
        use_chat_template=use_chat_template,
        cd_overrides=cd_overrides,
    )
    out: dict[str, Any] = {
        "pre": summarize(pre),
        "plain_post": summarize(post),
        "cd": [],
        "implicit_gold_pearson": pearson([r["implicit"] for r in post], [r["gold"] for r in post]),
    }
    # Its 95% interval from the n samples (Fisher's z), so one seed's correlation is read with its uncertainty.
    out["implicit_gold_pearson_ci"] = list(pearson_ci(out["implicit_gold_pearson"], len(post)))
    rows: dict[str, list[dict[str, Any]]] = {"pre": pre, "plain_post": post}
    for k, a in enumerate(alphas):
        cd = cd_samples(
            aligned=aligned,
            base=base,
            tokenizer=tokenizer,
            prompts=prompts,
            gold=gold,
            alpha=a,
            n=n,
            seed=seed,
            max_new_tokens=max_new_tokens,
            cd_overrides=cd_overrides,
            use_chat_template=use_chat_template,
        )
        out["cd"].append({"alpha": a, **summarize(cd)})
        rows[f"cd_{a:g}"] = cd
        rep.progress(SWEEP_STAGE, k + 1, len(alphas))
        if rep.should_stop():
            out["stopped"] = True
            break
    if keep_rows:
        out["rows"] = rows
    return out


# ---------------------------------------------------------------------------------------------------
# The verdict


RAISES, NO_GAIN, LOWERS = "raises", "no_gain", "lowers"


def _se(summary: dict[str, Any]) -> float:
    # Standard error read back from a 95% interval (a point interval, e.g. one value, gives 0).
    lo, hi = summary["gold_ci"]
    se: float = (hi - lo) / (2 * 1.96)
    return se


def verdict(sweep: dict[str, Any], decision_alpha: float = 0.4) -> dict[str, Any]:
    """Plain-language verdict from a sweep (``run_sweep``'s or the report's per-world summary).

    Decides on CD at ``decision_alpha`` (the reference default 0.4, the alpha ConG trains on) vs plain
    pi_post samples: a gain whose 95% interval excludes zero is "raises", a loss that does is
    "lowers", anything else "no_gain"."""
    plain = sweep["plain_post"]
    cds = {round(float(c["alpha"]), 6): c for c in sweep["cd"] if "alpha" in c}
    if round(decision_alpha, 6) not in cds:
        raise ValueError(f"the sweep has no CD run at alpha {decision_alpha}; include it in alphas")
    cd = cds[round(decision_alpha, 6)]
    diff = cd["gold_mean"] - plain["gold_mean"]
    half = 1.96 * math.sqrt(_se(cd) ** 2 + _se(plain) ** 2)
    r = sweep.get("implicit_gold_pearson")
    r_txt = (
        f"implicit-vs-gold Pearson on plain pi_post samples r = {r:.2f}"
        if r is not None and not math.isnan(r)
        else "implicit-vs-gold Pearson unavailable"
    )
    best = max(sweep["cd"], key=lambda c: c["gold_mean"])
    delta = (
        f"{diff:+.3f} gold at alpha {decision_alpha:g} vs plain pi_post "
        f"(95% interval {diff - half:+.3f}..{diff + half:+.3f})"
    )
    # CD at alpha = 1 uses CD's decoding settings (plausibility cut, repetition penalty) without the
    # log-ratio; comparing with it separates what the log-ratio does from what those settings do.
    ratio_effect = None
    if 1.0 in cds and decision_alpha != 1.0:
        d1 = cd["gold_mean"] - cds[1.0]["gold_mean"]
        h1 = 1.96 * math.sqrt(_se(cd) ** 2 + _se(cds[1.0]) ** 2)
        ratio_effect = (d1, d1 - h1, d1 + h1)
    code, msg = _decide(diff, diff - half, diff + half, ratio_effect, r, r_txt, delta, decision_alpha)
    return {
        "verdict": code,
        "message": msg,
        "decision_alpha": decision_alpha,
        "gold_gain": diff,
        "gold_gain_ci": [diff - half, diff + half],
        "implicit_gold_pearson": r,
        "best_alpha": best["alpha"],
        "best_alpha_gold": best["gold_mean"],
        "log_ratio_effect": None if ratio_effect is None else ratio_effect[0],
        "log_ratio_effect_ci": None if ratio_effect is None else [ratio_effect[1], ratio_effect[2]],
    }


def _decide(
    diff: float,
    lo: float,
    hi: float,
    ratio_effect: tuple[float, float, float] | None,
    r: float | None,
    r_txt: str,
    delta: str,
    decision_alpha: float,
) -> tuple[str, str]:
    """(code, message) from the gain over plain pi_post (diff, lo..hi) and the log-ratio effect."""
    if lo > 0:
        code = RAISES
        msg = f"CD raises gold reward here: {delta}; {r_txt}. ConG's premise holds for this weak pair."
    elif hi < 0 and (ratio_effect is None or ratio_effect[2] < 0):
        code = LOWERS
        msg = (
            f"CD does not raise gold reward here; it lowers it: {delta}; {r_txt}. Weak alignment may have "
            "learned a shortcut: the log-ratio does not favour what the gold reward favours, so training a "
            "strong model on CD samples is not expected to beat plain weak supervision."
        )
    elif hi < 0 and ratio_effect is not None:  # always set here: the branch above takes hi < 0 without one
        code = LOWERS
        msg = (
            f"CD does not raise gold reward here; it lowers it: {delta}; {r_txt}. The loss comes from CD's "
            f"decoding settings, not from the log-ratio (alpha {decision_alpha:g} vs CD at alpha 1: "
            f"{ratio_effect[0]:+.3f}, 95% interval {ratio_effect[1]:+.3f}..{ratio_effect[2]:+.3f}): the "
            "log-ratio adds nothing here. CD beyond the log-ratio only removes pi_pre's prior and sharpens, "
            "which helps only where that prior works against the preference."
        )
    else:
        code = NO_GAIN
        msg = (
            f"CD does not raise gold reward here: {delta}, within noise; {r_txt}. By gold, ConG's CD "
            "training data would be no better than plain pi_post samples."
        )
    if code != RAISES and r is not None and not math.isnan(r) and r < 0:
        msg += " The negative correlation itself is a warning: pi_post's log-ratio rewards something gold does not."
    return code, msg


def verdict_over_seeds(sweeps: list[dict[str, Any]], decision_alpha: float = 0.4) -> dict[str, Any]:
    """The verdict for several weak pairs built alike (seeds): per-seed gains over plain pi_post, paired by
    seed, with a Student-t 95% interval over seeds. One seed falls back to ``verdict``."""
    if len(sweeps) == 1:
        return verdict(sweeps[0], decision_alpha)
    key = round(decision_alpha, 6)

    def cd_at(sw: dict[str, Any], a: float) -> float:
        gold_mean: float = next(c for c in sw["cd"] if round(float(c["alpha"]), 6) == a)["gold_mean"]
        return gold_mean

    gains = mean_ci([cd_at(sw, key) - sw["plain_post"]["gold_mean"] for sw in sweeps])
    ratio_effect = None
    if all(any(round(float(c["alpha"]), 6) == 1.0 for c in sw["cd"]) for sw in sweeps) and key != 1.0:
        e = mean_ci([cd_at(sw, key) - cd_at(sw, 1.0) for sw in sweeps])
        ratio_effect = (e.mean, e.lo, e.hi)
    pearsons = [sw.get("implicit_gold_pearson") for sw in sweeps]
    rs: list[float] = [x for x in pearsons if x is not None and not math.isnan(x)]
    r = fisher_z_mean_ci(rs).mean if rs else None  # averaged as z, where correlations add up
    r_txt = (
        f"mean implicit-vs-gold Pearson on plain pi_post samples r = {r:.2f}"
        if r is not None
        else "implicit-vs-gold Pearson unavailable"
    )
    delta = (
        f"{gains.mean:+.3f} gold at alpha {decision_alpha:g} vs plain pi_post, mean over {len(sweeps)} seeds "
        f"(95% interval over seeds {gains.lo:+.3f}..{gains.hi:+.3f})"
    )
    code, msg = _decide(gains.mean, gains.lo, gains.hi, ratio_effect, r, r_txt, delta, decision_alpha)
    return {
        "verdict": code,
        "message": msg,
        "decision_alpha": decision_alpha,
        "gold_gain": gains.mean,
        "gold_gain_ci": [gains.lo, gains.hi],
        "implicit_gold_pearson": r,
        "n_seeds": len(sweeps),
        "log_ratio_effect": None if ratio_effect is None else ratio_effect[0],
        "log_ratio_effect_ci": None if ratio_effect is None else [ratio_effect[1], ratio_effect[2]],
    }


@dataclass(kw_only=True)
class PreflightConfig:
    """The pre-flight check's own settings (the alphas and CD overrides travel beside it, see ml.resolve)."""

    n_samples: int = field(
        default=2,
        metadata={
            "help": "Samples per prompt (100-200 prompts x 2 separate a 0.05 gold difference on the toy worlds)."
        },
    )
    max_prompts: int | None = field(default=200, metadata={"help": "Use only the first N prompts (None = all)."})
    max_new_tokens: int = field(default=64, metadata={"help": "Longest sampled response, in tokens."})
    seed: int = field(default=0, metadata={"help": "Sampling seed."})
    use_chat_template: bool = field(
        default=True, metadata={"help": "Format prompts with the tokenizer's chat template when it has one."}
    )

    def __post_init__(self) -> None:
        if self.n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {self.n_samples}")
        if self.max_prompts is not None and self.max_prompts < 1:
            raise ValueError(f"max_prompts must be None or >= 1, got {self.max_prompts}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


def preflight(
    aligned: Any,
    base: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    gold: GoldReward | str | Callable[[str, str], float],
    *,
    alphas: Sequence[float] = (0.0, 0.4, 1.0),
    n: int = 2,
    seed: int = 0,
    max_new_tokens: int = 64,
    decision_alpha: float = 0.4,
    use_chat_template: bool = True,
    cd_overrides: dict[str, Any] | None = None,
    reporter: Reporter | None = None,
) -> dict[str, Any]:
    """Run the pre-flight check on a loaded weak pair (aligned = pi_post, base = pi_pre).

    Returns {"verdict", "message", "gold_gain", "gold_gain_ci", "implicit_gold_pearson", "sweep": {...}}
    (with "stopped": True and no verdict when the reporter asked to stop). ``n`` samples per prompt;
    100-200 prompts x 2 samples separate a 0.05 gold difference on the toy worlds. ``cd_overrides``:
    CDConfig fields for the CD runs (e.g. {"repetition_penalty_scope": "generated"})."""
    if isinstance(prompts, str) or not prompts:
        raise ValueError("preflight needs a list of at least one prompt")
    if n < 1:
        raise ValueError(f"n (samples per prompt) must be >= 1, got {n}")
    if any(not 0.0 <= float(a) <= 1.0 for a in alphas):
        raise ValueError(f"alphas must lie in [0, 1], got {list(alphas)}")
    alphas = sorted(set(float(a) for a in alphas) | {float(decision_alpha), 1.0})
    sweep = run_sweep(
        aligned=aligned,
        base=base,
        tokenizer=tokenizer,
        prompts=list(prompts),
        gold=resolve_gold(gold),
        alphas=alphas,
        n=n,
        seed=seed,
        max_new_tokens=max_new_tokens,
        reporter=reporter,
        cd_overrides=cd_overrides,
        use_chat_template=use_chat_template,
    )
    if sweep.get("stopped"):
        return {"stopped": True, "sweep": sweep}
    return {**verdict(sweep, decision_alpha), "sweep": sweep}


def preflight_dirs(
    aligned: str,
    base: str,
    prompts: str,
    gold: GoldReward | str | Callable[[str, str], float],
    *,
    n_prompts: int | None = 200,
    device: str | None = None,
    dtype: str | None = None,
    reporter: Reporter | None = None,
    **kw: Any,
) -> dict[str, Any]:
    """``preflight`` on model folders and a prompt JSONL (the first ``n_prompts`` prompts; None = all).
    Other keyword arguments go to ``preflight``."""
    from ml.io import read_prompts
    from ml.modeling import check_same_vocab, load_causal_lm, load_tokenizer, pick_device

    g = resolve_gold(gold)  # an unknown gold name fails before any model is loaded
    ps = read_prompts(prompts, n_prompts)
    if not ps:
        raise ValueError(f"{prompts} holds no prompts")
    dev = pick_device(device)
    tok = load_tokenizer(aligned)
    check_same_vocab(tok, load_tokenizer(base))
    a = load_causal_lm(aligned, device=dev, dtype=dtype)
    b = load_causal_lm(base, device=dev, dtype=dtype)
    return {
        "aligned": aligned,
        "base": base,
        "prompts": prompts,
        "gold": g.name,
        "n_prompts": len(ps),
        **preflight(a, b, tok, ps, g, reporter=reporter, **kw),
    }
