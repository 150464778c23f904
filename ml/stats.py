"""Small statistics for evaluation: a mean with a 95% interval, and paired win rates.

No scipy here (not a dependency): the Student-t quantile comes from a short table for small degrees
of freedom and a Cornish-Fisher expansion beyond it (error < 1e-3, far below sampling noise).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# Two-sided 95% Student-t quantiles t_{0.975, df} for df = 1..30.
_T975 = [
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
]
_Z975 = 1.959964


def t_quantile_975(df: int) -> float:
    if df < 1:
        raise ValueError("degrees of freedom must be >= 1")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    # Cornish-Fisher expansion of the t quantile in powers of 1/df.
    return (
        z
        + (z**3 + z) / (4 * df)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)
    )


@dataclass(frozen=True)
class MeanCI:
    mean: float
    lo: float
    hi: float
    n: int

    def as_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "ci": [self.lo, self.hi], "n": self.n}


def mean_ci(values: Sequence[float], *, method: str = "t", n_boot: int = 2000, seed: int = 0) -> MeanCI:
    """Mean with a 95% interval: Student-t (default) or percentile bootstrap.

    With one value the interval is the point itself (nothing to estimate spread from); with none,
    everything is NaN.
    """
    xs = [float(v) for v in values]
    n = len(xs)
    if n == 0:
        nan = float("nan")
        return MeanCI(nan, nan, nan, 0)
    m = sum(xs) / n
    if n == 1:
        return MeanCI(m, m, m, 1)
    if method == "t":
        var = sum((x - m) ** 2 for x in xs) / (n - 1)
        half = t_quantile_975(n - 1) * math.sqrt(var / n)
        return MeanCI(m, m - half, m + half, n)
    if method == "bootstrap":
        rng = random.Random(seed)
        means = sorted(sum(rng.choices(xs, k=n)) / n for _ in range(n_boot))
        lo = means[int(0.025 * (n_boot - 1))]
        hi = means[int(math.ceil(0.975 * (n_boot - 1)))]
        # Percentile bootstrap need not contain the sample mean in odd cases; widen to include it.
        return MeanCI(m, min(lo, m), max(hi, m), n)
    raise ValueError(f"method must be 't' or 'bootstrap', not {method!r}")


def win_rate(ours: Mapping[Any, float], theirs: Mapping[Any, float]) -> dict[str, float | int]:
    """Paired win rate over the keys both have (e.g. (prompt index, sample index)); ties count half.

    Returns {"win_rate", "wins", "ties", "losses", "n"}; win_rate is NaN when nothing pairs up.
    """
    keys = [k for k in ours if k in theirs]
    wins = sum(1 for k in keys if ours[k] > theirs[k])
    ties = sum(1 for k in keys if ours[k] == theirs[k])
    n = len(keys)
    rate = (wins + 0.5 * ties) / n if n else float("nan")
    return {"win_rate": rate, "wins": wins, "ties": ties, "losses": n - wins - ties, "n": n}


def paired_diff(ours: Mapping[Any, float | None], theirs: Mapping[Any, float | None]) -> dict[str, Any]:
    """ours - theirs paired by key (a seed: both measured on the same data and models), with a Student-t 95%
    interval over the differences; keys missing or None on either side are left out and not counted."""
    diffs = [
        float(a) - float(b)
        for k, a in ours.items()
        if a is not None and (b := theirs.get(k)) is not None and math.isfinite(a) and math.isfinite(b)
    ]
    return mean_ci(diffs).as_dict()


def clustered_mean_ci(values: Sequence[float], clusters: Sequence[Any]) -> MeanCI:
    """Mean with a 95% interval that treats each cluster (a prompt: its several samples are not independent) as one
    observation: the mean of the cluster means, with a t interval over clusters. ``n`` counts the clusters."""
    if len(values) != len(clusters):
        raise ValueError("one cluster per value is needed")
    groups: dict[Any, list[float]] = {}
    for v, c in zip(values, clusters):
        groups.setdefault(c, []).append(float(v))
    return mean_ci([sum(g) / len(g) for g in groups.values()])


def _atanh(r: float) -> float:
    # |r| = 1 has an infinite z: clip to just inside, so one perfect correlation does not make the interval infinite.
    r = max(-0.999999, min(0.999999, r))
    return 0.5 * math.log((1 + r) / (1 - r))


def pearson_ci(r: float, n: int) -> tuple[float, float]:
    """95% interval of one Pearson correlation from n pairs (Fisher's z: atanh(r) +- 1.96 / sqrt(n - 3))."""
    if n <= 3 or not math.isfinite(r):
        return (float("nan"), float("nan"))
    z, half = _atanh(r), _Z975 / math.sqrt(n - 3)
    return (math.tanh(z - half), math.tanh(z + half))


def fisher_z_mean_ci(rs: Sequence[float]) -> MeanCI:
    """Correlations averaged in Fisher's z space (where their sampling distribution is near normal), with a t
    interval over them, mapped back to r: the interval stays inside [-1, 1] and is asymmetric where it should be."""
    zs = [_atanh(float(r)) for r in rs if r is not None and math.isfinite(r)]
    s = mean_ci(zs)
    return MeanCI(math.tanh(s.mean), math.tanh(s.lo), math.tanh(s.hi), s.n) if zs else s


def pearson(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Pearson's r of paired values; NaN with fewer than 3 pairs or no spread."""
    n = len(xs)
    if n < 3:
        return float("nan")
    mx, my = sum(xs) / n, sum(ys) / n
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else float("nan")
