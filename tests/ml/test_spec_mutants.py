"""Spec-validation guarantees checked on the validators themselves (``make mutate``, docs/TESTING.md lists
the mutants each kills): JSON's view of types (an int is a number, a bool is not, nothing infinite), limits
(at the limit passes, over it fails, counts for lists), alphas in [0, 1], and errors collected per key path."""

from __future__ import annotations

from typing import Optional, Union

import pytest

from ml.resolve import _check_alphas, _check_value, _Errors, _Layer, _read_layer
from ml.spec import DEFAULT_LIMITS, SpecError, check_alpha, check_limit, check_type, kind_spec

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


def test_check_type_reads_a_union_whatever_the_order_of_its_members():
    """None may come first in a union (``None | int``): it is skipped, not the end of the search."""
    assert check_type(4, None | int) == 4 and check_type(None, None | int) is None
    with pytest.raises(ValueError, match=r"^must be an integer or null, got 'a'$"):
        check_type("a", None | int)


def test_check_type_refuses_a_type_no_request_can_set_with_exactly_that():
    with pytest.raises(ValueError) as exc:
        check_type(1, dict)
    assert str(exc.value) == "cannot be set through a request"


def _read(params, *, strict, used=("cd_generate", "sft", "evaluate")):
    # kind=cong with methods cong_s: the dpo stage is in the kind but does not run.
    errs = _Errors()
    layer = _read_layer(kind_spec("cong"), params, list(used), dict(DEFAULT_LIMITS), errs, strict=strict)
    return layer, errs.errors


def test_read_layer_takes_no_params_and_refuses_anything_but_an_object():
    for nothing in (None, ""):
        assert _read(nothing, strict=True) == (_Layer({}, {}, {}), {})
    for bad in ([1], "x", 3):
        assert _read(bad, strict=True) == (
            _Layer({}, {}, {}),
            {"params": ['params must be a JSON object, e.g. {"max_prompts": 100}']},
        )


def test_read_layer_reads_every_key_after_a_bad_one_and_says_why_each_is_refused():
    """A request (strict) gets one error per bad key, under its path, and every good key is still read; a
    dataset's recommendations (not strict) keep exactly what fits, silently. Bad keys come first here, so a
    loop that stopped at one would lose what follows."""
    params = {
        "dpo": {"beta": 0.2},  # a stage of the kind that these methods do not run
        "evaluate": 5,  # a stage's settings that are not an object
        "sft": {"model": "x", "learning_rate": 1e-4},  # a setting the job chooses, then a good one
        "cd_generate": {"alpha": 0.5, "bogus": 1, "temperature": 0.7},  # a wired one, an unknown one, a good one
        "max_prompts": 7,  # a top setting
        "temperature": 0.5,  # a knob
    }
    want = _Layer(
        knobs={"temperature": 0.5},
        top={"max_prompts": 7},
        stages={"sft": {"learning_rate": 1e-4}, "cd_generate": {"temperature": 0.7}},
    )
    layer, errors = _read(params, strict=True)
    assert layer == want
    (bogus,) = errors.pop("params.cd_generate.bogus")
    assert bogus.startswith("unknown setting; known: ") and "temperature" in bogus
    assert errors == {
        "params.dpo": ["the dpo stage does not run in this job (its methods do not use it)"],
        "params.evaluate": ["evaluate settings must be an object of that stage's settings"],
        "params.sft.model": [
            "a file, model or device that the job chooses; it cannot be set in a request (pick models and "
            "datasets by id)"
        ],
        "params.cd_generate.alpha": [
            "set by the job itself, not per stage (alpha is the job's alpha; seed and lengths are params' own)"
        ],
    }
    assert _read(params, strict=False) == (want, {})
