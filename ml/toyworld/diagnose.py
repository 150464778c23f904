"""The pre-flight check on a toy world's weak pair.

The check itself (sweep, verdict, plain-language message) is generic and lives in ``ml.diagnose``;
this module adds the toy-world glue: build the world (or reuse its build) and run the check on its
held-out prompts with its gold reward.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ml.diagnose import LOWERS, NO_GAIN, RAISES, preflight, verdict, verdict_over_seeds
from ml.reporter import Reporter

__all__ = ["LOWERS", "NO_GAIN", "RAISES", "preflight", "preflight_world", "verdict", "verdict_over_seeds"]


def preflight_world(
    world: str,
    seed: int = 0,
    data_dir: str | Path | None = None,
    *,
    size: str = "default",
    n_prompts: int = 200,
    n: int = 2,
    reporter: Reporter | None = None,
    diag_seed: int = 12345,
) -> dict[str, Any]:
    """The pre-flight check on a toy world's build (built first if needed), on its held-out prompts.

    ``diag_seed`` is kept apart from the report's sampling seed, so the check is an independent draw."""
    from ml.io import read_prompts
    from ml.modeling import load_causal_lm, load_tokenizer

    from .build import build

    m = build(world, seed, data_dir, reporter=reporter, size=size)
    if m.get("stopped"):
        return m
    aligned = load_causal_lm(m["models"]["weak_aligned"], device="cpu")
    base = load_causal_lm(m["models"]["weak_base"], device="cpu")
    tok = load_tokenizer(m["models"]["weak_aligned"])
    prompts = read_prompts(m["prompts"]["heldout"], n_prompts)
    out = preflight(
        aligned,
        base,
        tok,
        prompts,
        m["gold"],
        n=n,
        seed=diag_seed,
        max_new_tokens=m["generation"]["max_new_tokens"],
        use_chat_template=bool(m["generation"].get("use_chat_template", False)),
        reporter=reporter,
    )
    return {"world": world, "seed": seed, **out}
