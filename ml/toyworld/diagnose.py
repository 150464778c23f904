"""Pre-flight check for any weak pair, before spending GPU hours on ConG.

Two measurements on held-out prompts:
1. the Pearson correlation between the implicit reward log pi_post/pi_pre and the gold reward on
   plain pi_post samples. A weak pair whose log-ratio does not track gold cannot guide CD. It is a
   necessary sign, not a sufficient one: a balanced-prior control world has a positive correlation
   and yet CD gains nothing there.
2. a small alpha sweep: gold reward of CD samples vs plain pi_post samples. This is the deciding
   measurement, since CD beyond the log-ratio only removes pi_pre's prior and sharpens, which helps
   only where that prior works against the preference.

Generic: takes loaded models, a tokenizer, prompts and a gold reward (a ``GoldReward``, a
registered name, or any callable (prompt, response) -> float).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from ml.gold import GoldReward, get_gold
from ml.reporter import Reporter

from .sweep import run_sweep

RAISES, NO_GAIN, LOWERS = "raises", "no_gain", "lowers"


def _gold(gold: GoldReward | str | Callable[[str, str], float]) -> GoldReward:
    if isinstance(gold, GoldReward):
        return gold
    if isinstance(gold, str):
        return get_gold(gold)
    if callable(gold):
        return GoldReward(name=getattr(gold, "__name__", "custom"), score=gold)
    raise ValueError("gold must be a GoldReward, a registered gold name or a callable (prompt, response) -> float")


def _se(summary: dict) -> float:
    # Standard error read back from a 95% interval (a point interval, e.g. one value, gives 0).
    lo, hi = summary["gold_ci"]
    return (hi - lo) / (2 * 1.96)


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
    r_txt = f"implicit-vs-gold Pearson on plain pi_post samples r = {r:.2f}" if r is not None and not math.isnan(r) \
        else "implicit-vs-gold Pearson unavailable"
    best = max(sweep["cd"], key=lambda c: c["gold_mean"])
    delta = f"{diff:+.3f} gold at alpha {decision_alpha:g} vs plain pi_post (95% interval {diff - half:+.3f}..{diff + half:+.3f})"
    # CD at alpha = 1 uses CD's decoding settings (plausibility cut, repetition penalty) without the
    # log-ratio; comparing with it separates what the log-ratio does from what those settings do.
    ratio_effect = None
    if 1.0 in cds and decision_alpha != 1.0:
        d1 = cd["gold_mean"] - cds[1.0]["gold_mean"]
        h1 = 1.96 * math.sqrt(_se(cd) ** 2 + _se(cds[1.0]) ** 2)
        ratio_effect = (d1, d1 - h1, d1 + h1)
    code, msg = _decide(diff, diff - half, diff + half, ratio_effect, r, r_txt, delta, decision_alpha)
    return {"verdict": code, "message": msg, "decision_alpha": decision_alpha, "gold_gain": diff,
            "gold_gain_ci": [diff - half, diff + half], "implicit_gold_pearson": r,
            "best_alpha": best["alpha"], "best_alpha_gold": best["gold_mean"],
            "log_ratio_effect": None if ratio_effect is None else ratio_effect[0],
            "log_ratio_effect_ci": None if ratio_effect is None else [ratio_effect[1], ratio_effect[2]]}


def _decide(diff, lo, hi, ratio_effect, r, r_txt, delta, decision_alpha):
    """(code, message) from the gain over plain pi_post (diff, lo..hi) and the log-ratio effect."""
    if lo > 0:
        code = RAISES
        msg = f"CD raises gold reward here: {delta}; {r_txt}. ConG's premise holds for this weak pair."
    elif hi < 0 and (ratio_effect is None or ratio_effect[2] < 0):
        code = LOWERS
        msg = (f"CD does not raise gold reward here; it lowers it: {delta}; {r_txt}. Weak alignment may have "
               "learned a shortcut: the log-ratio does not favour what the gold reward favours, so training a "
               "strong model on CD samples is not expected to beat plain weak supervision.")
    elif hi < 0:
        code = LOWERS
        msg = (f"CD does not raise gold reward here; it lowers it: {delta}; {r_txt}. The loss comes from CD's "
               f"decoding settings, not from the log-ratio (alpha {decision_alpha:g} vs CD at alpha 1: "
               f"{ratio_effect[0]:+.3f}, 95% interval {ratio_effect[1]:+.3f}..{ratio_effect[2]:+.3f}): the "
               "log-ratio adds nothing here. CD beyond the log-ratio only removes pi_pre's prior and sharpens, "
               "which helps only where that prior works against the preference.")
    else:
        code = NO_GAIN
        msg = (f"CD does not raise gold reward here: {delta}, within noise; {r_txt}. By gold, ConG's CD "
               "training data would be no better than plain pi_post samples.")
    if code != RAISES and r is not None and not math.isnan(r) and r < 0:
        msg += " The negative correlation itself is a warning: pi_post's log-ratio rewards something gold does not."
    return code, msg


def verdict_over_seeds(sweeps: list[dict[str, Any]], decision_alpha: float = 0.4) -> dict[str, Any]:
    """The verdict for several weak pairs built alike (seeds): per-seed gains over plain pi_post, paired by
    seed, with a Student-t 95% interval over seeds. One seed falls back to ``verdict``."""
    from ml.stats import mean_ci

    if len(sweeps) == 1:
        return verdict(sweeps[0], decision_alpha)
    key = round(decision_alpha, 6)

    def cd_at(sw, a):
        return next(c for c in sw["cd"] if round(float(c["alpha"]), 6) == a)["gold_mean"]

    gains = mean_ci([cd_at(sw, key) - sw["plain_post"]["gold_mean"] for sw in sweeps])
    ratio_effect = None
    if all(any(round(float(c["alpha"]), 6) == 1.0 for c in sw["cd"]) for sw in sweeps) and key != 1.0:
        e = mean_ci([cd_at(sw, key) - cd_at(sw, 1.0) for sw in sweeps])
        ratio_effect = (e.mean, e.lo, e.hi)
    rs = [sw.get("implicit_gold_pearson") for sw in sweeps]
    rs = [x for x in rs if x is not None and not math.isnan(x)]
    r = sum(rs) / len(rs) if rs else None
    r_txt = (f"mean implicit-vs-gold Pearson on plain pi_post samples r = {r:.2f}" if r is not None
             else "implicit-vs-gold Pearson unavailable")
    delta = (f"{gains.mean:+.3f} gold at alpha {decision_alpha:g} vs plain pi_post, mean over {len(sweeps)} seeds "
             f"(95% interval over seeds {gains.lo:+.3f}..{gains.hi:+.3f})")
    code, msg = _decide(gains.mean, gains.lo, gains.hi, ratio_effect, r, r_txt, delta, decision_alpha)
    return {"verdict": code, "message": msg, "decision_alpha": decision_alpha, "gold_gain": gains.mean,
            "gold_gain_ci": [gains.lo, gains.hi], "implicit_gold_pearson": r, "n_seeds": len(sweeps),
            "log_ratio_effect": None if ratio_effect is None else ratio_effect[0],
            "log_ratio_effect_ci": None if ratio_effect is None else [ratio_effect[1], ratio_effect[2]]}


def preflight(aligned, base, tokenizer, prompts: Sequence[str],
              gold: GoldReward | str | Callable[[str, str], float], *, alphas: Sequence[float] = (0.0, 0.4, 1.0),
              n: int = 2, seed: int = 0, max_new_tokens: int = 64, decision_alpha: float = 0.4,
              reporter: Reporter | None = None) -> dict[str, Any]:
    """Run the pre-flight check on a loaded weak pair (aligned = pi_post, base = pi_pre).

    Returns {"verdict", "message", "gold_gain", "gold_gain_ci", "implicit_gold_pearson", "sweep": {...}}.
    ``n`` samples per prompt; 100-200 prompts x 2 samples separate a 0.05 gold difference on the toy worlds."""
    if not prompts:
        raise ValueError("preflight needs at least one prompt")
    alphas = sorted(set(float(a) for a in alphas) | {float(decision_alpha), 1.0})
    sweep = run_sweep(aligned=aligned, base=base, tokenizer=tokenizer, prompts=list(prompts), gold=_gold(gold),
                      alphas=alphas, n=n, seed=seed, max_new_tokens=max_new_tokens, reporter=reporter)
    return {**verdict(sweep, decision_alpha), "sweep": sweep}


def preflight_world(world: str, seed: int = 0, data_dir=None, *, size: str = "default", n_prompts: int = 200,
                    n: int = 2, reporter: Reporter | None = None, diag_seed: int = 12345) -> dict[str, Any]:
    """The pre-flight check on a toy world's build (built first if needed), on its held-out prompts.

    ``diag_seed`` is kept apart from the report's sampling seed, so the check is an independent draw."""
    from ml.io import read_prompts
    from ml.modeling import load_causal_lm, load_tokenizer

    from .build import build

    m = build(world, seed, data_dir, reporter=reporter, size=size)
    if m.get("stopped"):
        return m
    aligned = load_causal_lm(m["models"]["weak_aligned"], device="cpu")
    base = load_causal_lm(m["models"]["weak_base"], device="cpu")
    tok = load_tokenizer(m["models"]["weak_aligned"])
    prompts = read_prompts(m["prompts"]["heldout"], n_prompts)
    out = preflight(aligned, base, tok, prompts, m["gold"], n=n, seed=diag_seed,
                    max_new_tokens=m["generation"]["max_new_tokens"], reporter=reporter)
    return {"world": world, "seed": seed, **out}
