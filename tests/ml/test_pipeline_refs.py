"""The reference methods beside the paper's (ml.pipeline_refs): best-of-N by implicit reward, the gold-picked
ceiling, WeakSFT for one epoch, and the performance gap recovered on every method row."""

from __future__ import annotations

import math

import pytest

from ml.gold import get_gold
from ml.io import read_json, read_jsonl
from ml.pipeline import PipelineConfig, run
from ml.pipeline_refs import best_per_prompt, pgr
from tests.ml._stage_fixtures import save_tiny, tiny_config


def test_best_per_prompt_takes_the_top_of_the_first_n_samples():
    rows = [
        {"index": 0, "sample": 0, "response": "a"},
        {"index": 0, "sample": 1, "response": "b"},
        {"index": 0, "sample": 2, "response": "c"},  # the best score, but beyond n=2
        {"index": 1, "sample": 0, "response": "d"},
        {"index": 1, "sample": 1, "response": "e"},  # ties d: the lower sample wins
        {"index": 2, "sample": 0, "response": "f"},  # no score: never picked, and its prompt has no row
    ]
    picked = best_per_prompt(rows, 2, [1.0, 2.0, 9.0, 0.5, 0.5, None])
    assert [r["response"] for r in picked] == ["b", "d"]
    assert [r["response"] for r in best_per_prompt(rows, 3, [1.0, 2.0, 9.0, 0.5, 0.5, None])] == ["c", "d"]


def test_pgr_is_the_share_of_the_gap_between_weak_post_and_the_ceiling():
    rows = {"weak_post": {"gold_mean": 1.0}, "ceiling": {"gold_mean": 3.0}, "cong": {"gold_mean": 2.5}}
    assert pgr(rows) == {"weak_post": 0.0, "ceiling": 1.0, "cong": 0.75}
    assert pgr({"cong": {"gold_mean": 2.5}, "weak_post": {"gold_mean": 1.0}}) == {"cong": None, "weak_post": None}
    assert pgr({"weak_post": {"gold_mean": 1.0}, "ceiling": {"gold_mean": 1.0}})["ceiling"] is None  # no gap
    # A ceiling below weak_post (an oracle's picks that trained worse than the weak teacher) has no gap either.
    below = {"weak_post": {"gold_mean": 0.42}, "ceiling": {"gold_mean": 0.29}, "wspo": {"gold_mean": 0.22}}
    assert set(pgr(below).values()) == {None}


@pytest.mark.slow  # a whole tiny pipeline
def test_the_reference_methods_train_on_what_they_pick(tmp_path):
    methods = ["weak_post", "cong_s", "best_of_n", "ceiling", "weak_sft_1ep"]
    cfg = tiny_config(
        tmp_path,
        weak_aligned=save_tiny(tmp_path / "models" / "post", seed=13),
        methods=methods,
        ceiling_samples=3,
        generate={"batch_size": 4, "do_sample": True},
    )
    res = run(PipelineConfig.from_dict(cfg))
    out = tmp_path / "run"
    samples = read_jsonl(out / "plain_k" / "samples.jsonl")
    assert {r["sample"] for r in samples} == {0, 1, 2}  # max(N=2, k=3) samples per prompt, drawn once for both
    # best_of_n: per prompt, the highest implicit reward among samples 0 and 1.
    for r in read_jsonl(out / "select_best_of_n" / "data.jsonl"):
        mine = [s for s in samples if s["index"] == r["index"] and s["sample"] < 2]
        assert r["implicit_reward_sum"] == max(s["implicit_reward_sum"] for s in mine)
    # ceiling: per prompt, the highest gold among all three.
    gold = get_gold(cfg["gold"])
    for r in read_jsonl(out / "select_ceiling" / "data.jsonl"):
        mine = [s for s in samples if s["index"] == r["index"]]
        assert gold(r["prompt"], r["response"]) == max(gold(s["prompt"], s["response"]) for s in mine)
    assert read_json(out / "sft_weak_1ep" / "DONE.json")["num_train_epochs"] == 1
    for m in methods:
        row = res["methods"][m]
        assert "pgr" in row and "truncated_rate" in row and row["label"]
        assert 0.0 <= row["truncated_rate"] <= 1.0
    gap = res["methods"]["ceiling"]["gold_mean"] - res["methods"]["weak_post"]["gold_mean"]
    if gap:
        assert res["methods"]["ceiling"]["pgr"] == pytest.approx(1.0)
        assert res["methods"]["weak_post"]["pgr"] == pytest.approx(0.0)
        expected = (res["methods"]["cong_s"]["gold_mean"] - res["methods"]["weak_post"]["gold_mean"]) / gap
        assert res["methods"]["cong_s"]["pgr"] == pytest.approx(expected)
    else:
        assert all(res["methods"][m]["pgr"] is None for m in methods)
    assert not math.isnan(res["methods"]["best_of_n"]["gold_mean"])
