from __future__ import annotations

import math
import random

import pytest

from ml.stats import mean_ci, t_quantile_975, win_rate


@pytest.mark.parametrize("method", ["t", "bootstrap"])
def test_interval_contains_mean_and_shrinks_with_n(method):
    rng = random.Random(0)
    small = [rng.gauss(1.0, 1.0) for _ in range(10)]
    big = [rng.gauss(1.0, 1.0) for _ in range(1000)]
    a, b = mean_ci(small, method=method), mean_ci(big, method=method)
    for ci in (a, b):
        assert ci.lo <= ci.mean <= ci.hi
    assert (b.hi - b.lo) < (a.hi - a.lo) / 3
    assert b.lo < 1.0 < b.hi


def test_t_interval_known_value():
    ci = mean_ci([1.0, 2.0, 3.0])  # mean 2, sd 1, se 1/sqrt(3), t(2) = 4.303
    assert ci.mean == 2.0
    assert math.isclose(ci.hi - 2.0, 4.303 / math.sqrt(3), rel_tol=1e-6)


def test_t_quantile_tail_approximation():
    assert abs(t_quantile_975(31) - 2.0395) < 1e-3
    assert abs(t_quantile_975(100) - 1.984) < 1e-3
    assert abs(t_quantile_975(10**6) - 1.96) < 1e-3


def test_degenerate_inputs():
    assert mean_ci([5.0]).as_dict() == {"mean": 5.0, "ci": [5.0, 5.0], "n": 1}
    assert math.isnan(mean_ci([]).mean)
    with pytest.raises(ValueError, match="method"):
        mean_ci([1, 2], method="magic")


def test_win_rate_ties_count_half():
    ours = {0: 1.0, 1: 2.0, 2: 0.0, 3: 5.0}
    theirs = {0: 0.0, 1: 2.0, 2: 1.0, 9: 0.0}
    w = win_rate(ours, theirs)
    assert w == {"win_rate": 0.5, "wins": 1, "ties": 1, "losses": 1, "n": 3}
    assert math.isnan(win_rate({}, {})["win_rate"])
