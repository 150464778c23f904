"""How a training stage scales past one plain process: the distributed modes' Trainer settings (ml.distributed
declares the modes), QLoRA's 4-bit base, the final save from sharded or quantized weights, and the work done
once before training when several processes run a stage.

A mode applies whenever it is asked for: fsdp and ZeRO-3 usually run as several processes (``--nproc``), and
ZeRO-3 with CPU offload also helps one GPU hold a model too big for it. DONE.json's ``distributed`` says what the
Trainer actually ran (``mode_used``): None for one process training alone.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ml.distributed import is_main, mode_unavailable, qlora_unavailable
from ml.modeling import pick_device, pick_dtype
from ml.reporter import Reporter

if TYPE_CHECKING:
    from ml.stages._train import TrainConfig


def check_runnable(cfg: TrainConfig) -> None:
    """Refuse, before anything loads, a mode or QLoRA this host cannot run (the web app refuses such jobs at submit
    with the same ml.distributed checks; this is the second line of defence)."""
    cuda = pick_device(cfg.device).type == "cuda"
    why = mode_unavailable(cfg.distributed, cuda)
    if why:
        raise ValueError(why)
    if cfg.load_in_4bit:
        why = qlora_unavailable(cuda and torch.cuda.is_available())
        if why:
            raise ValueError(why)


def mode_kwargs(mode: str, model: Any, *, gradient_checkpointing: bool = False) -> dict[str, Any]:
    """TrainingArguments settings of a distributed mode (ml.distributed.DISTRIBUTED_MODES); ddp needs none (the
    Trainer wraps the model in DDP whenever it runs as several processes)."""
    if mode == "fsdp":
        if model is None:
            raise ValueError("fsdp wraps the model's decoder layers: give training_kwargs the model")
        base = model.get_base_model() if hasattr(model, "get_base_model") else model  # under a LoRA wrapper
        layers = sorted(getattr(base, "_no_split_modules", None) or [])
        if not layers:
            raise ValueError(f"fsdp wraps each decoder layer and {type(base).__name__} names none (_no_split_modules)")
        # FSDP2, full shard (weights regathered per layer for forward and backward), one unit per decoder layer: the
        # "full_shard auto_wrap" of older transformers, whose string form 5.x deprecates. Activation checkpointing
        # goes to FSDP's own (the Trainer refuses both at once; its own one re-gathers weights in backward).
        fsdp_config = {
            "version": 2,
            "reshard_after_forward": True,
            "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "transformer_layer_cls_to_wrap": layers,
            "state_dict_type": "FULL_STATE_DICT",  # save_final gathers whole weights for model/
            "activation_checkpointing": gradient_checkpointing,
        }
        return dict(fsdp=True, fsdp_config=fsdp_config, activation_checkpointing=False)
    if mode in ("zero3", "zero3_offload"):
        return dict(deepspeed=zero3_config(offload=mode == "zero3_offload"))
    return {}


def zero3_config(*, offload: bool) -> dict[str, Any]:
    """DeepSpeed ZeRO stage 3; "auto" values are filled in by TrainingArguments (batch sizes, lr, precision), so
    the stage's settings stay the one source. DeepSpeed builds AdamW (its CPU Adam when offloading); the Trainer
    keeps its own learning-rate schedule."""
    zero: dict[str, Any] = {
        "stage": 3,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "reduce_bucket_size": "auto",
        "stage3_prefetch_bucket_size": "auto",
        "stage3_param_persistence_threshold": "auto",
        "stage3_gather_16bit_weights_on_model_save": True,  # save_final writes whole weights to model/
    }
    if offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    adamw = {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"}
    return {
        "zero_optimization": zero,
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "optimizer": {"type": "AdamW", "params": adamw},
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
    }


def load_base(cfg: TrainConfig, device: str | torch.device | None = None) -> Any:
    """The model to train as it is before training, without LoRA (identity at initialisation): 4-bit and prepared
    for k-bit training under QLoRA, else in fp32 master weights. Default device: this process's GPU, except under
    ZeRO-3: the CPU, and DeepSpeed places each process's shard (weights never whole on one GPU). fsdp shards only
    when training starts, and TRL's DPO runs the unsharded model before that (reference log-probs of a LoRA model),
    so under fsdp the whole fp32 weights must fit one GPU once; a bigger model wants zero3."""
    from ml.modeling import load_causal_lm

    if device is None:
        device = "cpu" if cfg.distributed.startswith("zero3") else pick_device(cfg.device)
    if cfg.load_in_4bit:
        from peft import prepare_model_for_kbit_training

        dev = pick_device(device) if isinstance(device, str) else device
        compute = pick_dtype(dev, cfg.dtype) if cfg.bf16 else torch.float32
        model = load_causal_lm(cfg.model, device=dev, dtype=compute, eval_mode=False, load_in_4bit=True)
        return prepare_model_for_kbit_training(  # type: ignore[no-untyped-call]
            model, use_gradient_checkpointing=cfg.gradient_checkpointing
        )
    # fp32 master weights on CPU; on CUDA the Trainer's bf16 autocast handles speed, and full-precision weights
    # keep small learning rates (6e-7) from vanishing in bf16 rounding.
    return load_causal_lm(cfg.model, device=device, dtype=cfg.dtype or "float32", eval_mode=False)


def prepare_once(ready: Callable[[], bool], make: Callable[[], bool], reporter: Reporter) -> bool:
    """What a stage computes before training (samples, scores, targets), computed once when several processes run
    it (ml.distributed): the first runs ``make`` (resumable, it writes complete files); the others wait until
    ``ready()`` says those files are there, and then only read them, so no two processes write one file. Returns
    False when stopped. The waiting needs no timeout: when the first process fails or stops it exits non-zero, and
    torch's launcher then ends every process of the group."""
    if is_main():
        return make()
    while not ready():
        if reporter.should_stop():
            return False
        time.sleep(0.5)
    return True


def save_final(trainer: Any, cfg: TrainConfig) -> Path:
    """Write output_dir/model as a plain HF folder (LoRA merged), atomically. Every process calls it: under fsdp or
    ZeRO-3 gathering the whole weights from the shards takes all of them. The first process writes."""
    from ml.modeling import merge_adapter, save_hf_folder

    out = Path(cfg.output_dir) / "model"
    tok = trainer.processing_class
    if not (trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled or cfg.load_in_4bit):
        if trainer.is_world_process_zero():
            model = trainer.model
            if hasattr(model, "merge_and_unload"):
                model = model.merge_and_unload()
            save_hf_folder(model, tok, out)
        return out
    # The Trainer's save gathers sharded weights (FULL_STATE_DICT, ZeRO-3's 16-bit gather); with LoRA it writes the
    # adapter alone. An adapter trained on a 4-bit base cannot be merged into it (the update would be rounded into
    # NF4 levels, and the folder would need bitsandbytes), so it is merged into the base reloaded in bf16.
    staged = Path(cfg.output_dir) / "trained.partial"
    trainer.save_model(str(staged))
    if trainer.is_world_process_zero():
        if (staged / "adapter_config.json").exists():
            dtype = cfg.dtype or ("bfloat16" if cfg.load_in_4bit else "float32")
            merge_adapter(cfg.model, staged, tok, out, dtype=dtype)
            shutil.rmtree(staged)
        else:
            (staged / "training_args.bin").unlink(missing_ok=True)
            if out.exists():
                shutil.rmtree(out)
            staged.rename(out)
    return out


def mode_used(trainer: Any, cfg: TrainConfig) -> str | None:
    """How the processes shared the training, read from the Trainer (what ran, not what was asked); None for one
    process training alone."""
    if trainer.is_fsdp_enabled:
        return "fsdp"
    if trainer.is_deepspeed_enabled:
        return cfg.distributed  # zero3 or zero3_offload: the DeepSpeed config came from it
    return "ddp" if int(trainer.args.world_size) > 1 else None
