"""One definition of plain sampling (ml.plain_sampling): CD at alpha = 1 without the second model. Greedy tokens of
plain_generate and of the diagnostic's plain samples equal contrastive_generate's at alpha = 1, with and without
the repetition penalty, for both penalty scopes and with prompts of different lengths (left padding is never
counted as seen)."""

from __future__ import annotations

import pytest

from ml.contrastive import CDConfig, contrastive_generate
from ml.io import read_jsonl, write_jsonl
from ml.plain_sampling import sample_plain
from ml.stages.generate import PlainGenerateConfig, plain_generate

PROMPTS = ["the movie was", "i think that the film was really", "good", "the story of the film and the actors"]


def _cfg(penalty: float, scope: str) -> CDConfig:
    return CDConfig(
        alpha=1.0,
        repetition_penalty=penalty,
        repetition_penalty_scope=scope,
        do_sample=False,
        max_new_tokens=10,
        ignore_eos=True,
        use_chat_template=False,
        batch_size=4,
    )


@pytest.mark.parametrize("penalty", [1.0, 1.3])
@pytest.mark.parametrize("scope", ["all", "generated"])
def test_plain_greedy_tokens_are_cd_at_alpha_one(tiny_pair, penalty, scope):
    cfg = _cfg(penalty, scope)
    cd = contrastive_generate(
        aligned=tiny_pair.aligned, base=tiny_pair.base, tokenizer=tiny_pair.tokenizer, prompts=PROMPTS, config=cfg
    )
    plain, _ = sample_plain(tiny_pair.aligned, tiny_pair.tokenizer, PROMPTS, cfg, seed=0)
    assert [ids for ids, _, _ in plain] == [g.token_ids for g in cd]


def test_the_stage_samples_by_the_same_definition(tiny_pair, tiny_pair_dirs, tmp_path):
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": p} for p in PROMPTS])
    cfg = _cfg(1.3, "all")
    plain_generate(
        PlainGenerateConfig(
            model=tiny_pair_dirs["aligned"],
            base=tiny_pair_dirs["base"],
            prompts=str(tmp_path / "p.jsonl"),
            output_dir=str(tmp_path / "out"),
            sampling=cfg,
        )
    )
    rows = sorted(read_jsonl(tmp_path / "out" / "samples.jsonl"), key=lambda r: r["index"])
    cd = contrastive_generate(
        aligned=tiny_pair.aligned, base=tiny_pair.base, tokenizer=tiny_pair.tokenizer, prompts=PROMPTS, config=cfg
    )
    assert [r["token_ids"] for r in rows] == [g.token_ids for g in cd]
    # ... and the implicit reward it records is the CD loop's for the same tokens.
    for r, g in zip(rows, cd):
        assert r["implicit_reward_sum"] == pytest.approx(g.implicit_reward.sum, abs=1e-3)
