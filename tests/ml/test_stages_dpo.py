from __future__ import annotations

from dataclasses import replace

import pytest

from ml.io import read_jsonl, write_jsonl
from ml.modeling import load_causal_lm
from ml.reporter import RecordingReporter
from ml.stages.dpo import DPOStageConfig, dpo, filter_pairs, join_pairs
from tests.ml._stage_fixtures import PROMPTS, save_tiny, write_prefs


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("m") / "strong", seed=2)


def test_dpo_trains_from_preference_file(base, tmp_path):
    rep = RecordingReporter()
    cfg = DPOStageConfig(
        model=base,
        output_dir=str(tmp_path / "dpo"),
        data=write_prefs(tmp_path / "p.jsonl"),
        max_steps=2,
        per_device_train_batch_size=2,
        learning_rate=1e-3,
    )
    out = dpo(cfg, rep)
    assert out["steps"] == 2 and out["n_pairs"] == len(PROMPTS) and out["filtered"] is False
    load_causal_lm(tmp_path / "dpo" / "model", device="cpu")
    assert any(n == "dpo/loss" for n, _, _ in rep.of("metric"))
    assert dpo(cfg) == out


def test_dpo_joins_chosen_and_rejected_files(base, tmp_path):
    write_jsonl(tmp_path / "c.jsonl", [{"index": i, "prompt": p, "response": "good a"} for i, p in enumerate(PROMPTS)])
    # Rejected rows in another order: the join must go by index.
    write_jsonl(
        tmp_path / "r.jsonl",
        [{"index": i, "prompt": p, "response": "bad b"} for i, p in reversed(list(enumerate(PROMPTS)))],
    )
    cfg = DPOStageConfig(
        model=base,
        output_dir=str(tmp_path / "dpo"),
        chosen_data=str(tmp_path / "c.jsonl"),
        rejected_data=str(tmp_path / "r.jsonl"),
        max_steps=1,
        per_device_train_batch_size=2,
    )
    out = dpo(cfg)
    pairs = read_jsonl(tmp_path / "dpo" / "pairs.jsonl")
    assert out["n_pairs"] == len(PROMPTS)
    assert [p["prompt"] for p in pairs] == PROMPTS and all(p["chosen"] == "good a" for p in pairs)


def test_join_refuses_mismatched_prompts():
    with pytest.raises(ValueError, match="disagree"):
        join_pairs([{"prompt": "x", "response": "a"}], [{"prompt": "y", "response": "b"}])


def test_filter_keeps_only_pairs_where_chosen_wins():
    rows = [{"prompt": str(i), "chosen": "c", "rejected": "r"} for i in range(4)]
    kept = filter_pairs(rows, [1.0, 0.0, 2.0, -1.0], [0.5, 0.0, 3.0, -2.0])
    assert [r["prompt"] for r in kept] == ["0", "3"]
    assert kept[0]["chosen_implicit"] == 1.0 and kept[0]["rejected_implicit"] == 0.5


def test_filter_needs_weak_pair(tmp_path):
    with pytest.raises(ValueError, match="weak_aligned"):
        DPOStageConfig(model="m", output_dir=str(tmp_path), data="d", filter_by_implicit_reward=True)


def test_dpo_filter_keeps_pairs_where_chosen_has_higher_implicit_reward(base, tmp_path, tiny_pair_dirs, tiny_pair):
    from ml.scoring import implicit_rewards

    prompts = ["the cat", "one two", "tell me about the dog", "the"]
    chosen = ["sat on the mat", "three", "was very happy", "big red cat"]
    rejected = ["ran under the log", "two one", "the the the", "a"]
    write_jsonl(
        tmp_path / "p.jsonl", [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in zip(prompts, chosen, rejected)]
    )
    kw = dict(
        aligned=tiny_pair.aligned, base=tiny_pair.base, tokenizer=tiny_pair.tokenizer, prompts=prompts, append_eos=True
    )
    rc = [s["sum"] for s in implicit_rewards(responses=chosen, **kw)]
    rr = [s["sum"] for s in implicit_rewards(responses=rejected, **kw)]
    expected = [p for p, a, b in zip(prompts, rc, rr) if a > b]
    cfg = DPOStageConfig(
        model=base,
        output_dir=str(tmp_path / "dpo"),
        data=str(tmp_path / "p.jsonl"),
        filter_by_implicit_reward=True,
        weak_aligned=tiny_pair_dirs["aligned"],
        weak_base=tiny_pair_dirs["base"],
        max_steps=1,
        per_device_train_batch_size=2,
    )
    # The data is chosen so the filter has work both ways: it keeps some pairs and drops others.
    assert 0 < len(expected) < len(prompts), (rc, rr)
    out = dpo(cfg)
    kept = read_jsonl(tmp_path / "dpo" / "pairs.jsonl")
    assert [r["prompt"] for r in kept] == expected
    assert out["n_pairs"] == len(expected) and out["n_pairs_before_filter"] == len(prompts)

    # Only the pairs it dropped: nothing is left to train on, and dpo says so instead of training on nothing.
    dropped = [i for i, (a, b) in enumerate(zip(rc, rr)) if not a > b]
    write_jsonl(
        tmp_path / "lost.jsonl", [{"prompt": prompts[i], "chosen": chosen[i], "rejected": rejected[i]} for i in dropped]
    )
    with pytest.raises(ValueError, match="no preference pairs"):
        dpo(replace(cfg, data=str(tmp_path / "lost.jsonl"), output_dir=str(tmp_path / "dpo_lost")))
