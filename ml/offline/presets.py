"""Pipeline presets on the real offline models (see docs/REAL_MODELS.md).

Cross-family (``pair="cross"``, the paper's cross-family setting):
    pi_pre  = SmolLM2-135M-Instruct
    pi_post = pi_pre after weak_align (DPO on its own samples, best vs worst of k under the if:judge gold)
    strong  = Gemma 3 270M base, prompts formatted "Question: ...\\n\\nAnswer:\\n" (the minimal chat template
              the installer adds to its tokenizer, so the pipeline's one use_chat_template path serves both
              families: SmolLM2 keeps its own ChatML template)
Self-alignment (``pair="self"``): the same weak pair, and SmolLM2-135M-Instruct itself as the strong model.

Sizes:
    smoke  a handful of prompts, 16-24 new tokens, 2 training steps: checks the wiring end to end (minutes)
    cpu    64 training / 32 held-out prompts, 64 new tokens, LoRA on the strong model: the four methods
           (WeakSFT, WSPO, ConG-S, ConG), pi_post and the reference methods (best-of-N, the gold ceiling,
           WeakSFT at one epoch): the time measured on 2 CPU cores is in docs/RESULTS.md
    gpu    every prompt, 256 new tokens, full fine-tuning, the reference hyperparameters and the reference
           code's CD arithmetic (score_mode "reference"), every method; minutes on one H100-class GPU

``real_preset`` returns a ``PipelineConfig``; ``write_preset_yaml`` saves it for ``python -m ml run``.
The prompt files are the judge's train/held-out splits, written on first use under
``<models_dir>/offline/if_prompts``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ml.offline.install import offline_root
from ml.pipeline_config import DEFAULT_METHODS, REFERENCE_METHODS

if TYPE_CHECKING:  # for annotations only: at run time they are imported lazily (python -m ml --help stays fast)
    from ml.pipeline import PipelineConfig
    from ml.stages.weak_align import WeakAlignConfig

SIZES = ("smoke", "cpu", "gpu")
PAIRS = ("cross", "self")
WEAK = "smollm2_135m_instruct"
STRONG = {"cross": "gemma3_270m_base", "self": "smollm2_135m_instruct"}
N_PROMPTS = 500  # the judge's prompt set: about 400 train and 100 held-out (hash split, 20%)


def model_path(key: str, models_dir: str | Path | None = None) -> Path:
    return (offline_root(models_dir) / "offline" / key).resolve()


def ensure_prompts(models_dir: str | Path | None = None, n: int = N_PROMPTS, seed: int = 0) -> dict[str, str]:
    """The judge's train/held-out JSONL files (written once; same content on every machine)."""
    from ml.judge import write_splits

    out = offline_root(models_dir) / "offline" / "if_prompts"
    train, held = (out / "train.jsonl").resolve(), (out / "heldout.jsonl").resolve()
    if not (train.exists() and held.exists()):
        write_splits(out, n=n, seed=seed)
    return {"train": str(train), "heldout": str(held)}


def _size_settings(size: str, pair: str) -> dict[str, Any]:
    # Learning rates: the reference values (docs/METHOD.md) are for full fine-tuning over thousands of pairs.
    # The cpu size trains LoRA adapters on 64 examples, where 1e-5 would barely move the model; the
    # usual LoRA rates (1e-4-ish) are used instead. weak_align is a full fine-tune of SmolLM2 on a few
    # dozen pairs, so its rate is raised from 5e-7 to 5e-6 to make pi_post differ measurably from pi_pre
    # (the implicit reward and CD both live on that difference).
    if size == "smoke":
        return dict(
            methods=["weak_sft", "wspo", "cong_s", "cong"],
            max_prompts=8,
            max_eval_prompts=4,
            max_new_tokens=24,
            train_max_steps=2,
            lora_r=8,
            weak_align=dict(
                k=4,
                temperature=1.0,
                sample_batch_size=8,
                learning_rate=5e-6,
                per_device_train_batch_size=2,
                max_length=256,
            ),
            generate=dict(batch_size=8),
            sft=dict(per_device_train_batch_size=2, max_length=256, learning_rate=1e-4),
            self_sample=dict(batch_size=8),
            dpo=dict(per_device_train_batch_size=2, max_length=256, learning_rate=5e-6),
            wspo=dict(per_device_train_batch_size=2, max_length=256, learning_rate=1e-4),
            evaluate=dict(batch_size=4),
        )
    if size == "cpu":
        lora_targets = "q_proj,k_proj,v_proj,o_proj"
        return dict(
            # The reference methods (best-of-N, the gold ceiling that pgr is measured against, WeakSFT at one epoch)
            # beside the paper's four, so every row has a performance gap recovered.
            methods=["weak_sft", "wspo", "cong_s", "cong", "weak_post", *REFERENCE_METHODS],
            max_prompts=64,
            max_eval_prompts=32,
            max_new_tokens=64,
            lora_r=16,
            weak_align=dict(
                k=4,
                sample_batch_size=16,
                learning_rate=5e-6,
                num_train_epochs=2.0,
                per_device_train_batch_size=4,
                max_length=256,
            ),
            generate=dict(batch_size=16),
            sft=dict(
                per_device_train_batch_size=4,
                max_length=256,
                learning_rate=2e-4,
                num_train_epochs=2.0,
                lora_target_modules=lora_targets,
            ),
            self_sample=dict(batch_size=16),
            dpo=dict(
                per_device_train_batch_size=4, max_length=256, learning_rate=5e-6, lora_target_modules=lora_targets
            ),
            wspo=dict(
                per_device_train_batch_size=4,
                max_length=256,
                learning_rate=1e-4,
                num_train_epochs=2.0,
                lora_target_modules=lora_targets,
            ),
            evaluate=dict(batch_size=16),
        )
    # gpu: full size, reference hyperparameters, every method.
    return dict(
        methods=[*DEFAULT_METHODS, *REFERENCE_METHODS],
        max_prompts=None,
        max_eval_prompts=None,
        max_new_tokens=256,
        lora_r=0,
        weak_align=dict(k=5, sample_batch_size=64, per_device_train_batch_size=8, max_length=768),
        # The reference code's CD numbers (CDConfig.score_mode): this size claims to reproduce the paper's runs.
        generate=dict(batch_size=64, score_mode="reference"),
        sft=dict(per_device_train_batch_size=8, max_length=768),
        self_sample=dict(batch_size=64),
        dpo=dict(per_device_train_batch_size=8, max_length=768),
        wspo=dict(per_device_train_batch_size=8, max_length=768),
        auxconf=dict(per_device_train_batch_size=8, max_length=768),
        evaluate=dict(batch_size=64, n_samples=2),
    )


def real_preset(
    size: str = "cpu",
    models_dir: str | Path | None = None,
    *,
    pair: str = "cross",
    output_dir: str | Path | None = None,
    weak_aligned: str = "",
    alpha: float = 0.4,
    device: str | None = None,
    check_models: bool = True,
    **overrides: Any,
) -> PipelineConfig:
    """A ``PipelineConfig`` for the real models. ``overrides`` replace top-level PipelineConfig fields
    (stage dicts are merged key by key). ``check_models=False`` builds the config even when the models
    are not installed yet (``python -m ml models install-offline`` makes them)."""
    from ml.pipeline import PipelineConfig

    if size not in SIZES:
        raise ValueError(f"size must be one of {', '.join(SIZES)}, got {size!r}")
    if pair not in PAIRS:
        raise ValueError(f"pair must be 'cross' (SmolLM2 -> Gemma 3) or 'self' (SmolLM2 -> SmolLM2), got {pair!r}")
    weak, strong = model_path(WEAK, models_dir), model_path(STRONG[pair], models_dir)
    if check_models:
        missing = [str(p) for p in (weak, strong) if not (p / "config.json").exists()]
        if missing:
            raise ValueError(
                f"offline model folder(s) missing: {', '.join(missing)}; run "
                "`python -m ml models install-offline` first (or pass check_models=False)"
            )
    prompts = ensure_prompts(models_dir)
    settings = _size_settings(size, pair)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(settings.get(key), dict):
            settings[key] = {**settings[key], **value}
        else:
            settings[key] = value
    if output_dir is None:
        output_dir = (offline_root(models_dir) / "runs" / f"real-{pair}-{size}").resolve()
    return PipelineConfig(
        weak_base=str(weak),
        strong=str(strong),
        weak_aligned=weak_aligned,
        train_prompts=prompts["train"],
        eval_prompts=prompts["heldout"],
        gold="if:judge",
        output_dir=str(output_dir),
        alpha=alpha,
        device=device,
        use_chat_template=True,
        **settings,
    )


def write_preset_yaml(config: PipelineConfig, path: str | Path) -> Path:
    """Save a preset as a YAML file that ``python -m ml run`` reads back to the same config."""
    import yaml

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")
    return path


def weak_align_config(config: PipelineConfig) -> WeakAlignConfig:
    """The WeakAlignConfig that ``ml.pipeline.run`` builds for this preset (same folder, same settings),
    so pi_post can be made on its own (e.g. for the CD claim) and a later pipeline run reuses it."""
    from ml.stages.weak_align import WeakAlignConfig

    kw: dict[str, Any] = {"seed": config.seed, "device": config.device, "use_chat_template": config.use_chat_template}
    if config.train_max_steps > 0:
        kw["max_steps"] = config.train_max_steps
    return WeakAlignConfig(
        **kw,
        model=config.weak_base,
        output_dir=str(Path(config.output_dir) / "weak_align"),
        prompts=config.train_prompts,
        gold=config.gold,
        max_prompts=config.max_prompts,
        max_new_tokens=config.max_new_tokens,
        **config.weak_align,
    )
