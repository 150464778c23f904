"""Each checker on hand-written passing and failing responses, and render -> parse round trips."""

from __future__ import annotations

import pytest

from ml.judge.constraints import KINDS, check, count_sentences, count_words, parse_constraints, render, split_sentences


def c(cid, **kwargs):
    return {"id": cid, "kwargs": kwargs}


# (constraint, passing response, failing response)
CASES = [
    (
        c("length_constraints:number_words", relation="less than", num_words=5),
        "Plants need light.",
        "Plants need light and water every day.",
    ),
    (
        c("length_constraints:number_words", relation="at least", num_words=5),
        "Plants need light and water.",
        "Plants need light.",
    ),
    (
        c("length_constraints:number_sentences", relation="less than", num_sentences=3),
        "Bees make honey. It is sweet.",
        "Bees make honey. It is sweet. They live in hives.",
    ),
    (
        c("length_constraints:number_sentences", relation="at least", num_sentences=2),
        "Dr. Smith studies bees. They are busy!",
        "Dr. Smith studies bees, e.g. honeybees, for 3.5 years.",
    ),
    (
        c("keywords:existence", keywords=["soil", "worms"]),
        "Worms turn waste into rich SOIL.",
        "Worms turn waste into compost.",
    ),
    (
        c("keywords:forbidden_words", forbidden_words=["rain", "sun"]),
        "Rainbows appear when sunlight meets droplets.",
        "Rainbows need rain and light.",
    ),
    (
        c("keywords:frequency", keyword="water", relation="at least", frequency=2),
        "Water plants with clean water.",
        "Water plants with care; watering twice is plenty.",
    ),
    (
        c("detectable_format:number_bullet_lists", num_bullets=3),
        "Tips:\n* pack light\n* bring water\n- check the map",
        "Tips:\n* pack light\n* bring water",
    ),
    (c("detectable_format:json_format"), '```json\n{"tip": "water your plants"}\n```', "tip: water your plants"),
    (c("change_case:english_lowercase"), "water your plants every morning.", "Water your plants every morning."),
    (c("change_case:english_capital"), "WATER YOUR PLANTS, 2 TIMES A DAY.", "WATER YOUR PLANTS every day."),
    (
        c("startend:end_checker", end_phrase="Hope this helps."),
        "Bring a tent. hope this helps.",
        "Hope this helps. Bring a tent.",
    ),
    (c("congweb:first_word", first_word="Sure"), "**Sure**, here is how it works.", "Surely this is how it works."),
    (
        c("congweb:paragraphs", num_paragraphs=2),
        "First part here.\n\nSecond part here.",
        "First part here.\nStill the first paragraph.",
    ),
    (c("detectable_format:title"), "<<Growing Tomatoes>>\nUse big pots.", "<<>> Use big pots."),
    (c("punctuation:no_comma"), "Sun and water and care.", "Sun, water and care."),
    (
        c("detectable_content:postscript", postscript_marker="P.S."),
        "Use big pots.\n\nP.S. water daily.",
        "Use big pots. Water daily.",
    ),
    (
        c("detectable_content:postscript", postscript_marker="P.P.S."),
        "Use big pots.\nP.P.S. water daily.",
        "Use big pots.\nP.S. water daily.",
    ),
    (c("startend:quotation"), '"Use big pots and water daily."', 'Use big pots and "water" daily.'),
]


@pytest.mark.parametrize("constraint,good,bad", CASES, ids=[f"{x[0]['id']}-{i}" for i, x in enumerate(CASES)])
def test_checker_passes_and_fails(constraint, good, bad):
    assert check(constraint, good) is True
    assert check(constraint, bad) is False


def test_every_kind_has_a_case():
    assert {x[0]["id"] for x in CASES} == set(KINDS)


@pytest.mark.parametrize("constraint", [x[0] for x in CASES], ids=[x[0]["id"] for x in CASES])
def test_render_then_parse_round_trips(constraint):
    text = "Explain how bees make honey. " + render(constraint)
    assert parse_constraints(text) == [{"id": constraint["id"], "kwargs": constraint["kwargs"]}]


def test_parse_keeps_prompt_order_and_ignores_plain_text():
    cons = [
        c("punctuation:no_comma"),
        c("keywords:existence", keywords=["soil"]),
        c("length_constraints:number_words", relation="less than", num_words=40),
    ]
    text = "Describe composting at home. " + " ".join(render(x) for x in cons)
    assert parse_constraints(text) == cons
    assert parse_constraints("Describe composting at home in a few words, without commas.") == []


def test_counters():
    assert count_words("It's 3.5 km, isn't it?") == 8  # \w+ runs, as IFEval counts
    assert count_sentences("One. Two! Three?") == 3
    assert count_sentences("It costs 3.5 dollars. Fine") == 2
    assert count_sentences("* a\n* b\n* c") == 3  # list items are sentences
    assert split_sentences("e.g. this is one. And two.") == ["e.g. this is one.", "And two."]
    assert count_sentences("***") == 0


def test_unknown_constraint_id_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown constraint id"):
        check({"id": "nope:nope", "kwargs": {}}, "text")


# if-verifiable ships IFEval's reference checkers; where our id means the same thing, both must agree.
IFEVAL_AGREEMENT = [x for x in CASES if KINDS[x[0]["id"]].ifeval_same]


@pytest.mark.parametrize("constraint,good,bad", IFEVAL_AGREEMENT, ids=[x[0]["id"] for x in IFEVAL_AGREEMENT])
def test_agrees_with_ifeval_reference_checkers(constraint, good, bad):
    registry = pytest.importorskip("if_verifiable.ifeval.instructions_registry")
    cls = registry.INSTRUCTION_DICT[constraint["id"]]
    ref = cls(constraint["id"])
    ref.build_description(**constraint["kwargs"])
    for text in (good, bad):
        assert bool(ref.check_following(text)) == check(constraint, text), text
