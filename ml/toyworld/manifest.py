"""The toy world's manifest (<world>/seed<N>/manifest.json): typed and versioned, written by ml.toyworld.build and
read by the web app's registration, so neither side guesses key names.

Version 2: {"version": 2, "world", "description", "seed", "size", "root", "gold", "label_gold",
            "models": {"weak_base", "weak_aligned", "strong_base"}, "prompts": {"train", "heldout", "weak"},
            "generation": {"max_new_tokens", "use_chat_template"}, "recipe", "summaries", "built_seconds"}
"gold" scores (the evaluation gold); "label_gold" labelled weak alignment's pairs (a misspecified proxy: labeler
is not evaluator). Version 1 had no label_gold (its builds were labelled by "gold"); they are rebuilt.
A reader may get a partial manifest (tests, a half-registered world): models and prompt splits may be missing,
every other key has a default. An unknown version or an unknown model role / split is an error that says so.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

MANIFEST_VERSION = 2
MODEL_ROLES = ("weak_base", "weak_aligned", "strong_base")
PROMPT_SPLITS = ("train", "heldout", "weak")


@dataclass(frozen=True, kw_only=True)
class ToyManifest:
    world: str
    seed: int = 0
    size: str = "default"
    version: int = MANIFEST_VERSION
    description: str = ""
    root: str = ""
    gold: str = ""
    label_gold: str = ""
    models: dict[str, str] = field(default_factory=dict)
    prompts: dict[str, str] = field(default_factory=dict)
    generation: dict[str, Any] = field(default_factory=dict)
    recipe: dict[str, Any] = field(default_factory=dict)
    summaries: dict[str, Any] = field(default_factory=dict)
    built_seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.version != MANIFEST_VERSION:
            raise ValueError(f"toy manifest version {self.version!r}; this code reads version {MANIFEST_VERSION}")
        for what, got, known in (
            ("model role", self.models, MODEL_ROLES),
            ("prompt split", self.prompts, PROMPT_SPLITS),
        ):
            unknown = sorted(set(got) - set(known))
            if unknown:
                raise ValueError(f"toy manifest: unknown {what}(s) {unknown}; known: {', '.join(known)}")

    @property
    def gold_name(self) -> str:
        return self.gold or f"toy:{self.world}"

    @property
    def tag(self) -> str:
        """The registered names' prefix: toy-<world>-s<seed>[-<size>]."""
        return f"toy-{self.world}-s{self.seed}" + ("" if self.size in ("default", "") else f"-{self.size}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ToyManifest:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"toy manifest: unknown key(s) {unknown}; known: {', '.join(sorted(known))}")
        if "world" not in data:
            raise ValueError("toy manifest: 'world' is missing")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
