"""A verifiable instruction-following judge: the offline gold reward for real models.

The reward of (prompt, response) is the fraction of the prompt's constraints the response satisfies
(``if:judge``); ``if:strict`` is 1.0 only when all are satisfied (IFEval's strict accuracy, per
prompt). Constraints are read back from the prompt text itself (``parse_constraints``), so the judge
fits ml.gold's (prompt, response) -> float interface with no side file, and works on any prompt that
states its constraints in the project's phrasing.

A response with fewer than ``MIN_WORDS`` words scores 0 on everything: otherwise an empty answer
would satisfy "fewer than 40 words" and "no commas", and training on best-of-k labels would learn to
say nothing.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from ml.gold import GoldReward, register
from ml.judge.constraints import KINDS, check, count_words, parse_constraints, render
from ml.judge.prompts import build_prompts, split_of, write_splits

MIN_WORDS = 3

# A parsed constraint list in hashable form, so lru_cache can hold it: ((id, ((kwarg, value), ...)), ...)
_Frozen = tuple[tuple[str, tuple[tuple[str, Any], ...]], ...]

__all__ = [
    "KINDS",
    "MIN_WORDS",
    "build_prompts",
    "check",
    "count_words",
    "judge",
    "parse_constraints",
    "render",
    "split_of",
    "strict_score",
    "if_score",
    "write_splits",
]


@lru_cache(maxsize=4096)
def _constraints_of(prompt: str) -> _Frozen:
    found = parse_constraints(prompt)
    if not found:
        raise ValueError(
            "the if:judge gold reward found no constraint in this prompt (it reads constraints "
            f"written the way ml.judge.prompts writes them): {prompt[:120]!r}"
        )
    return tuple((c["id"], tuple(sorted((k, _freeze(v)) for k, v in c["kwargs"].items()))) for c in found)


def _freeze(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


def _thaw(frozen: _Frozen) -> list[dict[str, Any]]:
    return [{"id": cid, "kwargs": {k: list(v) if isinstance(v, tuple) else v for k, v in kw}} for cid, kw in frozen]


def judge(prompt: str, response: str, constraints: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Per-constraint results plus ``score`` (fraction satisfied) and ``strict`` (all satisfied)."""
    cons = constraints if constraints is not None else _thaw(_constraints_of(prompt))
    if not cons:
        raise ValueError("no constraints to judge")
    too_short = count_words(response) < MIN_WORDS
    results = [
        {"id": c["id"], "kwargs": c.get("kwargs", {}), "ok": (not too_short) and check(c, response)} for c in cons
    ]
    n_ok = sum(r["ok"] for r in results)
    return {
        "score": n_ok / len(results),
        "strict": float(n_ok == len(results)),
        "results": results,
        "too_short": too_short,
    }


def if_score(prompt: str, response: str) -> float:
    return float(judge(prompt, response)["score"])


def strict_score(prompt: str, response: str) -> float:
    return float(judge(prompt, response)["strict"])


def _valid(prompt: str, response: str) -> bool:
    return count_words(response) >= MIN_WORDS


register("if:judge", lambda: GoldReward(name="if:judge", score=if_score, valid=_valid))
register("if:strict", lambda: GoldReward(name="if:strict", score=strict_score, valid=_valid))
