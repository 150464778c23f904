"""CD-scoring guarantees that the mutation run (``make mutate``, docs/TESTING.md) found unchecked.

Each test names the guarantee; the mutant it kills is listed in docs/TESTING.md.
"""

from __future__ import annotations

import math

import pytest
import torch

from ml.contrastive import batch_seed, cd_scores


def test_alpha_one_ignores_the_base_model_entirely():
    """alpha = 1 is plain decoding from the aligned model: the base's logits, even non-finite ones, do not
    enter the score (only the aligned model's plausibility cut does)."""
    torch.manual_seed(0)
    la = torch.randn(2, 20) * 3
    lb = torch.randn(2, 20)
    lb[0, 3] = float("nan")
    lb[1, 5] = float("inf")
    s = cd_scores(la, lb, alpha=1.0, relative_top=0.1)
    lp_post = torch.log_softmax(la, -1)
    inside = lp_post >= lp_post.max(-1, keepdim=True).values + math.log(0.1)
    assert not torch.isnan(s).any()
    assert torch.equal(s[inside], lp_post[inside]) and torch.isneginf(s[~inside]).all()


def test_a_base_log_prob_of_minus_inf_is_floored_at_minus_1e4():
    """A token the base model rules out (log-prob -inf) scores lp_post + (1 - alpha) * 1e4: finite (so
    sampling never sees +inf/NaN) and the favourite, with the documented floor of -1e4."""
    la = torch.tensor([[2.0, 1.9, 0.0]])
    lb = torch.tensor([[0.0, float("-inf"), 0.0]])
    s = cd_scores(la, lb, alpha=0.5, relative_top=0.1)
    lp_post = torch.log_softmax(la, -1)
    assert torch.isfinite(s[0, :2]).all()
    assert int(s.argmax()) == 1
    assert torch.allclose(s[0, 1], lp_post[0, 1] + 0.5 * 1e4)


@pytest.mark.parametrize("relative_top", [0.0, -0.5, 1.5])
def test_relative_top_outside_0_1_is_refused_by_name(relative_top):
    """relative_top must be in (0, 1]: 0 (an empty cut, log 0) is refused with a message naming the
    argument, not a math domain error."""
    with pytest.raises(ValueError, match="relative_top must be in"):
        cd_scores(torch.zeros(1, 3), torch.zeros(1, 3), alpha=0.5, relative_top=relative_top)


def test_batch_seed_is_a_fixed_function_of_seed_and_batch():
    """Batch k of a run draws the same seed in every process and every release (a resumed stage redraws
    its batches identically), and the seed fits torch.manual_seed's signed 64 bits."""
    golden = {(0, 0): 6956993988634818902, (0, 1): 3373202220108974583, (1, 0): 9096684868786435155}
    for (seed, k), want in golden.items():
        assert batch_seed(seed, k) == want
    assert all(0 <= batch_seed(s, k) < 2**63 for s in range(5) for k in range(5))
