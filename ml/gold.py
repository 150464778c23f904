"""Gold rewards: the programmatic judges that stand in for a GPT-4 judge offline.

A gold reward is any callable ``(prompt, response) -> float``; worlds may also say whether a
response is well formed (``valid``). Named rewards are registered here so configs, the CLI and the
web app can refer to them by a string such as ``"toy:review"``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

GoldFn = Callable[[str, str], float]
ValidFn = Callable[[str, str], bool]


@dataclass(frozen=True)
class GoldReward:
    name: str
    score: GoldFn
    valid: ValidFn | None = None

    def __call__(self, prompt: str, response: str) -> float:
        return float(self.score(prompt, response))

    def is_valid(self, prompt: str, response: str) -> bool:
        return True if self.valid is None else bool(self.valid(prompt, response))


_REGISTRY: dict[str, Callable[[], GoldReward]] = {}


def register(name: str, factory: Callable[[], GoldReward]) -> None:
    _REGISTRY[name] = factory


def get_gold(name: str) -> GoldReward:
    if name not in _REGISTRY:
        _autoload()
    try:
        return _REGISTRY[name]()
    except KeyError:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise ValueError(f"unknown gold reward {name!r}; known: {known}") from None


def resolve_gold(gold: GoldReward | str | GoldFn) -> GoldReward:
    """Accept what configs and callers pass: a GoldReward, a registered name, or a bare callable."""
    if isinstance(gold, GoldReward):
        return gold
    if isinstance(gold, str):
        return get_gold(gold)
    if callable(gold):
        return GoldReward(name=getattr(gold, "__name__", "custom"), score=gold)
    raise ValueError(
        "gold must be a GoldReward, a registered gold name or a callable (prompt, response) -> float, "
        f"not {type(gold).__name__}"
    )


def known_golds() -> list[str]:
    _autoload()
    return sorted(_REGISTRY)


def _autoload() -> None:
    # Worlds register themselves on import; import lazily so ml.gold stays dependency-free.
    for mod in ("ml.toyworld", "ml.judge"):
        try:
            __import__(mod)
        except ImportError:
            pass
