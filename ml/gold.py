"""Gold rewards: the programmatic judges that stand in for a GPT-4 judge offline.

A gold reward is any callable ``(prompt, response) -> float``; worlds may also say whether a
response is well formed (``valid``). Named rewards are registered here so configs, the CLI and the
web app can refer to them by a string such as ``"toy:review"``. A local reward model is named by its folder,
``"rm:<folder>"`` (ml.judge.reward_model); its GoldReward also scores many pairs at once (``score_many``), which
the stages call, so a model-based gold runs batched while a programmatic one is simply called per pair.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

GoldFn = Callable[[str, str], float]
ValidFn = Callable[[str, str], bool]
BatchFn = Callable[[list[tuple[str, str]]], list[float]]

RM_PREFIX = "rm:"  # "rm:<folder>": a reward model as gold (ml.judge.reward_model)


@dataclass(frozen=True)
class GoldReward:
    name: str
    score: GoldFn
    valid: ValidFn | None = None
    batch: BatchFn | None = None  # scores a list of (prompt, response) at once (a reward model); None: per pair

    def __call__(self, prompt: str, response: str) -> float:
        return float(self.score(prompt, response))

    def score_many(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """Every pair's score, in order: one batched call when the gold has one, else one call per pair."""
        if self.batch is not None:
            return [float(s) for s in self.batch(list(pairs))]
        return [self(p, r) for p, r in pairs]

    def is_valid(self, prompt: str, response: str) -> bool:
        return True if self.valid is None else bool(self.valid(prompt, response))


_REGISTRY: dict[str, Callable[[], GoldReward]] = {}


def register(name: str, factory: Callable[[], GoldReward]) -> None:
    _REGISTRY[name] = factory


def get_gold(
    name: str,
    *,
    device: str | None = None,
    batch_size: int | None = None,
    cache_file: str | Path | None = None,
) -> GoldReward:
    """The gold reward a name stands for. The keywords only matter to a reward model (``rm:<folder>``): where it
    runs, how many pairs per forward pass, and the stage's file of scores already computed."""
    if name.startswith(RM_PREFIX):
        from ml.judge.reward_model import reward_gold

        return reward_gold(name[len(RM_PREFIX) :], device=device, batch_size=batch_size, cache_file=cache_file)
    if name not in _REGISTRY:
        _autoload()
    try:
        return _REGISTRY[name]()
    except KeyError:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise ValueError(f"unknown gold reward {name!r}; known: {known}") from None


def resolve_gold(
    gold: GoldReward | str | GoldFn,
    *,
    device: str | None = None,
    batch_size: int | None = None,
    cache_file: str | Path | None = None,
) -> GoldReward:
    """Accept what configs and callers pass: a GoldReward, a registered name (or ``rm:<folder>``; the keywords are
    get_gold's), or a bare callable."""
    if isinstance(gold, GoldReward):
        return gold
    if isinstance(gold, str):
        return get_gold(gold, device=device, batch_size=batch_size, cache_file=cache_file)
    if callable(gold):
        return GoldReward(name=getattr(gold, "__name__", "custom"), score=gold)
    raise ValueError(
        "gold must be a GoldReward, a registered gold name or a callable (prompt, response) -> float, "
        f"not {type(gold).__name__}"
    )


def release_gold_models() -> None:
    """Free the memory a model-based gold holds (a reward model), before a stage that needs it (training)."""
    import sys

    rm = sys.modules.get("ml.judge.reward_model")
    if rm is not None:
        rm.unload()


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
