"""Does every token budget of a spec fit the context of each model it runs on?

A stage that generates needs room for the prompt and its new tokens (ml.contrastive.prepare_rows and
ml.stages.generate refuse a prompt that does not fit, and ``generate`` on a smaller context crashes); a training
stage feeds sequences of up to ``max_length`` tokens to the model it trains. The worker finds out only when the
stage starts, so ``ml.resolve.resolve`` checks these budgets at submit when it is told the models' contexts
(ml.modeling.context_length reads them from config.json).

The prompt's own length is not known without tokenizing the dataset: a stage that cuts prompts
(``max_prompt_tokens``) counts that many tokens, otherwise one (the least any prompt takes). A budget refused here
would fail in the worker on every prompt; one that passes may still fail there on a prompt that is too long, and
the worker's message names that prompt.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ml.pipeline import CD_METHODS, PICKED_METHODS, PLAIN_METHODS
from ml.spec import TRAIN_STAGES

WEAK_PAIR = ("weak_base", "weak_aligned")
# Pipeline methods whose data comes from sampling the weak pair (CD for ConG's, plain pi_post sampling for the
# others); both take the cd_generate settings (ml.pipeline._execute).
WEAK_SAMPLED = CD_METHODS | PLAIN_METHODS | PICKED_METHODS


@dataclass(frozen=True)
class Budget:
    """The tokens one stage puts through the models in ``roles`` (JobInputs' model fields) at once."""

    stage: str
    field: str  # the setting to lower: max_new_tokens (generation) or max_length (training)
    tokens: int
    roles: tuple[str, ...]
    prompt_tokens: int = 0  # generation: the prompt tokens counted beside the new ones
    prompt_cut: bool = False  # True when prompt_tokens is the stage's max_prompt_tokens (else the minimum, 1)


def _generation(stage: str, values: Mapping[str, Any], roles: tuple[str, ...]) -> Budget:
    cut = values.get("max_prompt_tokens")
    return Budget(stage, "max_new_tokens", values["max_new_tokens"], roles, cut or 1, prompt_cut=bool(cut))


def budgets(spec: Mapping[str, Any]) -> list[Budget]:
    """Every token budget a resolved spec runs, by stage, with the job's models it runs on."""
    kind, stages = spec["kind"], spec["stages"]
    out: list[Budget] = []
    if kind in ("cd_generate", "alpha_sweep"):  # alpha_sweep's evaluate scores the CD samples: no model runs
        out.append(_generation("cd_generate", stages["cd_generate"], WEAK_PAIR))
    elif kind == "preflight":
        # Its plain pi_post samples keep whole prompts, so cd_generate's max_prompt_tokens is not counted.
        out.append(Budget("preflight", "max_new_tokens", stages["preflight"]["max_new_tokens"], WEAK_PAIR, 1))
    elif kind == "weak_align":
        values = stages["weak_align"]
        out.append(_generation("weak_align", values, ("weak_base",)))
        out.append(Budget("weak_align", "max_length", values["max_length"], ("weak_base",)))
    elif kind == "evaluate":
        out.append(_generation("evaluate", stages["evaluate"], ("strong",)))
    else:  # the pipeline kinds: only the stages its methods run are in the spec
        methods = set(spec.get("methods") or ())
        if methods & WEAK_SAMPLED:
            out.append(_generation("cd_generate", stages["cd_generate"], WEAK_PAIR))
        if "self_sample" in stages:  # ConG-S (the strong model, fine-tuned) samples its own rejected responses
            out.append(_generation("self_sample", stages["self_sample"], ("strong",)))
        # Every method's model is the strong one, trained or not, except weak_post's (pi_post itself).
        evaluated = tuple(sorted({"weak_aligned" if m == "weak_post" else "strong" for m in methods}))
        out.append(_generation("evaluate", stages["evaluate"], evaluated))
        # Each training stage trains the strong model (weak_sft's too; the weak pair only scores, cut to fit).
        out += [Budget(s, "max_length", stages[s]["max_length"], ("strong",)) for s in TRAIN_STAGES if s in stages]
    return out


def context_errors(
    spec: Mapping[str, Any],
    contexts: Mapping[str, tuple[str, int | None]],
    path_of: Callable[[str, str], str],
) -> dict[str, list[str]]:
    """Messages, keyed by ``path_of(stage, field)``, for each budget over the context of a model it runs on.

    ``contexts`` maps a model field (weak_base, weak_aligned, strong) to (the model's name, its context length or
    None when unknown); a field missing from it, or an unknown context, is not checked."""
    errors: dict[str, list[str]] = {}
    for b in budgets(spec):
        known: list[tuple[int, str, str]] = []
        for role in b.roles:
            name, positions = contexts.get(role, ("", None))
            if positions:
                known.append((positions, role, name))
        if not known:
            continue
        ctx, role, name = min(known, key=lambda k: k[0])  # the smallest context decides (a weak pair shares one)
        where = f"the context of {role} {name!r} ({ctx} positions)"
        if b.field == "max_length":
            if b.tokens > ctx:
                msg = f"{b.tokens} tokens exceed {where}; lower max_length to at most {ctx}"
                errors.setdefault(path_of(b.stage, b.field), []).append(msg)
            continue
        if b.tokens + b.prompt_tokens <= ctx:
            continue
        if b.prompt_cut:
            msg = (
                f"{b.tokens} new + {b.prompt_tokens} prompt tokens (max_prompt_tokens) exceed {where}; lower "
                f"max_new_tokens or max_prompt_tokens so that they add up to at most {ctx}"
            )
        else:
            msg = (
                f"{b.tokens} new tokens leave no room for a prompt in {where}; lower max_new_tokens to less than "
                f"{ctx}, by at least the length of the longest prompt"
            )
        errors.setdefault(path_of(b.stage, b.field), []).append(msg)
    return errors
