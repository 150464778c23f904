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
