"""The paper's first claim, measured: contrastive-decoding samples carry more reward than plain samples.

For one weak pair (pi_post, pi_pre) and one prompt file this stage samples
    - CD responses at each alpha in ``alphas`` (alpha = 1 is pi_post inside the plausible set), and
    - plain pi_post responses (``model.generate``, the WeakSFT data),
all with the same sampling settings and seed, then scores every response with
    - the gold reward (the if:judge constraint fraction, and if:strict all-satisfied accuracy), and
    - the implicit reward log pi_post(y|x) - log pi_pre(y|x) (summed, and per token),
and reports means with 95% intervals, the paired CD-minus-plain gold difference per prompt with its
interval, and the correlation between implicit and gold reward over all responses (Pearson with a
Fisher-z interval, and Spearman). Output: output_dir/claim.json (= DONE.json) and claim.md.
Generation reuses ml.stages.generate, so every sampling run is resumable and cached.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ml.io import mark_done, stage_done, write_json
from ml.reporter import Reporter, or_null

STAGE = "claim"


@dataclass(kw_only=True)
class ClaimConfig:
    weak_base: str = field(metadata={"help": "pi_pre folder."})
    weak_aligned: str = field(metadata={"help": "pi_post folder (e.g. a weak_align stage's model/)."})
    prompts: str = field(metadata={"help": "Prompt JSONL (the judge's held-out split, say)."})
    output_dir: str = field(metadata={"help": "Folder for per-method samples, claim.json and claim.md."})
    gold: str = field(default="if:judge", metadata={"help": "Registered gold reward (fraction-valued)."})
    strict_gold: str = field(
        default="if:strict", metadata={"help": "Second, all-or-nothing gold reported beside it ('' = none)."}
    )
    alphas: list[float] = field(default_factory=lambda: [0.0, 0.4, 1.0], metadata={"help": "CD alphas to sample."})
    max_prompts: int | None = field(default=48, metadata={"help": "Use only the first N prompts (None = all)."})
    samples_per_prompt: int = field(default=1, metadata={"help": "Responses per prompt per method."})
    max_new_tokens: int = field(default=64, metadata={"help": "Longest response, in tokens."})
    batch_size: int = field(default=16, metadata={"help": "Prompts decoded together."})
    temperature: float = field(default=0.8, metadata={"help": "Sampling temperature (reference 0.8)."})
    top_p: float = field(default=0.95, metadata={"help": "Nucleus top-p (reference 0.95)."})
    repetition_penalty: float = field(default=1.2, metadata={"help": "Repetition penalty (reference 1.2)."})
    seed: int = field(default=0, metadata={"help": "Sampling seed, shared by every method."})
    device: str | None = field(default=None, metadata={"help": "'cpu', 'cuda'...; None = CUDA when present."})

    def __post_init__(self) -> None:
        for name in ("weak_base", "weak_aligned", "prompts", "output_dir"):
            if not getattr(self, name):
                raise ValueError(f"{name} is required")
        if not self.alphas or any(not 0.0 <= a <= 1.0 for a in self.alphas):
            raise ValueError(f"alphas must be a non-empty list of values in [0, 1], got {self.alphas}")
        if self.samples_per_prompt < 1 or self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError("samples_per_prompt, max_new_tokens and batch_size must be >= 1")


def pearson(xs: list[float], ys: list[float]) -> dict[str, Any]:
    """Pearson r with a 95% interval from Fisher's z (n > 3), or NaNs when undefined.

    Returns {"r": float, "ci": [lo, hi], "n": int}."""
    n = len(xs)
    nan = float("nan")
    if n < 3:
        return {"r": nan, "ci": [nan, nan], "n": n}
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    if sxx == 0 or syy == 0:
        return {"r": nan, "ci": [nan, nan], "n": n}
    r = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / math.sqrt(sxx * syy)
    r = max(-1.0, min(1.0, r))
    if n <= 3 or abs(r) == 1.0:
        return {"r": r, "ci": [r, r], "n": n}
    z, se = math.atanh(r), 1.0 / math.sqrt(n - 3)
    return {"r": r, "ci": [math.tanh(z - 1.96 * se), math.tanh(z + 1.96 * se)], "n": n}


def _ranks(xs: list[float]) -> list[float]:
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    ranks = [0.0] * len(xs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2.0  # ties share their mean rank
        i = j + 1
    return ranks


def spearman(xs: list[float], ys: list[float]) -> dict[str, Any]:
    return pearson(_ranks(xs), _ranks(ys))


def summarise(rows: list[dict[str, Any]], ci_seed: int = 0) -> dict[str, Any]:
    """Means with 95% intervals of gold, strict, implicit (sum, per token) and length for one method, and the share
    of its responses cut at the token cap (truncated_rate)."""
    from ml.stages._responses import truncated_rate
    from ml.stats import mean_ci

    out: dict[str, Any] = {"n": len(rows), "truncated_rate": truncated_rate(rows)}
    for key in ("gold", "strict", "implicit_reward_sum", "implicit_reward_mean", "n_tokens"):
        vals = [float(r[key]) for r in rows if r.get(key) is not None]
        if vals:
            ci = mean_ci(vals, seed=ci_seed)
            out[key] = {"mean": ci.mean, "ci": [ci.lo, ci.hi]}
    return out


def paired_difference(a: list[dict[str, Any]], b: list[dict[str, Any]], key: str = "gold") -> dict[str, Any]:
    """Mean of a - b over (prompt index, sample) present in both, with a 95% t interval."""
    from ml.stats import mean_ci

    bmap = {(r["index"], r.get("sample", 0)): r[key] for r in b}
    diffs = [
        float(r[key]) - float(bmap[(r["index"], r.get("sample", 0))])
        for r in a
        if (r["index"], r.get("sample", 0)) in bmap
    ]
    ci = mean_ci(diffs)
    wins = sum(d > 0 for d in diffs)
    ties = sum(d == 0 for d in diffs)
    return {
        "mean": ci.mean,
        "ci": [ci.lo, ci.hi],
        "n": len(diffs),
        "wins": wins,
        "ties": ties,
        "losses": len(diffs) - wins - ties,
    }


def _method_name(alpha: float) -> str:
    return f"cd_alpha{alpha:g}"


def measure_claim(config: ClaimConfig, reporter: Reporter | None = None) -> dict[str, Any]:
    done = stage_done(config.output_dir)
    if done is not None:
        return done
    from ml.contrastive import CDConfig
    from ml.gold import get_gold
    from ml.io import read_jsonl
    from ml.stages.generate import CDGenerateConfig, PlainGenerateConfig, cd_generate, plain_generate

    rep = or_null(reporter)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", asdict(config))
    t0 = time.time()
    # Any-valued: each entry is a different CDConfig field (float, int, bool), spread in with **.
    decoding: dict[str, Any] = dict(
        temperature=config.temperature,
        top_p=config.top_p,
        repetition_penalty=config.repetition_penalty,
        max_new_tokens=config.max_new_tokens,
        batch_size=config.batch_size,
        seed=config.seed,
        do_sample=True,
        use_chat_template=True,
    )
    common: dict[str, Any] = dict(
        prompts=config.prompts,
        max_prompts=config.max_prompts,
        device=config.device,
        samples_per_prompt=config.samples_per_prompt,
    )
    files: dict[str, str] = {}
    timings: dict[str, float] = {}
    for alpha in config.alphas:
        name = _method_name(alpha)
        t = time.time()
        cfg = CDGenerateConfig(
            aligned=config.weak_aligned,
            base=config.weak_base,
            output_dir=str(out / name),
            cd=CDConfig(alpha=alpha, **decoding),
            **common,
        )
        s = cd_generate(cfg, rep)
        if s.get("stopped"):
            return {"stage": STAGE, "stopped": True, "at": name}
        files[name] = s["samples"]
        timings[name] = round(time.time() - t, 1)
    t = time.time()
    pcfg = PlainGenerateConfig(
        model=config.weak_aligned,
        base=config.weak_base,
        output_dir=str(out / "plain"),
        sampling=CDConfig(**decoding),
        **common,
    )
    s = plain_generate(pcfg, rep)
    if s.get("stopped"):
        return {"stage": STAGE, "stopped": True, "at": "plain"}
    files["plain"] = s["samples"]
    timings["plain"] = round(time.time() - t, 1)

    gold = get_gold(config.gold)
    strict = get_gold(config.strict_gold) if config.strict_gold else None
    rows_by: dict[str, list[dict[str, Any]]] = {}
    for name, path in files.items():
        rows = read_jsonl(path)
        for r in rows:
            r["gold"] = gold(r["prompt"], r["response"])
            if strict is not None:
                r["strict"] = strict(r["prompt"], r["response"])
        rows_by[name] = rows

    methods = {name: summarise(rows, config.seed) for name, rows in rows_by.items()}
    vs_plain = {name: paired_difference(rows, rows_by["plain"]) for name, rows in rows_by.items() if name != "plain"}
    pooled = [r for rows in rows_by.values() for r in rows if r.get("implicit_reward_sum") is not None]
    xs = [float(r["implicit_reward_sum"]) for r in pooled]
    ys = [float(r["gold"]) for r in pooled]
    xs_tok = [float(r["implicit_reward_mean"]) for r in pooled]
    correlation = {
        "pearson_sum": pearson(xs, ys),
        "spearman_sum": spearman(xs, ys),
        "pearson_per_token": pearson(xs_tok, ys),
        "spearman_per_token": spearman(xs_tok, ys),
    }
    per_method_corr = {
        name: spearman([float(r["implicit_reward_sum"]) for r in rows], [float(r["gold"]) for r in rows])
        for name, rows in rows_by.items()
    }
    summary = {
        "stage": STAGE,
        "gold": config.gold,
        "n_prompts": len({r["index"] for r in rows_by["plain"]}),
        "samples_per_prompt": config.samples_per_prompt,
        "max_new_tokens": config.max_new_tokens,
        "methods": methods,
        "gold_minus_plain": vs_plain,
        "implicit_vs_gold": correlation,
        "implicit_vs_gold_by_method": per_method_corr,
        "generation_seconds": timings,
        "seconds": round(time.time() - t0, 1),
        "weak_aligned": config.weak_aligned,
        "weak_base": config.weak_base,
        "prompts": config.prompts,
    }
    (out / "claim.md").write_text(claim_markdown(summary), encoding="utf-8")
    write_json(out / "claim.json", summary)
    rep.log(f"{STAGE}: results in {out / 'claim.md'}")
    return mark_done(out, summary)


def _f(x: Any, d: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{d}f}"


def _ci(m: dict[str, Any] | None, d: int = 3) -> str:
    if not m:
        return "–"
    return f"{_f(m['mean'], d)} [{_f(m['ci'][0], d)}, {_f(m['ci'][1], d)}]"


def claim_markdown(s: dict[str, Any]) -> str:
    lines = [
        f"CD vs plain pi_post samples — gold `{s['gold']}`, {s['n_prompts']} prompts x "
        f"{s['samples_per_prompt']} sample(s), up to {s['max_new_tokens']} new tokens",
        "",
        "| Samples | Gold (constraint fraction) | Strict accuracy | Implicit reward (sum) | Implicit / token "
        "| Tokens | Cut | Gold - plain (paired) | W/T/L vs plain |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in s["methods"].items():
        d = s["gold_minus_plain"].get(name)
        wtl = f"{d['wins']}/{d['ties']}/{d['losses']}" if d else "–"
        lines.append(
            f"| {name} | {_ci(m.get('gold'))} | {_ci(m.get('strict'))} | {_ci(m.get('implicit_reward_sum'), 2)} "
            f"| {_ci(m.get('implicit_reward_mean'))} | {_f(m.get('n_tokens', {}).get('mean'), 1)} "
            f"| {_f(m.get('truncated_rate'), 2)} | {_ci(d) if d else '–'} | {wtl} |"
        )
    c = s["implicit_vs_gold"]
    lines += [
        "",
        f"Implicit (sum) vs gold over all {c['pearson_sum']['n']} responses: Pearson "
        f"{_f(c['pearson_sum']['r'])} [{_f(c['pearson_sum']['ci'][0])}, {_f(c['pearson_sum']['ci'][1])}], "
        f"Spearman {_f(c['spearman_sum']['r'])}; per-token implicit vs gold: Pearson "
        f"{_f(c['pearson_per_token']['r'])}, Spearman {_f(c['spearman_per_token']['r'])}.",
        "Within each method (Spearman, implicit sum vs gold): "
        + ", ".join(f"{k} {_f(v['r'])}" for k, v in s["implicit_vs_gold_by_method"].items())
        + ".",
        "Intervals are 95% (Student t for means and paired differences, Fisher z for Pearson r).",
        "",
    ]
    return "\n".join(lines)
