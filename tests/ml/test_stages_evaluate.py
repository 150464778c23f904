from __future__ import annotations

import pytest

from ml.io import read_json, read_jsonl, write_jsonl
from ml.reporter import RecordingReporter
from ml.stages.evaluate import EvaluateConfig, evaluate
from tests.ml._stage_fixtures import PROMPTS, count_a, save_tiny, write_prompts


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("m") / "strong", seed=4)


def test_scores_a_samples_file_exactly(tmp_path):
    write_jsonl(
        tmp_path / "s.jsonl",
        [
            {"prompt": "p1", "response": "a a b"},
            {"prompt": "p2", "response": "a"},
            {"prompt": "p3", "response": ""},
            {"prompt": "p4", "response": "b"},
        ],
    )
    write_jsonl(
        tmp_path / "ref.jsonl",
        [
            {"prompt": "p1", "response": "a"},
            {"prompt": "p2", "response": "a"},
            {"prompt": "p3", "response": "a"},
            {"prompt": "p4", "response": "c"},
        ],
    )
    out = evaluate(
        EvaluateConfig(
            output_dir=str(tmp_path / "ev"),
            gold="test:count_a",
            samples=str(tmp_path / "s.jsonl"),
            reference=str(tmp_path / "ref.jsonl"),
            reference_name="weak_sft",
        )
    )
    assert out["gold_mean"] == pytest.approx((2 + 1 + 0 + 0) / 4)
    assert out["gold_ci"][0] <= out["gold_mean"] <= out["gold_ci"][1]
    assert out["valid_rate"] == 0.75  # the empty response is invalid under the test gold
    # p1 wins, p2 ties, p3 loses, p4 ties -> (1 + 0.5 + 0.5) / 4
    assert out["win_rate_vs_weak_sft"] == pytest.approx(0.5)
    assert out["n"] == 4 and read_json(tmp_path / "ev" / "metrics.json") == out
    rows = read_jsonl(tmp_path / "ev" / "samples.jsonl")
    assert [r["gold"] for r in rows] == [2.0, 1.0, 0.0, 0.0]


def test_samples_a_model_seeded_and_resumes(model, tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl")

    def cfg(out, **kw):
        return EvaluateConfig(
            output_dir=str(tmp_path / out),
            gold=count_a,
            model=model,
            prompts=prompts,
            n_samples=2,
            batch_size=2,
            max_new_tokens=6,
            seed=7,
            **kw,
        )

    full = evaluate(cfg("a"))
    rows = read_jsonl(tmp_path / "a" / "samples.jsonl")
    assert len(rows) == 2 * len(PROMPTS) and full["n"] == len(rows)
    assert full["gold_mean"] == pytest.approx(sum(count_a("", r["response"]) for r in rows) / len(rows))
    stopped = evaluate(cfg("b"), RecordingReporter(stop_after=1))
    assert stopped["stopped"] is True and not (tmp_path / "b" / "DONE.json").exists()
    resumed = evaluate(cfg("b"))
    assert read_jsonl(tmp_path / "b" / "samples.jsonl") == rows  # same seeds -> same responses
    assert resumed["gold_mean"] == full["gold_mean"]


def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match="exactly one"):
        EvaluateConfig(output_dir=str(tmp_path), gold="x")
    with pytest.raises(ValueError, match="prompts"):
        EvaluateConfig(output_dir=str(tmp_path), gold="x", model="m")


def test_implicit_reward_statistics_under_a_weak_pair(tmp_path, tiny_pair_dirs, tiny_pair):
    from ml.scoring import implicit_rewards

    rows = [{"prompt": "the cat", "response": "sat on the mat"}, {"prompt": "one two", "response": "three"}]
    write_jsonl(tmp_path / "s.jsonl", rows)
    out = evaluate(
        EvaluateConfig(
            output_dir=str(tmp_path / "ev"),
            gold=count_a,
            samples=str(tmp_path / "s.jsonl"),
            weak_aligned=tiny_pair_dirs["aligned"],
            weak_base=tiny_pair_dirs["base"],
        )
    )
    expect = implicit_rewards(
        aligned=tiny_pair.aligned,
        base=tiny_pair.base,
        tokenizer=tiny_pair.tokenizer,
        prompts=[r["prompt"] for r in rows],
        responses=[r["response"] for r in rows],
        append_eos=True,
    )
    assert out["implicit_mean"] == pytest.approx(sum(e["sum"] for e in expect) / 2, abs=1e-4)
    assert out["implicit_ci"][0] <= out["implicit_mean"] <= out["implicit_ci"][1]
