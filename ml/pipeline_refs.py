"""Reference methods measured beside the paper's, so that ConG's numbers can be read against them:

- ``best_of_n``: strong SFT on the best of N plain pi_post samples per prompt, ranked by the implicit reward
  (log pi_post - log pi_pre, summed). N = 2 by default, which costs what CD costs (two forwards per token): does CD
  beat simply picking by the same reward?
- ``ceiling``: strong SFT on the best of k pi_post samples by the evaluation gold itself: an oracle's data, the
  upper reference that the performance gap recovered (``pgr``) is measured against.
- ``weak_sft_1ep``: WeakSFT trained for one epoch, to tell its result from over-fitting to the weak samples.

best_of_n and ceiling draw from one plain sampling stage (``plain_k``: max(N, k) samples per prompt, the first N
for best_of_n). ``pgr`` = (method - weak_post) / (ceiling - weak_post) on the gold mean, per method row.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ml.io import read_jsonl, write_jsonl
from ml.pipeline_config import PICKED_METHODS

if TYPE_CHECKING:
    from ml.pipeline import PipelineConfig, _Runner

SELECTED = "data.jsonl"  # the chosen sample per prompt, in each selection folder (select_best_of_n, select_ceiling)


def best_per_prompt(rows: list[dict[str, Any]], n: int, scores: list[float | None]) -> list[dict[str, Any]]:
    """Per prompt index, the row with the highest score (``scores`` in ``rows``' order) among its first ``n``
    samples (the lowest sample number wins a tie), in prompt order. A row without a score (None) is never picked."""
    best: dict[int, tuple[float, int, dict[str, Any]]] = {}
    for r, v in zip(rows, scores):
        s = int(r.get("sample", 0))
        if s >= n or v is None:
            continue
        i = int(r["index"])
        if i not in best or (float(v), -s) > (best[i][0], -best[i][1]):
            best[i] = (float(v), s, r)
    return [best[i][2] for i in sorted(best)]


def _select(R: _Runner, name: str, samples: str, n: int, score: Callable[[list[dict[str, Any]]], list[Any]]) -> str:
    """Write the selected rows under ``select_<name>/`` (once; a rerun keeps them) and return their file."""
    out = Path(R.dir(f"select_{name}")) / SELECTED
    if R.dry or out.exists():
        return str(out)
    rows = [r for r in read_jsonl(samples) if int(r.get("sample", 0)) < n]
    picked = best_per_prompt(rows, n, score(rows))
    if not picked:
        raise ValueError(f"{name}: no sample could be ranked in {samples}")
    write_jsonl(out, picked)
    R.r.log(f"pipeline: {name} keeps {len(picked)} samples (the best of {n} per prompt)")
    return str(out)


def _implicit(rows: list[dict[str, Any]]) -> list[Any]:
    return [r.get("implicit_reward_sum") for r in rows]


def reference_models(c: PipelineConfig, R: _Runner, weak_aligned: str, common: dict[str, Any]) -> dict[str, str]:
    """Train the reference methods the config asks for (best_of_n, ceiling); model folder by method."""
    from ml.gold import get_gold
    from ml.stages.generate import PlainGenerateConfig, plain_generate
    from ml.stages.sft import SFTStageConfig, sft

    wanted = sorted(PICKED_METHODS & set(c.methods))
    if not wanted:
        return {}
    k = max(c.best_of_n_samples if "best_of_n" in wanted else 1, c.ceiling_samples if "ceiling" in wanted else 1)
    pg = PlainGenerateConfig(
        model=weak_aligned,
        base=c.weak_base,
        output_dir=R.dir("plain_k"),
        samples_per_prompt=k,
        sampling=R.decoding(),  # type: ignore[arg-type]  # a dict of CDConfig fields: __post_init__ coerces it
        **common,
    )
    samples = R.stage("plain_k", plain_generate, pg, generation=True)["samples"]
    models: dict[str, str] = {}
    gold = get_gold(c.eval_gold or c.gold)

    def by_gold(rows: list[dict[str, Any]]) -> list[Any]:  # batched where the gold can (a reward model)
        return list(gold.score_many([(str(r["prompt"]), str(r["response"])) for r in rows]))

    for m in wanted:
        if m == "best_of_n":
            data = _select(R, m, samples, c.best_of_n_samples, _implicit)
        else:
            data = _select(R, m, samples, c.ceiling_samples, by_gold)
        s = SFTStageConfig(**R.strong_kw({"model": c.strong, "output_dir": R.dir(f"sft_{m}"), "data": data, **c.sft}))
        models[m] = R.stage(f"sft_{m}", sft, s)["model_dir"]
    return models


def pgr(rows: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """Performance gap recovered per method: (gold - weak_post's) / (ceiling's - weak_post's); None without both
    references, or when the ceiling is not above weak_post (no gap to recover: a ratio over a negative gap would
    rank the methods backwards)."""
    low = (rows.get("weak_post") or {}).get("gold_mean")
    high = (rows.get("ceiling") or {}).get("gold_mean")
    if low is None or high is None or high <= low:
        return dict.fromkeys(rows)
    return {
        m: (r["gold_mean"] - low) / (high - low) if r.get("gold_mean") is not None else None for m, r in rows.items()
    }
