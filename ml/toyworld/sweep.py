"""Sampling and scoring shared by the report and the pre-flight diagnostic.

The code is generic and lives in ``ml.diagnose`` (it works for any weak pair); the toy world uses it
from there. Its prompts need no chat template (the toy tokenizers have none), so callers here pass
``use_chat_template=False`` to say so.
"""

from __future__ import annotations

from ml.diagnose import cd_samples, plain_samples, run_sweep, summarize
from ml.stats import pearson

__all__ = ["cd_samples", "pearson", "plain_samples", "run_sweep", "summarize"]
