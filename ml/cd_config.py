"""Contrastive-decoding settings (``CDConfig``), apart from the decode loop in ml.contrastive.

Kept in its own module, without torch, so that ml.contrastive stays under the project's 500-line limit and
the settings (validated once here, offered to requests through ml.spec) are readable on their own.
ml.contrastive re-exports both names, so ``from ml.contrastive import CDConfig`` keeps working.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

REPETITION_PENALTY_SCOPES = ("all", "generated")
COMPILE_MODES = ("off", "on", "auto")
# How the CD score is computed (ml.contrastive._cd_step): the paper's equation, or the reference code's numbers.
SCORE_MODES = ("formula", "reference")


@dataclass
class CDConfig:
    """Contrastive-decoding settings; defaults are the ConG reference runs' values."""

    alpha: float = field(
        default=0.4,
        metadata={
            "help": "Weight of pi_post in the score: 1 = plain sampling from pi_post, 0 = pure log ratio "
            "log pi_post - log pi_pre (the paper sweeps 0.0..1.0)."
        },
    )
    relative_top: float = field(
        default=0.1,
        metadata={
            "help": "Plausibility cut: keep tokens whose pi_post probability is at least relative_top times "
            "the most likely token's. In (0, 1]."
        },
    )
    temperature: float = field(default=0.8, metadata={"help": "Sampling temperature (> 0); unused when greedy."})
    top_p: float = field(default=0.95, metadata={"help": "Nucleus sampling mass in (0, 1]; unused when greedy."})
    repetition_penalty: float = field(
        default=1.2,
        metadata={
            "help": "transformers' repetition penalty applied to the CD scores (1.0 = off); it divides positive "
            "and multiplies negative scores, so it works on log-ratio scores too."
        },
    )
    repetition_penalty_scope: str = field(
        default="all",
        metadata={
            "help": "Which tokens the repetition penalty sees: 'all' = prompt and generated tokens (the reference "
            "code's and transformers' behaviour), 'generated' = generated tokens only, so the prompt's own "
            "words (which a reward may ask to mention) are not penalised."
        },
    )
    max_new_tokens: int = field(default=256, metadata={"help": "Most tokens generated per prompt."})
    do_sample: bool = field(default=True, metadata={"help": "Sample (True) or take the argmax (False)."})
    seed: int = field(default=0, metadata={"help": "Seed of the sampling generator (independent of global RNG)."})
    batch_size: int = field(default=8, metadata={"help": "Prompts decoded together."})
    stop_strings: list[str] = field(
        default_factory=list,
        metadata={"help": "Text is cut at the first of these strings (and token_ids to the tokens that produced it)."},
    )
    use_chat_template: bool = field(
        default=True,
        metadata={"help": "Wrap each prompt as a user message with the tokenizer's chat template, when it has one."},
    )
    ignore_eos: bool = field(
        default=False,
        metadata={"help": "Keep generating after EOS up to max_new_tokens (benchmarks: fixed token counts)."},
    )
    max_prompt_tokens: int | None = field(
        default=None,
        metadata={"help": "Keep only the last N prompt tokens (None = keep all; a too-long prompt then raises)."},
    )
    score_mode: str = field(
        default="formula",
        metadata={
            "help": "'formula' = the paper's equation, score = log pi_post - (1 - alpha) log pi_pre on the plausible "
            "set; 'reference' = the reference code's numbers: pi_pre outside the set is set to -1e-3 and "
            "log-softmaxed again before the difference, which shifts every score by a per-step constant that the "
            "repetition penalty then amplifies (docs/ML.md)."
        },
    )
    compile: str = field(
        default="off",
        metadata={
            "help": "Decode with the compiled path (ml.cd_compiled: static KV caches, torch.compile, finished rows "
            "refilled with the next prompt): 'off' = the eager loop, 'on' = compiled (an error if the models "
            "cannot be), 'auto' = compiled on CUDA GPUs, eager elsewhere (docs/ML.md). Greedy output is the same."
        },
    )

    def __post_init__(self) -> None:
        if isinstance(self.stop_strings, str):
            raise ValueError("stop_strings must be a list of strings, e.g. ['\\n\\n'], not a single string")
        self.stop_strings = list(self.stop_strings)
        checks = [
            (0.0 <= self.alpha <= 1.0, f"alpha must be in [0, 1], got {self.alpha}"),
            (0.0 < self.relative_top <= 1.0, f"relative_top must be in (0, 1], got {self.relative_top}"),
            (
                self.temperature > 0.0,
                f"temperature must be > 0 (use do_sample=False for greedy), got {self.temperature}",
            ),
            (0.0 < self.top_p <= 1.0, f"top_p must be in (0, 1], got {self.top_p}"),
            (
                self.repetition_penalty > 0.0,
                f"repetition_penalty must be > 0 (1.0 turns it off), got {self.repetition_penalty}",
            ),
            (
                self.repetition_penalty_scope in REPETITION_PENALTY_SCOPES,
                f"repetition_penalty_scope must be one of {', '.join(REPETITION_PENALTY_SCOPES)}, "
                f"got {self.repetition_penalty_scope!r}",
            ),
            (
                isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 1,
                f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens}",
            ),
            (
                isinstance(self.batch_size, int) and self.batch_size >= 1,
                f"batch_size must be an integer >= 1, got {self.batch_size}",
            ),
            (isinstance(self.seed, int), f"seed must be an integer, got {self.seed!r}"),
            (
                all(isinstance(s, str) and s for s in self.stop_strings),
                f"stop_strings must be non-empty strings, got {self.stop_strings!r}",
            ),
            (
                self.score_mode in SCORE_MODES,
                f"score_mode must be one of {', '.join(SCORE_MODES)}, got {self.score_mode!r}",
            ),
            (
                self.compile in COMPILE_MODES,
                f"compile must be one of {', '.join(COMPILE_MODES)}, got {self.compile!r}",
            ),
            (
                self.max_prompt_tokens is None or self.max_prompt_tokens >= 1,
                f"max_prompt_tokens must be None or >= 1, got {self.max_prompt_tokens}",
            ),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"CDConfig: {msg}")


# One setting, offered by the CD job (CDGenerateConfig.plain) and the pipelines (PipelineConfig.plain).
PLAIN_FIELD_HELP = (
    "Also sample plain pi_post for the same prompts, so every generated pair shows CD beside a plain sample "
    "(the review's comparison side, and the WeakSFT/WSPO/AuxConf data; false saves that generation)."
)


def plain_field() -> Any:
    return field(default=True, metadata={"help": PLAIN_FIELD_HELP})
