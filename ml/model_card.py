"""Model cards: a README.md in every model folder a training stage wrote, saying what the model is and how it was
made, so a folder downloaded on its own (the web app's artifact download) still explains itself.

A card has: the model it was trained from, the data (files by name, with counts), the method (the pipeline's label
and the stage), the hyperparameters (the stage config's settable fields, as run), the training summary the stage
left in DONE.json, the held-out results when the pipeline evaluated the model, and how it was made (congweb, the
stage). Everything is read from what the run already holds (the stage configs the pipeline built, its results and
each stage's DONE.json), so a card never says anything the run did not record.

Nothing here runs a model or imports torch; ml.pipeline calls ``write_model_cards`` once its results are in, and
ml.execute does for a weak_align job.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

from ml.io import DONE_MARKER, stage_done
from ml.pipeline_config import LABELS
from ml.results import method_rows

CARD = "README.md"
# Stages that train a model for no method of their own (a method's stage is named by the results row that points
# at its folder): the weak pair's alignment, pi_pre -> pi_post.
STAGE_LABELS = {"weak_align": "Weak alignment (pi_pre -> pi_post by DPO on gold-labelled samples)"}
# What DONE.json says about the training itself, in this order (ml.stages._train.run_training and the stages' extras).
TRAINING_KEYS = (
    "steps",
    "max_steps",
    "epochs_trained",
    "train_loss",
    "final_loss",
    "n_examples",
    "n_pairs",
    "n_empty_dropped",
    "world_size",
    "distributed",
    "seconds",
)


def write_model_cards(stages: Mapping[str, Any], results: Mapping[str, Any] | None = None) -> list[Path]:
    """Write the card of every finished training stage in ``stages`` (stage name -> the config it ran with); returns
    the cards written. ``results``: the pipeline's results (its config and one row per method), when there are any.

    A training stage is one whose DONE.json names a ``model_dir`` holding a model (config.json): generation and
    evaluation stages have none, so no list of stage kinds is kept here. The method whose results row points at that
    folder names the card; inputs the pipeline did not train (the strong base, a given pi_post) get none."""
    rows = dict((results or {}).get("methods") or {})
    written: list[Path] = []
    for stage, cfg in stages.items():
        done = stage_done(cfg.output_dir) or {}
        model_dir = Path(done.get("model_dir") or "")
        if not done.get("model_dir") or not (model_dir / "config.json").is_file():
            continue
        method = next((m for m, r in rows.items() if _same(r.get("model"), model_dir)), None)
        text = model_card(stage, cfg, done, results=results, method=method)
        (model_dir / CARD).write_text(text, encoding="utf-8")
        written.append(model_dir / CARD)
    return written


def model_card(
    stage: str, cfg: Any, done: Mapping[str, Any], *, results: Mapping[str, Any] | None = None, method: str | None
) -> str:
    """The card's Markdown (a Hugging Face model card: YAML front matter, then the sections)."""
    run = Path(cfg.output_dir).parent  # the run folder: every stage writes under <run>/<stage>/
    pipeline = dict((results or {}).get("config") or {})
    row = ((results or {}).get("methods") or {}).get(method) if method else None
    label = LABELS.get(method or "", "") or STAGE_LABELS.get(stage, stage)
    title = f"{label} (`{method}`)" if method else label
    settings, files, models = _split(cfg)
    lines = [
        "---",
        "library_name: transformers",
        "tags:",
        *(f"- {t}" for t in ("congweb", "weak-to-strong", "contrastive-decoding", method or stage)),
        "---",
        "",
        f"# {title}",
        "",
        f"A causal language model trained by congweb's Contrastive Weak-to-Strong generalization pipeline, stage "
        f"`{stage}`. Load it with `AutoModelForCausalLM.from_pretrained(folder)` and "
        "`AutoTokenizer.from_pretrained(folder)`.",
        "",
        "## Base model",
        "",
        *(f"- {name}: `{_where(value, run)}`" for name, value in models),
        *_weak_pair(results, run),
        "",
        "## Data",
        "",
        *(f"- {name}: `{_where(value, run)}` ({_count_rows(value)} rows)" for name, value in files),
        *_pipeline_data(pipeline),
        "",
        "## Method",
        "",
        f"- method: {label}" + (f" (`{method}`)" if method else ""),
        f"- stage: `{stage}` ({type(cfg).__name__})",
        *(f"- {k}: {_fmt(pipeline[k])}" for k in ("alpha", "methods") if k in pipeline),
        "",
        "## Hyperparameters",
        "",
        "| setting | value |",
        "|---|---|",
        *(f"| {name} | {_fmt(value)} |" for name, value in settings),
        "",
        "## Training",
        "",
        *(f"- {k}: {_fmt(done[k])}" for k in TRAINING_KEYS if done.get(k) is not None),
        "",
        "## Results",
        "",
        *_results(method, row),
        "",
        "## How it was made",
        "",
        f"congweb (the `{stage}` stage of `python -m ml` / a congweb job) wrote this folder under "
        f"`{run.name}/{stage}/`; the stage's summary is its `{DONE_MARKER}`"
        + (", the run's results its `results.json`." if results else "."),
        "",
    ]
    return "\n".join(lines)


def _split(cfg: Any) -> tuple[list[tuple[str, Any]], list[tuple[str, str]], list[tuple[str, str]]]:
    """(settable fields, data files, model folders) of a stage config. The settable ones are what a request may set
    (fields not marked internal, as in ml.spec); among the internal ones, an existing file is data and a folder
    with a config.json a model, so no list of field names is kept here."""
    settings: list[tuple[str, Any]] = []
    files: list[tuple[str, str]] = []
    models: list[tuple[str, str]] = []
    for f in fields(cfg) if is_dataclass(cfg) else ():
        value = getattr(cfg, f.name)
        if not f.metadata.get("internal"):
            settings.append((f.name, value))
        elif f.name != "output_dir" and isinstance(value, str) and value:
            if Path(value).is_file():
                files.append((f.name, value))
            elif (Path(value) / "config.json").is_file():
                models.append((f.name, value))
    return settings, files, models


def _pipeline_data(pipeline: Mapping[str, Any]) -> list[str]:
    out = []
    if pipeline.get("train_prompts"):
        out.append(f"- training prompts: `{Path(pipeline['train_prompts']).name}`")
    if pipeline.get("eval_prompts"):
        out.append(f"- evaluation prompts: `{Path(pipeline['eval_prompts']).name}` (held out)")
    for k in ("max_prompts", "max_eval_prompts"):
        if pipeline.get(k) is not None:
            out.append(f"- {k}: {pipeline[k]}")
    if pipeline.get("gold"):
        out.append(f"- gold reward: `{pipeline['gold']}`")
    return out


def _weak_pair(results: Mapping[str, Any] | None, run: Path) -> list[str]:
    """The pipeline's weak pair, whose samples (CD or plain pi_post) made the data (results["weak_aligned"]: the
    pi_post it used)."""
    r = results or {}
    pre, post = (r.get("config") or {}).get("weak_base"), r.get("weak_aligned")
    if not pre or not post:
        return []
    return [f"- the run's weak pair: pi_pre `{_where(pre, run)}`, pi_post `{_where(post, run)}`"]


def _results(method: str | None, row: Mapping[str, Any] | None) -> list[str]:
    if not method or not row:
        return ["Not evaluated by the pipeline (no results row names this folder)."]
    (r,) = method_rows("cong", {"methods": {method: row}})
    ci = f"[{_fmt(r.gold_lo)}, {_fmt(r.gold_hi)}]" if r.gold_lo is not None else "-"
    win = f"{_fmt(r.win_rate)} vs {r.win_vs}" if r.win_rate is not None else "-"
    return [
        "Held-out prompts, scored by the gold reward (95% bootstrap CI; win rate against WeakSFT's responses; "
        "implicit reward: log pi_post - log pi_pre summed over the response, mean).",
        "",
        "| gold mean | 95% CI | win rate | implicit reward | valid rate | n |",
        "|---|---|---|---|---|---|",
        f"| {_fmt(r.gold_mean)} | {ci} | {win} | {_fmt(r.implicit_mean)} | {_fmt(r.valid_rate)} | {_fmt(r.n)} |",
    ]


def _same(a: Any, b: Path) -> bool:
    return bool(a) and Path(str(a)).resolve() == b.resolve()


def _where(path: str, run: Path) -> str:
    """A path inside the run folder as <stage>/...; anything else by its name alone (server paths say nothing to
    whoever reads the card)."""
    p = Path(path).resolve()
    root = run.resolve()
    return str(p.relative_to(root)) if p.is_relative_to(root) else p.name


def _count_rows(path: str) -> int:
    with open(path, "rb") as fh:  # JSONL: one row a non-blank line; read line by line, never whole
        return sum(1 for line in fh if line.strip())


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | tuple):
        return ", ".join(map(_fmt, value))
    return str(value).replace("|", "\\|")
