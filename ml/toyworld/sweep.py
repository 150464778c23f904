"""Sampling and scoring shared by the report and the pre-flight diagnostic.

The code is generic and lives in ``ml.diagnose`` (it works for any weak pair); the toy world uses it
from there. Its prompts need no chat template (the toy tokenizers have none), so callers here pass
``use_chat_template=False`` to say so.
"""

from __future__ import annotations

from typing import Any

from ml.diagnose import cd_samples, plain_samples, run_sweep, summarize
from ml.stats import pearson

__all__ = ["ABLATIONS", "cd_samples", "pearson", "plain_samples", "run_sweep", "summarize"]

# The CD sweep again with one CDConfig setting changed (same prompts, seeds and models), each cached in
# runs/<world>/seed<S>/sweep_<name>.json and reported as alpha_sweep_<name>, with its difference from the
# main sweep paired by seed (alpha_sweep_<name>_minus_default). name -> (CDConfig overrides, what it shows).
ABLATIONS: dict[str, tuple[dict[str, Any], str]] = {
    "no_repetition_penalty": (
        {"repetition_penalty": 1.0},
        "CD with repetition penalty 1.0 instead of the reference's 1.2",
    ),
    "score_reference": (
        {"score_mode": "reference"},
        "CD scored as the reference code does (score_mode reference: pi_pre filtered to -0.001 and "
        "log-softmaxed again, so the repetition penalty acts on shifted scores)",
    ),
}
