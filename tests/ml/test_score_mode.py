"""CDConfig.score_mode: "reference" gives the reference code's numbers exactly, "formula" the paper's equation.

The reference's step is re-implemented here from its description (docs/METHOD.md, docs/ML.md): log-softmax both
weak models; its relative-top filter sets pi_post outside the plausible set to -inf and pi_pre there to -1e-3;
pi_pre is log-softmaxed again; score = lp_post - (1 - alpha) * lp_pre; then transformers' repetition penalty over
prompt and generated ids. Scores and greedy tokens are compared at repetition penalty 1.0 and 1.2 and alpha 0,
0.4 and 1, on random logits and on tiny models decoded one prompt at a time without a cache, as the reference
does."""

from __future__ import annotations

import math

import pytest
import torch
from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

from ml.contrastive import CDConfig, _Processors, contrastive_generate, encode_prompt, processed_scores

ALPHAS = (0.0, 0.4, 1.0)
PENALTIES = (1.0, 1.2)


def reference_step(post: torch.Tensor, pre: torch.Tensor, ids: torch.Tensor, alpha: float, penalty: float, rt=0.1):
    final = post.float().log_softmax(-1)
    base = pre.float().log_softmax(-1)
    thresh = torch.minimum(final.sort(-1, descending=True).values[..., 0], final.max(-1).values + math.log(rt))
    out = final < thresh.unsqueeze(-1)
    base = base.clone()
    base[out] = -1e-3
    final = final.clone()
    final[out] = -float("inf")
    score = final - (1 - alpha) * base.log_softmax(-1)
    if penalty != 1.0:
        score = RepetitionPenaltyLogitsProcessor(penalty=penalty)(ids, score)
    return score


def _ours(post, pre, ids, alpha, penalty, mode):
    cfg = CDConfig(alpha=alpha, repetition_penalty=penalty, do_sample=False, score_mode=mode)
    return processed_scores(post, pre, ids, ids, _Processors(cfg), cfg, math.log(cfg.relative_top))[0]


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("penalty", PENALTIES)
def test_reference_mode_gives_the_reference_scores(alpha, penalty):
    g = torch.Generator().manual_seed(int(alpha * 10) + int(penalty * 10))
    post, pre = torch.randn(4, 300, generator=g) * 3, torch.randn(4, 300, generator=g) * 3
    ids = torch.randint(0, 300, (4, 12), generator=g)
    want = reference_step(post, pre, ids, alpha, penalty)
    got = _ours(post, pre, ids, alpha, penalty, "reference")
    assert torch.equal(torch.isinf(want), torch.isinf(got))  # the same plausible set
    finite = torch.isfinite(want)
    assert torch.allclose(got[finite], want[finite], atol=1e-5)
    # The paper's equation differs from the reference by one constant per row inside the set (before the
    # penalty): same argmax without a penalty, different numbers with one (at alpha < 1).
    formula = _ours(post, pre, ids, alpha, penalty, "formula")
    if penalty == 1.0:
        assert torch.equal(formula.argmax(-1), got.argmax(-1))
        shift = (got - formula).masked_fill(~finite, 0.0)
        for row, keep in zip(shift, finite):
            assert torch.allclose(row[keep], row[keep][0].expand_as(row[keep]), atol=1e-4)
    elif alpha < 1.0:
        assert not torch.allclose(formula[finite], got[finite], atol=1e-3)


def _reference_greedy(aligned, base, tok, prompt, alpha, penalty, n_new):
    """The reference's decoding: one prompt, the whole sequence re-run every step (no cache), greedy."""
    ids = torch.tensor([encode_prompt(tok, prompt, use_chat_template=False)])
    out = []
    with torch.no_grad():
        for _ in range(n_new):
            post = aligned(input_ids=ids).logits[:, -1, :]
            pre = base(input_ids=ids).logits[:, -1, :]
            nxt = reference_step(post, pre, ids, alpha, penalty).argmax(-1)
            out.append(int(nxt))
            ids = torch.cat([ids, nxt[:, None]], dim=1)
    return out


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("penalty", PENALTIES)
def test_reference_mode_decodes_the_reference_greedy_tokens(tiny_pair, alpha, penalty):
    aligned, base, tok = tiny_pair.aligned, tiny_pair.base, tiny_pair.tokenizer
    prompts = ["the movie was", "i think that the film"]
    cfg = CDConfig(
        alpha=alpha,
        repetition_penalty=penalty,
        do_sample=False,
        max_new_tokens=8,
        ignore_eos=True,
        use_chat_template=False,
        batch_size=2,
        score_mode="reference",
    )
    gens = contrastive_generate(aligned=aligned, base=base, tokenizer=tok, prompts=prompts, config=cfg)
    for p, g in zip(prompts, gens):
        assert g.token_ids == _reference_greedy(aligned, base, tok, p, alpha, penalty, 8), (p, alpha, penalty)


def test_score_mode_is_checked():
    with pytest.raises(ValueError, match="score_mode must be one of formula, reference"):
        CDConfig(score_mode="paper")
