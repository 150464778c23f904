"""The toy world: an embedded, offline benchmark where ConG's claims are checked in minutes.

Three worlds (see ``worlds/``): ``review`` (a graded preference whose corpus prior leans against it),
``review_balanced`` (its control, with a balanced prior) and ``sort`` (a shortcut world). Each
registers its gold reward in ``ml.gold`` as ``"toy:<world>"`` on import, and the misspecified proxy that labels
weak alignment's pairs as ``"toy:<world>:proxy"`` (labeler is not evaluator).
"""

from __future__ import annotations

from ml.gold import GoldReward, register

from .worlds import WORLDS, get_world

__all__ = ["WORLDS", "get_world", "world_names"]


def world_names() -> list[str]:
    return list(WORLDS)


def _register_golds() -> None:
    for name in WORLDS:

        def factory(name: str = name) -> GoldReward:
            w = get_world(name)
            return GoldReward(name=w.gold_name, score=w.gold, valid=w.valid)

        register(f"toy:{name}", factory)

        def proxy_factory(name: str = name) -> GoldReward:
            w = get_world(name)
            return GoldReward(name=w.label_gold_name, score=w.proxy, valid=w.valid)

        register(f"toy:{name}:proxy", proxy_factory)


_register_golds()
