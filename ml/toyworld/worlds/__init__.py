"""The worlds, by name. Each factory returns a fresh, deterministic world object."""

from __future__ import annotations

from collections.abc import Callable

from .base import ModelRecipe, Recipe, WeakAlignRecipe, World
from .review import review_balanced_world, review_world
from .sort import sort_world

WORLDS: dict[str, Callable[[], World]] = {
    "review": review_world,
    "review_balanced": review_balanced_world,
    "sort": sort_world,
}


def get_world(name: str) -> World:
    try:
        return WORLDS[name]()
    except KeyError:
        raise ValueError(f"unknown toy world {name!r}; pick one of {', '.join(WORLDS)}") from None


__all__ = ["WORLDS", "get_world", "World", "Recipe", "ModelRecipe", "WeakAlignRecipe"]
