"""The gold reward: fraction of constraints satisfied, strict accuracy, prompt set determinism."""

from __future__ import annotations

import pytest

from ml.gold import get_gold, known_golds
from ml.io import read_jsonl
from ml.judge import MIN_WORDS, build_prompts, judge, parse_constraints, render, split_of, write_splits

PROMPT = (
    "Explain composting at home to a curious beginner. "
    + render({"id": "punctuation:no_comma", "kwargs": {}})
    + " "
    + render({"id": "keywords:existence", "kwargs": {"keywords": ["worms"]}})
    + " "
    + render({"id": "length_constraints:number_words", "kwargs": {"relation": "less than", "num_words": 10}})
)


def test_gold_is_the_fraction_of_constraints_satisfied():
    gold = get_gold("if:judge")
    assert gold(PROMPT, "Worms eat scraps and make soil.") == pytest.approx(1.0)
    assert gold(PROMPT, "Worms eat scraps, peels and leaves.") == pytest.approx(2 / 3)
    assert gold(PROMPT, "Bugs eat scraps, peels and leaves.") == pytest.approx(1 / 3)
    assert gold(PROMPT, "Bugs eat kitchen scraps, peels, leaves and old paper in a bin.") == pytest.approx(0.0)


def test_strict_is_all_or_nothing():
    strict = get_gold("if:strict")
    assert strict(PROMPT, "Worms eat scraps and make soil.") == 1.0
    assert strict(PROMPT, "Worms eat scraps, peels and leaves.") == 0.0
    out = judge(PROMPT, "Worms eat scraps, peels and leaves.")
    assert [r["ok"] for r in out["results"]] == [False, True, True]
    assert out["strict"] == 0.0 and out["score"] == pytest.approx(2 / 3)


def test_too_short_answers_score_zero_and_are_invalid():
    gold = get_gold("if:judge")
    assert MIN_WORDS == 3
    assert gold(PROMPT, "") == 0.0 and gold(PROMPT, "ok") == 0.0  # would otherwise pass 'no comma', 'few words'
    assert not gold.is_valid(PROMPT, "ok") and gold.is_valid(PROMPT, "worms do work")


def test_prompt_without_constraints_is_a_clear_error():
    with pytest.raises(ValueError, match="no constraint"):
        get_gold("if:judge")("Tell me a story.", "Once upon a time.")


def test_registered_names():
    assert {"if:judge", "if:strict"} <= set(known_golds())


def test_prompt_set_is_deterministic_distinct_and_parseable():
    a, b = build_prompts(300, seed=0), build_prompts(300, seed=0)
    assert a == b
    assert len({r["prompt"] for r in a}) == 300
    assert build_prompts(100, seed=0) == a[:100]  # a larger set extends a smaller one
    assert build_prompts(50, seed=1) != a[:50]
    for r in a:
        assert 1 <= len(r["constraints"]) <= 3
        assert parse_constraints(r["prompt"]) == r["constraints"]  # the text alone gives the constraints back
    # varied: many topics, tasks and constraint kinds
    assert len({r["topic"] for r in a}) >= 30 and len({r["task"] for r in a}) >= 10
    assert len({c["id"] for r in a for c in r["constraints"]}) >= 15


def test_split_files_are_deterministic_and_disjoint(tmp_path):
    m1 = write_splits(tmp_path / "a", n=200, seed=0)
    m2 = write_splits(tmp_path / "b", n=200, seed=0)
    for name in ("train.jsonl", "heldout.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    train, held = read_jsonl(m1["train"]), read_jsonl(m1["heldout"])
    assert m1["n_train"] == m2["n_train"] == len(train) and len(train) + len(held) == 200
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in held}
    assert 0.1 < len(held) / 200 < 0.3
    assert all(split_of(r["prompt"]) == "heldout" for r in held)
    assert all(set(r) >= {"prompt", "constraints"} for r in train)


def test_invalid_arguments():
    with pytest.raises(ValueError):
        build_prompts(0)
    with pytest.raises(ValueError):
        build_prompts(10, heldout_fraction=1.5)
