"""Build a toy world's models and prompt sets, cached under DATA_DIR/toyworld/<world>/seed<S>/.

What gets built (each step is skipped when its output already exists, so a rerun is cheap and a
crash resumes at the step it was in):
  prompts/{weak,train,heldout}.jsonl  disjoint prompt sets ({"index", "prompt"} rows)
  weak_base/     pi_pre: the small model pretrained on the world's corpus
  strong_base/   the strong model: bigger, pretrained on the same corpus
  weak_align/    the project's own weak_align stage (DPO of pi_pre on gold-labelled pairs of its own
                 samples); its model/ folder is pi_post
  manifest.json  written last: the paths above, the gold reward's name and the recipe used
The manifest format is documented in docs/TOYWORLD.md; the web app reads it to register models.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ml.io import jsonable, read_json, write_json, write_jsonl
from ml.reporter import Reporter, or_null
from ml.toyworld.manifest import MANIFEST_VERSION, ToyManifest

from .worlds import get_world
from .worlds.base import Recipe, World

SIZES = ("default", "tiny")


def default_data_dir() -> Path:
    return Path(os.environ.get("CONGWEB_DATA_DIR") or "./var/data")


def world_dir(world: str, seed: int, data_dir: str | Path | None = None, size: str = "default") -> Path:
    suffix = "" if size == "default" else f"-{size}"
    return Path(data_dir or default_data_dir()) / "toyworld" / world / f"seed{seed}{suffix}"


def _pretrained(world: World, recipe: Recipe, which: str, seed: int, out: Path, reporter: Reporter) -> dict[str, Any]:
    """Pretrain (or reuse) weak_base / strong_base."""
    from ml.modeling import save_hf_folder
    from ml.tiny import tiny_gpt2

    from .pretrain import encode_corpus, pretrain

    if (out / "config.json").exists():
        cached: dict[str, Any] = (
            read_json(out / "pretrain.json") if (out / "pretrain.json").exists() else {"cached": True}
        )
        return cached
    mr = recipe.weak if which == "weak" else recipe.strong
    tok = world.tokenizer()
    # Both models see the same corpus (the world's generic text); only their size differs.
    lines = encode_corpus(tok, world.corpus(seed, recipe.corpus_lines))
    model = tiny_gpt2(
        len(tok),
        n_layer=mr.n_layer,
        n_embd=mr.n_embd,
        n_head=mr.n_head,
        n_positions=recipe.n_positions,
        seed=seed * 1000 + (1 if which == "weak" else 2),
    )
    reporter.log(
        f"toyworld: pretraining {which} model ({sum(p.numel() for p in model.parameters()):,} "
        f"parameters, {mr.steps} steps)"
    )
    summary = pretrain(model, lines, mr, seed=seed, reporter=reporter, stage=f"toyworld/pretrain_{which}")
    if summary.get("stopped"):
        return summary
    save_hf_folder(model, tok, out)
    summary["n_params"] = sum(p.numel() for p in model.parameters())
    write_json(out / "pretrain.json", summary)
    return summary


def _weak_align(
    world: World, recipe: Recipe, seed: int, root: Path, weak_base: Path, reporter: Reporter, device: str | None
) -> dict[str, Any]:
    from ml.stages.weak_align import WeakAlignConfig, weak_align

    wa = recipe.weak_align
    cfg = WeakAlignConfig(
        model=str(weak_base),
        output_dir=str(root / "weak_align"),
        prompts=str(root / "prompts" / "weak.jsonl"),
        gold=world.label_gold_name,  # the proxy labels; the world's gold only evaluates
        k=wa.samples_per_prompt,
        temperature=wa.temperature,
        top_p=wa.top_p,
        max_new_tokens=recipe.max_new_tokens,
        sample_batch_size=64,
        beta=wa.beta,
        learning_rate=wa.lr,
        max_steps=wa.steps,
        per_device_train_batch_size=wa.batch_size,
        use_chat_template=False,
        max_length=recipe.n_positions,
        save_steps=max(wa.steps, 1),
        logging_steps=max(1, wa.steps // 6),
        seed=seed,
        device=device,
    )
    return weak_align(cfg, reporter)


def build(
    world: str,
    seed: int = 0,
    data_dir: str | Path | None = None,
    reporter: Reporter | None = None,
    size: str = "default",
    device: str | None = None,
) -> dict[str, Any]:
    """Build (or reuse) one world at one seed; returns the manifest (also at <dir>/manifest.json).

    ``size="tiny"`` builds minute models in seconds, for tests; nothing measured on them means anything.
    A stop requested through the reporter returns {"stopped": True, ...} and leaves no manifest.
    """
    if size not in SIZES:
        raise ValueError(f"size must be one of {', '.join(SIZES)} (got {size!r})")
    reporter = or_null(reporter)
    w = get_world(world)
    recipe = w.recipe(size)
    root = world_dir(world, seed, data_dir, size).resolve()
    manifest_path = root / "manifest.json"
    if manifest_path.exists():
        manifest: dict[str, Any] = read_json(manifest_path)
        if manifest.get("version") == MANIFEST_VERSION and manifest.get("recipe") == _build_recipe(recipe):
            return manifest
        reporter.log(f"toyworld: {manifest_path} was made by another recipe or version; rebuilding")
        manifest_path.unlink()
        # Models from another recipe are stale: remove them so they are rebuilt.
        import shutil

        for sub in ("weak_base", "strong_base", "weak_align", "prompts"):
            if (root / sub).exists():
                shutil.rmtree(root / sub)
    t0 = time.time()
    root.mkdir(parents=True, exist_ok=True)

    splits = w.prompt_splits(
        seed,
        {"weak": recipe.weak_align.n_prompts, "train": recipe.n_train_prompts, "heldout": recipe.n_heldout_prompts},
    )
    prompt_paths: dict[str, str] = {}
    for split, prompts in splits.items():
        path = root / "prompts" / f"{split}.jsonl"
        if not path.exists():
            write_jsonl(path, ({"index": i, "prompt": p} for i, p in enumerate(prompts)))
        prompt_paths[split] = str(path)

    summaries: dict[str, Any] = {}
    for which in ("weak", "strong"):
        s = _pretrained(w, recipe, which, seed, root / f"{which}_base", reporter)
        if s.get("stopped"):
            return {"stopped": True, "world": world, "seed": seed, "root": str(root)}
        summaries[f"pretrain_{which}"] = s
    s = _weak_align(w, recipe, seed, root, root / "weak_base", reporter, device)
    if s.get("stopped"):
        return {"stopped": True, "world": world, "seed": seed, "root": str(root)}
    summaries["weak_align"] = {k: v for k, v in s.items() if not isinstance(v, (list, dict))}

    manifest = ToyManifest.from_dict(
        {
            "version": MANIFEST_VERSION,
            "world": world,
            "description": w.description,
            "seed": seed,
            "size": size,
            "root": str(root),
            "gold": w.gold_name,
            "label_gold": w.label_gold_name,
            "models": {
                "weak_base": str(root / "weak_base"),
                "weak_aligned": str(Path(s.get("model_dir") or root / "weak_align" / "model")),
                "strong_base": str(root / "strong_base"),
            },
            "prompts": {
                "train": prompt_paths["train"],
                "heldout": prompt_paths["heldout"],
                "weak": prompt_paths["weak"],
            },
            "generation": {"max_new_tokens": recipe.max_new_tokens, "use_chat_template": False},
            "recipe": _build_recipe(recipe),
            "summaries": summaries,
            "built_seconds": round(time.time() - t0, 1),
        }
    ).to_dict()
    write_json(manifest_path, manifest)
    reporter.log(f"toyworld: built {world} seed {seed} ({size}) in {manifest['built_seconds']} s -> {root}")
    return manifest


def _build_recipe(recipe: Recipe) -> dict[str, Any]:
    """The part of the recipe that shapes the built models (the strong-stage overrides do not)."""
    d: dict[str, Any] = jsonable(asdict(recipe))
    d.pop("stages", None)
    return d


def find_manifests(data_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """Every finished build under DATA_DIR/toyworld (for the web app's model and dataset lists)."""
    base = Path(data_dir or default_data_dir()) / "toyworld"
    out: list[dict[str, Any]] = []
    for path in sorted(base.glob("*/seed*/manifest.json")):
        try:
            m = read_json(path)
        except (OSError, ValueError):
            continue  # a half-written or foreign file: not a finished build
        if m.get("version") == MANIFEST_VERSION:
            out.append(m)
    return out
