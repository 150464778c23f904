from __future__ import annotations

import pytest

from ml.gold import GoldReward
from ml.io import read_jsonl
from ml.modeling import load_causal_lm
from ml.reporter import RecordingReporter
from ml.stages.weak_align import WeakAlignConfig, best_worst, weak_align
from tests.ml._stage_fixtures import PROMPTS, count_a, save_tiny, write_prefs, write_prompts


@pytest.fixture(scope="module")
def pre(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("m") / "pre", seed=3)


def test_best_worst_picks_extremes_and_skips_ties():
    gold = GoldReward(name="t", score=count_a)
    row = best_worst("p", ["a b", "a a a", "b b"], gold)
    assert row["chosen"] == "a a a" and row["rejected"] == "b b" and row["chosen_gold"] == 3.0
    assert best_worst("p", ["b", "c"], gold) is None
    # How each side ended travels with it, under the names the DPO stage reads.
    row = best_worst("p", ["a b", "a a a", "b b"], gold, finish=["eos", "length", "eos"])
    assert (row["chosen_finish_reason"], row["rejected_finish_reason"]) == ("length", "eos")


def test_weak_align_from_gold_labels(pre, tmp_path):
    rep = RecordingReporter()
    cfg = WeakAlignConfig(
        model=pre,
        output_dir=str(tmp_path / "wa"),
        prompts=write_prompts(tmp_path / "p.jsonl"),
        gold="test:count_a",
        k=4,
        max_new_tokens=8,
        sample_batch_size=4,
        max_steps=2,
        per_device_train_batch_size=2,
        learning_rate=1e-3,
    )
    out = weak_align(cfg, rep)
    prefs = read_jsonl(tmp_path / "wa" / "preferences.jsonl")
    assert prefs and all(r["chosen_gold"] > r["rejected_gold"] for r in prefs)
    # Every pair says how its sides ended, so training appends no EOS to a cut one and WSPO can leave it out.
    assert all(r[f"{side}_finish_reason"] in ("eos", "length") for r in prefs for side in ("chosen", "rejected"))
    assert out["n_pairs"] == len(prefs) and out["steps"] == 2
    load_causal_lm(tmp_path / "wa" / "model", device="cpu")
    assert ("weak_align/label", len(PROMPTS), len(PROMPTS)) in rep.of("progress")
    assert weak_align(cfg) == out


def test_weak_align_labelling_stops_and_resumes(pre, tmp_path):
    cfg = WeakAlignConfig(
        model=pre,
        output_dir=str(tmp_path / "wa"),
        prompts=write_prompts(tmp_path / "p.jsonl"),
        gold=count_a,
        k=3,
        max_new_tokens=6,
        sample_batch_size=2,
        max_steps=1,
        per_device_train_batch_size=2,
        learning_rate=1e-3,
    )
    out = weak_align(cfg, RecordingReporter(stop_after=1))
    assert out["stopped"] is True and not (tmp_path / "wa" / "DONE.json").exists()
    out = weak_align(cfg)
    assert out["steps"] == 1 and (tmp_path / "wa" / "DONE.json").exists()


def test_weak_align_from_preference_file(pre, tmp_path):
    cfg = WeakAlignConfig(
        model=pre,
        output_dir=str(tmp_path / "wa"),
        data=write_prefs(tmp_path / "prefs.jsonl"),
        max_steps=1,
        per_device_train_batch_size=2,
    )
    assert weak_align(cfg)["n_pairs"] == len(PROMPTS)


def test_weak_align_config_errors(tmp_path):
    with pytest.raises(ValueError, match="gold"):
        WeakAlignConfig(model="m", output_dir=str(tmp_path), prompts="p.jsonl")
    with pytest.raises(ValueError, match="k must"):
        WeakAlignConfig(model="m", output_dir=str(tmp_path), prompts="p.jsonl", gold="x", k=1)
