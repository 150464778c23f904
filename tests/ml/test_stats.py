from __future__ import annotations

import math
import random

import pytest

from ml.stats import (
    clustered_mean_ci,
    fisher_z_mean_ci,
    mean_ci,
    paired_diff,
    pearson_ci,
    t_quantile_975,
    win_rate,
)


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


def test_paired_diff_pairs_by_seed_and_skips_missing():
    ours = {0: 1.0, 1: 2.0, 2: 3.0, 3: None}
    theirs = {0: 0.5, 1: 1.0, 2: 2.5, 4: 9.0}
    d = paired_diff(ours, theirs)
    assert d["n"] == 3 and d["mean"] == pytest.approx((0.5 + 1.0 + 0.5) / 3)
    # The t interval over the three differences, not over either side's spread.
    assert d["ci"] == pytest.approx(list(mean_ci([0.5, 1.0, 0.5]).as_dict()["ci"]))
    # Pairing removes what the seeds share: a shared offset per seed leaves a zero-width interval.
    assert paired_diff({0: 10.0, 1: 20.0}, {0: 9.0, 1: 19.0})["ci"] == [1.0, 1.0]


def test_clustered_interval_counts_prompts_not_samples():
    """Four identical samples of one prompt are one observation: the clustered interval is the one of the prompt
    means, wider than the naive one over samples."""
    values = [1.0] * 4 + [0.0] * 4 + [0.5] * 4
    clusters = [0] * 4 + [1] * 4 + [2] * 4
    c = clustered_mean_ci(values, clusters)
    assert c.n == 3 and c.mean == pytest.approx(0.5)
    assert (c.lo, c.hi) == pytest.approx((mean_ci([1.0, 0.0, 0.5]).lo, mean_ci([1.0, 0.0, 0.5]).hi))
    naive = mean_ci(values)
    assert c.hi - c.lo > naive.hi - naive.lo
    with pytest.raises(ValueError):
        clustered_mean_ci([1.0], [0, 1])


def test_fisher_z_intervals_stay_inside_minus_one_one():
    lo, hi = pearson_ci(0.9, 20)
    assert -1 < lo < 0.9 < hi < 1 and (0.9 - lo) > (hi - 0.9)  # asymmetric toward 0, as r's distribution is
    assert all(math.isnan(x) for x in pearson_ci(0.5, 3))  # n <= 3: undefined, not a made-up interval
    s = fisher_z_mean_ci([0.95, 0.99, 0.97])
    assert -1 < s.lo < s.mean < s.hi < 1 and s.n == 3
    assert fisher_z_mean_ci([1.0, 1.0]).hi <= 1.0  # a perfect correlation does not give an infinite z
    # The mean is the back-transformed mean z, not the mean r.
    assert s.mean == pytest.approx(math.tanh(sum(math.atanh(r) for r in (0.95, 0.99, 0.97)) / 3))
