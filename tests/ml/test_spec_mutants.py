"""Spec-validation guarantees checked on the validators themselves (``make mutate``, docs/TESTING.md lists
the mutants each kills): JSON's view of types (an int is a number, a bool is not, nothing infinite), limits
(at the limit passes, over it fails, counts for lists), alphas in [0, 1], and errors collected per key path."""

from __future__ import annotations

from typing import Optional, Union

import pytest

from ml.resolve import _check_alphas, _check_value, _Errors
from ml.spec import SpecError, check_alpha, check_limit, check_type

# typing.Optional/Union on purpose: check_type must read them as well as the X | Y form.
OPT_INT = Optional[int]  # noqa: UP045
INT_OR_STR = Union[int, str]  # noqa: UP007


@pytest.mark.parametrize(
    "value, tp, want",
    [
        (3, int, 3),
        (3, float, 3.0),
        (2.5, float, 2.5),
        (True, bool, True),
        (False, bool, False),
        ("x", str, "x"),
        (None, OPT_INT, None),
        (4, OPT_INT, 4),
        (4, INT_OR_STR, 4),
        ("s", INT_OR_STR, "s"),
        ([1, 2], list[int], [1, 2]),
        ([1, 2.5], list[float], [1.0, 2.5]),
        ([], list[int], []),
        (7, int | None, 7),
    ],
)
def test_check_type_accepts_json_values_of_the_type(value, tp, want):
    got = check_type(value, tp)
    assert got == want and type(got) is type(want)


@pytest.mark.parametrize(
    "value, tp, needle",
    [
        (True, int, "must be an integer, got True"),
        (1.0, int, "must be an integer"),
        (False, float, "must be a number"),
        ("1", float, "must be a number"),
        (float("inf"), float, "must be a number"),
        (float("nan"), float, "must be a number"),
        (10**400, float, "must be a number"),  # OverflowError inside, a ValueError out
        (1, bool, "must be true or false"),
        (1, str, "must be a string"),
        (None, int, "must be an integer"),
        ("a", OPT_INT, "must be an integer or null, got 'a'"),
        ("a", list[int], "must be a list of integers"),
        ([1, "a"], list[int], "must be an integer, got 'a'"),
        (1, dict, "cannot be set through a request"),
    ],
)
def test_check_type_refuses_with_what_it_must_be(value, tp, needle):
    with pytest.raises(ValueError) as exc:
        check_type(value, tp)
    assert needle in str(exc.value)


def test_check_limit_passes_at_the_limit_fails_over_it_and_counts_lists():
    limits = {"max_new_tokens": 10, "alphas": 2, "batch_size": 4}
    why = " (the server's JOB_LIMITS)"
    assert check_limit("max_new_tokens", 10, limits) is None
    assert check_limit("max_new_tokens", 11, limits) == "11 is over the limit max_new_tokens=10" + why
    assert check_limit("max_new_tokens", 10.5, limits) == "10.5 is over the limit max_new_tokens=10" + why
    assert check_limit("alphas", [0.1, 0.2], limits) is None
    assert check_limit("alphas", [0.1, 0.2, 0.3], limits) == "3 values is over the limit alphas=2" + why
    assert check_limit("per_device_train_batch_size", 5, limits).endswith("batch_size=4 (the server's JOB_LIMITS)")
    assert check_limit("learning_rate", 10**9, limits) is None  # no limit bounds it
    assert check_limit("max_prompts", 10**9, limits) is None  # a limit the caller did not set
    assert check_limit("max_new_tokens", None, limits) is None
    assert check_limit("max_new_tokens", True, {"max_new_tokens": 0}) is None  # a bool is not a count


def test_check_alpha_is_a_number_in_0_1_inclusive():
    assert check_alpha(0) == 0.0 and check_alpha(1) == 1.0 and check_alpha(0.5) == 0.5
    for bad in (-0.01, 1.01):
        with pytest.raises(ValueError, match="alpha must be between 0 and 1"):
            check_alpha(bad)
    for bad in (True, "0.5", None):
        with pytest.raises(ValueError, match="alpha must be a number between 0 and 1"):
            check_alpha(bad)


def test_check_alphas_names_the_bad_entry_and_refuses_duplicates_and_too_many():
    limits = {"alphas": 3}
    errs = _Errors()
    assert _check_alphas("params.alphas", [0, 0.5, 1], limits, errs) == [0.0, 0.5, 1.0]
    assert errs.errors == {}
    cases = [
        ([], {"params.alphas": ["alphas must be a non-empty list of numbers in [0, 1]"]}),
        (0.5, {"params.alphas": ["alphas must be a non-empty list of numbers in [0, 1]"]}),
        ([0.1, 0.2, 0.3, 0.4], {"params.alphas": ["4 values is over the limit alphas=3 (the server's JOB_LIMITS)"]}),
        ([0.1, 0.1], {"params.alphas": ["alphas must be distinct: each alpha runs once"]}),
    ]
    for value, want in cases:
        errs = _Errors()
        assert _check_alphas("params.alphas", value, limits, errs) is None
        assert errs.errors == want
    errs = _Errors()
    assert _check_alphas("params.alphas", [0.1, 2, "x"], limits, errs) is None
    assert list(errs.errors) == ["params.alphas[1]"]  # the first bad entry, by index
    assert errs.errors["params.alphas[1]"][0].startswith("alpha must be between 0 and 1")


def test_check_value_reports_type_then_limit_under_the_key_path():
    errs = _Errors()
    assert _check_value("params.max_new_tokens", "max_new_tokens", 5, int, {"max_new_tokens": 8}, errs) == (True, 5)
    assert _check_value("params.max_new_tokens", "max_new_tokens", 9, int, {"max_new_tokens": 8}, errs) == (False, None)
    assert _check_value("params.x", "x", "a", int, {}, errs) == (False, None)
    assert _check_value("params.lr", "lr", 1, float, {}, errs) == (True, 1.0)
    assert errs.errors == {
        "params.max_new_tokens": ["9 is over the limit max_new_tokens=8 (the server's JOB_LIMITS)"],
        "params.x": ["must be an integer, got 'a'"],
    }


def test_errors_collect_every_message_per_path_and_raise_them_together():
    errs = _Errors()
    errs.raise_if_any()  # nothing collected: no error
    errs.add("a", "one")
    errs.add("a", "two")
    errs.add("b", "three")
    with pytest.raises(SpecError) as exc:
        errs.raise_if_any()
    assert exc.value.errors == {"a": ["one", "two"], "b": ["three"]}
