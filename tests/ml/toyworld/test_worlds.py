"""Gold rewards and validity checks of the toy worlds, on hand-written cases; generator determinism."""

import pytest

from ml.gold import get_gold, known_golds
from ml.toyworld import get_world, world_names

P = "review pizza taste sauce :"


def test_all_worlds_registered_as_gold():
    assert set(world_names()) == {"review", "review_balanced", "sort"}
    for name in world_names():
        assert f"toy:{name}" in known_golds()


@pytest.mark.parametrize("name", ["review", "review_balanced"])
def test_review_perfect_positive_scores_one(name):
    g = get_gold(f"toy:{name}")
    r = "the pizza was great . the taste was good and lovely . it had a superb sauce ."
    assert g(P, r) == pytest.approx(1.0)
    assert g.is_valid(P, r)


def test_review_graded_adjectives():
    g = get_gold("toy:review")
    # 2 positive, 1 negative, 1 neutral -> (2 - 1) / 4
    r = "the pizza was great . the taste was bad and okay . the sauce was fine ."
    assert g(P, r) == pytest.approx(0.25)
    r = "the pizza was awful . the taste was bad . the sauce was dull ."
    assert g(P, r) == pytest.approx(-1.0)


def test_review_missing_noun_penalty():
    g = get_gold("toy:review")
    one_missing = "the pizza was great . the taste was good . the crust was fine ."
    assert g(P, one_missing) == pytest.approx(1.0 - 0.25)
    both_missing = "the pizza was great . the crust was good . the price was fine ."
    assert g(P, both_missing) == pytest.approx(1.0 - 0.5)
    assert g.is_valid(P, both_missing)  # a missing noun costs reward but is still well formed


@pytest.mark.parametrize(
    "response",
    [
        "the pizza was great the taste was good . the sauce was fine .",  # missing full stop
        "the pizza was great . the taste was good .",  # only 1 extra sentence
        "the pizza was great . the taste was good . the sauce was fine . the crust was neat . "
        "the price was solid .",  # 4 extra sentences
        "the pizza was great . the taste was good and fine . the sauce was neat and solid . "
        "the crust was lovely and great .",  # 7 adjectives
        "the pizza was great . the taste was sauce . the sauce was fine .",  # noun in adjective slot
    ],
)
def test_review_broken_template_costs_one(response):
    g = get_gold("toy:review")
    assert not g.is_valid(P, response)
    assert g(P, response) <= 0.0  # all-positive adjectives but the -1 penalty applies


def test_review_wrong_subject_or_topic_noun():
    g = get_gold("toy:review")
    wrong_subject = "the soup was great . the taste was good . the sauce was fine ."
    assert not g.is_valid(P, wrong_subject)
    assert g(P, wrong_subject) == pytest.approx(0.0)
    wrong_topic = "the pizza was great . the taste was good . the sauce was fine . the plot was neat ."
    assert not g.is_valid(P, wrong_topic)
    assert g(P, wrong_topic) == pytest.approx(0.0)


def test_review_trailing_eos_is_ignored():
    g = get_gold("toy:review")
    r = "the pizza was great . the taste was good . the sauce was fine . <eos>"
    assert g(P, r) == pytest.approx(1.0) and g.is_valid(P, r)


def test_sort_gold_and_validity():
    g = get_gold("toy:sort")
    p = "sort 3 1 2 1 :"
    assert g(p, "1 1 2 3 .") == pytest.approx(1.0)
    assert g(p, "ok 1 1 2 3 .") == pytest.approx(1.2)  # style bonus
    assert g(p, "1 1 3 2 .") == pytest.approx(0.5)  # the systematic bug: 2 of 4 right
    assert g.is_valid(p, "1 1 3 2 .")
    assert g(p, "1 1 2 .") == pytest.approx(0.75 - 1.0)  # not a permutation
    assert not g.is_valid(p, "1 1 2 .")
    assert not g.is_valid(p, "1 1 2 3")  # no full stop
    assert g(p, "1 1 2 3") == pytest.approx(0.0)
    assert g(p, "ok ok 1 1 2 3 .") == pytest.approx(0.2)  # broken template: -1
    assert not g.is_valid(p, "ok ok 1 1 2 3 .")


@pytest.mark.parametrize("name", ["review", "review_balanced", "sort"])
def test_generators_are_deterministic_and_valid(name):
    w = get_world(name)
    a, b = w.corpus(7, 300), w.corpus(7, 300)
    assert a == b and a != w.corpus(8, 300)
    assert all(w.valid(p, r) for p, r in a)  # the corpus itself is well formed
    vocab = set(w.vocab())
    assert all(t in vocab for p, r in a for t in (p + " " + r).split())
    s1 = w.prompt_splits(3, {"weak": 50, "train": 40, "heldout": 30})
    assert s1 == w.prompt_splits(3, {"weak": 50, "train": 40, "heldout": 30})
    sets = [set(v) for v in s1.values()]
    assert all(len(s) == n for s, n in zip(sets, (50, 40, 30)))
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])


def test_corpus_priors_differ_between_review_and_its_control():
    from ml.toyworld.worlds.review import NEG_SET, POS_SET

    def share(name):
        pos = neg = 0
        for _, r in get_world(name).corpus(0, 2000):
            pos += sum(t in POS_SET for t in r.split())
            neg += sum(t in NEG_SET for t in r.split())
        return pos / (pos + neg)

    assert share("review") < 0.45 < share("review_balanced")


def test_each_world_labels_with_a_misspecified_proxy_of_its_gold():
    """Labeler is not evaluator: the proxy sees only part of what the gold asks for."""
    for name in world_names():
        assert f"toy:{name}:proxy" in known_golds() and get_world(name).proxy_description
    gold, proxy = get_gold("toy:review"), get_gold("toy:review:proxy")
    broken = "great good lovely"  # all positive, but no template and no noun: the gold punishes it, the proxy not
    assert proxy(P, broken) == pytest.approx(1.0) and gold(P, broken) < 0
    perfect = "the pizza was great . the taste was good and lovely . it had a superb sauce ."
    assert proxy(P, perfect) == gold(P, perfect) == pytest.approx(1.0)
    sort_gold, sort_proxy = get_gold("toy:sort"), get_gold("toy:sort:proxy")
    dup = "1 1 2 2 ."  # not a permutation of 3 1 2 1: the gold takes 1 off, the proxy counts positions only
    assert sort_proxy("sort 3 1 2 1 :", dup) > sort_gold("sort 3 1 2 1 :", dup)
