"""How much GPU memory one device needs to train a model: a per-device estimate from the model's config.json.

The terms, in bytes per device (what the training stages hold: ml.stages._train, ml.stages._scale):
- weights, gradients, optimizer states. The stages load fp32 weights and the HF Trainer trains them under bf16
  autocast: the fp32 weights ARE the master copy (no second one), gradients are fp32 and torch AdamW keeps two fp32
  states: 4 + 4 + 8 = 16 bytes per trained parameter (ddp, fsdp). DeepSpeed (zero3*) casts the model to bf16 and
  keeps the fp32 master inside its optimizer: 2 + 2 + (4 + 8). LoRA freezes the base (no gradients, no optimizer
  states); QLoRA (ml.modeling.load_causal_lm) stores the decoder's linears in NF4 with double quantisation (0.5
  byte per weight, an 8-bit absmax per 64 weights, an fp32 constant per 256 blocks), the rest in fp32 (peft's
  prepare_model_for_kbit_training).
- activations, after Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models",
  section 4.1: 34*s*b*h + 5*a*s^2*b bytes per layer for GPT, 16-bit), recounted for these shapes: per layer, what
  the backward needs (ModelShape.layer_activations). No s^2 term: SDPA keeps no attention matrix; no dropout
  masks (dropout 0). Gradient checkpointing (per decoder layer) keeps each layer's input and recomputes one layer
  at a time: L * s*b*h + one layer. tests/ml/test_memory.py measures the tensors autograd keeps: within 10%.
- logits: b*s*vocab for the lm_head's output, its fp32 upcast (the losses call ``.float()``) and the fp32
  log-softmax kept for the backward; for small models often the biggest term. casts: the bf16 weight copies
  autocast keeps for the backward.
- DPO-family stages (dpo, weak_align) run chosen and rejected in one forward (TRL): twice the batch. Reference
  log-probs are precomputed (``precompute_ref_log_probs``, default), so no reference model is held; with it off
  TRL keeps a frozen copy (none with LoRA: the adapter is disabled instead). WSPO and AuxConf train one model.
- sharding: ddp holds everything on every device; fsdp and zero3 divide weights, gradients and optimizer states
  by the world size and gather, for compute, two decoder layers (current and prefetched) and the embeddings;
  zero3_offload keeps weights, gradients and optimizer states in CPU memory, reported separately.
Not counted: the CUDA context and allocator fragmentation (keep 10-20% headroom), temporaries inside one op.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

GIB = 2**30
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4-bit weights, 8-bit absmax per 64, fp32 per 256 blocks
# Settings read from a stage config, named and defaulted as TrainConfig declares them.
STAGE_SETTINGS = tuple(
    "per_device_train_batch_size max_length lora_r lora_target_modules gradient_checkpointing load_in_4bit bf16".split()
)
GPUS, DISTRIBUTED = "gpus", "distributed"  # the execution settings (ml.execution) a job's stages train under
SHARDED = ("fsdp", "zero3", "zero3_offload")
DEEPSPEED = ("zero3", "zero3_offload")

# Bytes per trained parameter: (weights, gradients, optimizer states), by (deepspeed, bf16). See the module doc.
_PER_PARAM = {
    (False, True): (4, 4, 8),  # Trainer: fp32 weights under bf16 autocast, fp32 grads, AdamW m and v
    (False, False): (4, 4, 8),
    (True, True): (2, 2, 12),  # DeepSpeed bf16: bf16 weights and grads, fp32 master + m + v in the optimizer
    (True, False): (4, 4, 12),  # DeepSpeed fp32: its optimizer still keeps its own fp32 partition
}


# --- the model's shape ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelShape:
    """What the memory depends on, read from a config.json (llama, mistral, qwen2/3, gemma*, gpt2, gpt_neox)."""

    model_type: str
    hidden_size: int
    num_hidden_layers: int
    intermediate_size: int
    vocab_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    tie_word_embeddings: bool
    attention_bias: bool = False  # q, k, v (and o for llama-style; gpt2/neox: every linear has one)
    mlp_bias: bool = False
    positions: int = 0  # learned position embeddings (gpt2)
    act: str = ""  # the MLP's activation (what its backward keeps depends on it)

    @property
    def style(self) -> str:
        if self.model_type in ("gpt2", "gpt_neox"):
            return self.model_type
        return "gemma" if self.model_type.startswith("gemma") else "llama"

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ModelShape:
        if "hidden_size" not in config and "n_embd" not in config and isinstance(config.get("text_config"), dict):
            config = config["text_config"]  # multimodal wrappers (Gemma 3) keep the language model's shape there
        mt = str(config.get("model_type") or "llama")

        def get(*names: str, default: Any = None) -> Any:
            for n in names:
                if config.get(n) is not None:
                    return config[n]
            if default is None:
                raise ValueError(f"config.json has none of {', '.join(names)}: cannot estimate the memory")
            return default

        h = int(get("hidden_size", "n_embd"))
        heads = int(get("num_attention_heads", "n_head"))
        gpt = mt in ("gpt2", "gpt_neox")
        return cls(
            model_type=mt,
            hidden_size=h,
            num_hidden_layers=int(get("num_hidden_layers", "n_layer")),
            intermediate_size=int(get("intermediate_size", "n_inner", default=4 * h)),
            vocab_size=int(get("vocab_size")),
            num_attention_heads=heads,
            num_key_value_heads=int(get("num_key_value_heads", default=heads)),
            head_dim=int(get("head_dim", default=h // heads)),
            # PretrainedConfig's default is tied; llama-style classes untie unless told (their own defaults).
            tie_word_embeddings=bool(get("tie_word_embeddings", default=mt in ("gpt2",) or mt.startswith("gemma"))),
            attention_bias=gpt or mt == "qwen2" or bool(config.get("attention_bias") or False),
            mlp_bias=gpt or bool(config.get("mlp_bias") or False),
            positions=int(get("n_positions", default=1024)) if mt == "gpt2" else 0,
            act=str(config.get("activation_function") or config.get("hidden_act") or ""),
        )

    @classmethod
    def from_folder(cls, path: str | Path) -> ModelShape:
        """From an HF folder's config.json, completed with its class's defaults when transformers knows it."""
        folder = Path(path)
        if not (folder / "config.json").is_file():
            raise ValueError(f"{folder} has no config.json: cannot estimate its memory")
        try:
            from transformers import AutoConfig

            config: dict[str, Any] = AutoConfig.from_pretrained(str(folder), trust_remote_code=False).to_dict()
        except (ValueError, KeyError, OSError):  # a model type this transformers does not know: the raw file
            config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        return cls.from_config(config)

    def linears(self) -> list[tuple[str, int, int]]:
        """One decoder layer's linear layers: (name inside the layer, in features, out features)."""
        h, q, kv, i = self.hidden_size, self.num_attention_heads * self.head_dim, self.kv_dim, self.intermediate_size
        if self.style == "gpt2":
            return [("attn.c_attn", h, 3 * h), ("attn.c_proj", h, h), ("mlp.c_fc", h, i), ("mlp.c_proj", i, h)]
        if self.style == "gpt_neox":
            return [
                ("attention.query_key_value", h, 3 * h),
                ("attention.dense", h, h),
                ("mlp.dense_h_to_4h", h, i),
                ("mlp.dense_4h_to_h", i, h),
            ]
        return [
            ("self_attn.q_proj", h, q),
            ("self_attn.k_proj", h, kv),
            ("self_attn.v_proj", h, kv),
            ("self_attn.o_proj", q, h),
            ("mlp.gate_proj", h, i),
            ("mlp.up_proj", h, i),
            ("mlp.down_proj", i, h),
        ]

    @property
    def kv_dim(self) -> int:
        return self.num_key_value_heads * self.head_dim

    def layer_parameters(self) -> tuple[int, int]:
        """(one decoder layer's linear weights, everything else in it: biases and norms)."""
        h, hd = self.hidden_size, self.head_dim
        weights = sum(a * b for _, a, b in self.linears())
        if self.style in ("gpt2", "gpt_neox"):  # every linear has a bias; two LayerNorms with bias
            return weights, sum(b for _, _, b in self.linears()) + 4 * h
        bias = 0
        if self.attention_bias:
            bias += sum(b for n, _, b in self.linears()[:3])  # q, k, v
            if self.model_type not in ("qwen2",):  # qwen2 has q/k/v biases only; llama's attention_bias adds o's
                bias += h
        if self.mlp_bias:
            bias += sum(b for n, _, b in self.linears()[4:])
        norms = 2 * h
        if self.model_type in ("gemma2", "gemma3_text", "gemma3"):
            norms = 4 * h  # pre/post attention and pre/post feed-forward
        if self.model_type in ("qwen3", "gemma3_text", "gemma3"):
            norms += 2 * hd  # q_norm and k_norm over the head dimension
        return weights, bias + norms

    def embedding_parameters(self) -> int:
        """Token embeddings, the lm_head when untied, positions (gpt2), the final norm."""
        v, h = self.vocab_size, self.hidden_size
        final_norm = 2 * h if self.style in ("gpt2", "gpt_neox") else h
        return v * h * (1 if self.tie_word_embeddings else 2) + self.positions * h + final_norm

    def parameters(self) -> int:
        """Exactly sum(p.numel() for p in model.parameters()) of the HF model (tied weights counted once)."""
        return self.num_hidden_layers * sum(self.layer_parameters()) + self.embedding_parameters()

    def layer_activations(self, a_b: int, r_b: int) -> int:
        """Bytes one decoder layer keeps per token for its backward; a_b: the compute dtype's size, r_b: the residual
        stream's (fp32 under autocast: the embeddings are fp32). In the compute dtype: the attention's input (h),
        q, k, v (q + 2 kv with grouped-query attention), its output (q), the MLP's input (h) and intermediates
        (gated: gate, up, act(gate), product = 4 I; plain: fc1 output and activation = 2 I; gpt2's gelu_new, written
        out in Python, 3 I more). HF's RMSNorms compute in fp32 and keep their input and the normalised copy;
        LayerNorm keeps its input."""
        h, q, kv, i = self.hidden_size, self.num_attention_heads * self.head_dim, self.kv_dim, self.intermediate_size
        gemma4 = self.model_type in ("gemma2", "gemma3_text", "gemma3")  # pre and post norms around both blocks
        rms = self.style in ("llama", "gemma")
        # gpt_neox's parallel residual (its default, Pythia's) normalises one input twice: kept once.
        norms = (4 if gemma4 else 1 if self.style == "gpt_neox" else 2) * (r_b + 4 if rms else r_b) * h
        if self.model_type in ("qwen3", "gemma3_text", "gemma3"):
            norms += 2 * 4 * (q + kv)  # q_norm and k_norm: the fp32 input and the normalised copy
        mlp = 4 * i if rms else (5 if self.act == "gelu_new" else 2) * i  # gated: gate, up, act, product
        return a_b * (h + q + 2 * kv + q) + norms + a_b * (h + mlp)

    def lora_targets(self, targets: str) -> list[tuple[str, int, int]]:
        """The linears LoRA wraps: 'all-linear' (PEFT: every linear but the lm_head) or comma-separated names,
        matched as PEFT does (the module's name, or its last parts)."""
        if targets.strip() == "all-linear":
            return self.linears()
        names = [t.strip() for t in targets.split(",") if t.strip()]
        return [lin for lin in self.linears() if any(lin[0] == t or lin[0].endswith("." + t) for t in names)]

    def lora_parameters(self, lora_r: int, targets: str) -> int:
        """Trainable parameters of LoRA rank r: A (r x in) and B (out x r) per wrapped linear per layer."""
        if lora_r <= 0:
            return 0
        return self.num_hidden_layers * sum(lora_r * (a + b) for _, a, b in self.lora_targets(targets))


# Approximate llama shapes for planning, from the public configs (vocab, heads and tying matter):
# name: (hidden, layers, intermediate, heads, kv heads, vocab, tied)
_PRESET_SHAPES = {
    "1b": (2048, 16, 8192, 32, 8, 128256, True),  # Llama 3.2 1B
    "3b": (3072, 28, 8192, 24, 8, 128256, True),  # Llama 3.2 3B
    "7b": (4096, 32, 11008, 32, 32, 32000, False),  # Llama 2 7B
    "8b": (4096, 32, 14336, 32, 8, 128256, False),  # Llama 3.1 8B
}
_PRESET_KEYS = (
    "hidden_size num_hidden_layers intermediate_size num_attention_heads num_key_value_heads vocab_size "
    "tie_word_embeddings"
).split()
PRESETS: dict[str, dict[str, Any]] = {k: dict(zip(_PRESET_KEYS, v)) for k, v in _PRESET_SHAPES.items()}


def shape_of(model: str) -> ModelShape:
    """A preset's name (1b, 3b, 7b, 8b) or an HF folder."""
    if model.lower() in PRESETS:
        return ModelShape.from_config({"model_type": "llama", **PRESETS[model.lower()]})
    return ModelShape.from_folder(model)


# --- the estimate ---------------------------------------------------------------------------------------------
def setting_defaults() -> dict[str, Any]:
    """The training settings' defaults, from TrainConfig (declared there once)."""
    from ml.stages._train import TrainConfig

    declared = {f.name: f.default for f in fields(TrainConfig)}
    return {n: declared[n] for n in STAGE_SETTINGS}


def execution_defaults() -> dict[str, Any]:
    from ml.execution import SETTINGS

    return {n: SETTINGS[n].default for n in (GPUS, DISTRIBUTED)}


@dataclass(frozen=True)
class Estimate:
    """Bytes per device. ``cpu``: host memory per device (zero3_offload), not part of ``total``."""

    weights: int
    gradients: int
    optimizer: int
    activations: int
    logits: int
    casts: int  # bf16 copies of fp32 weights that autocast keeps for the backward
    reference: int  # a frozen reference model held on the device (DPO without precomputed log-probs)
    gathered: int  # fsdp/zero3: full layers gathered for compute
    cpu: int
    parameters: int
    trainable: int
    settings: dict[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    TERMS = ("weights", "gradients", "optimizer", "activations", "logits", "casts", "reference", "gathered")

    @property
    def total(self) -> int:
        return sum(getattr(self, t) for t in self.TERMS)

    def text(self) -> str:
        parts = ", ".join(f"{t} {getattr(self, t) / GIB:.1f}" for t in self.TERMS if getattr(self, t))
        cpu = f", plus {self.cpu / GIB:.1f} GiB of CPU memory per GPU" if self.cpu else ""
        return f"about {self.total / GIB:.1f} GiB per GPU ({parts}){cpu}"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total": self.total, "text": self.text()}


def estimate(
    shape: ModelShape,
    *,
    per_device_train_batch_size: int | None = None,
    max_length: int | None = None,
    lora_r: int | None = None,
    lora_target_modules: str | None = None,
    gradient_checkpointing: bool | None = None,
    load_in_4bit: bool | None = None,
    bf16: bool | None = None,
    gpus: int | None = None,
    distributed: str | None = None,
    preference: bool = False,
    reference_model: bool = False,
) -> Estimate:
    """Per-device bytes to train ``shape``; None = the setting's default. ``preference``: a DPO-family stage
    (chosen and rejected in one batch); ``reference_model``: it keeps a reference model (no precomputed log-probs)."""
    given = {k: v for k, v in locals().items() if k in STAGE_SETTINGS and v is not None}  # the arguments given
    s = {**setting_defaults(), **given}
    x = {**execution_defaults(), **{k: v for k, v in ((GPUS, gpus), (DISTRIBUTED, distributed)) if v is not None}}
    n, mode = int(x[GPUS]), str(x[DISTRIBUTED])
    from ml.distributed import DISTRIBUTED_MODES

    if mode not in DISTRIBUTED_MODES:
        raise ValueError(f"unknown distributed mode {mode!r}; use one of {', '.join(DISTRIBUTED_MODES)}")
    if n < 1:
        raise ValueError(f"gpus must be >= 1 (got {n})")
    deepspeed, half = mode in DEEPSPEED, bool(s["bf16"])
    w_b, g_b, o_b = _PER_PARAM[(deepspeed, half)]
    lora, q4 = int(s["lora_r"]) > 0, bool(s["load_in_4bit"])
    if q4 and not lora:
        raise ValueError("load_in_4bit (QLoRA) trains LoRA adapters: set lora_r > 0")
    total = shape.parameters()
    trainable = shape.lora_parameters(int(s["lora_r"]), str(s["lora_target_modules"])) if lora else total
    layer_w, layer_rest = shape.layer_parameters()

    # Weights: the (frozen or trained) model, plus LoRA's adapters, which train like full weights.
    def base_bytes(bytes_per_param: float) -> float:
        if not q4:
            return total * bytes_per_param
        quantized = shape.num_hidden_layers * layer_w  # the decoder's linear weights; the rest stays as loaded
        return quantized * NF4_BYTES + (total - quantized) * bytes_per_param

    weights = base_bytes(w_b) + (trainable * w_b if lora else 0)
    grads, optim = float(trainable * g_b), float(trainable * o_b)
    reference = base_bytes(w_b) if preference and reference_model and not lora else 0.0
    cpu = 0.0
    notes: list[str] = []
    if mode in SHARDED:
        weights, grads, optim, reference = weights / n, grads / n, optim / n, reference / n
        if mode == "zero3_offload":  # DeepSpeed keeps fp32 gradient partitions next to its CPU Adam
            cpu = weights + reference + trainable * 4 / n + optim
            weights = grads = optim = reference = 0.0
        notes.append(  # ml.stages._scale.load_base: fsdp and ZeRO-3 load on the CPU, then shard
            f"each of the {n} processes first loads the whole model in CPU memory (fp32, {total * 4 / GIB:.1f} GiB "
            f"each, {n * total * 4 / GIB:.1f} GiB on one host) before the Trainer shards it"
        )
        if preference and mode == "fsdp" and not lora:
            notes.append("TRL loads a reference model for the precompute under FSDP (the policy is not sharded yet)")
    # Gathered for compute: two decoder layers (current + prefetched) and the embeddings (FSDP's root unit keeps
    # embed + lm_head gathered; ZeRO-3 gathers the larger of them), in the compute dtype.
    gathered = 0
    if mode in SHARDED and n > 1:
        c_b = 2 if half else 4
        emb = shape.vocab_size * shape.hidden_size
        heads = emb * (1 if shape.tie_word_embeddings or mode != "fsdp" else 2)
        gathered = int(2 * (layer_w * (NF4_BYTES if q4 else c_b) + layer_rest * c_b) + heads * c_b)

    # Activations (module doc): b sequences of s tokens (twice the batch for chosen + rejected).
    b = int(s["per_device_train_batch_size"]) * (2 if preference else 1)
    tokens = b * int(s["max_length"])
    a_b = 2 if half else 4  # the compute dtype under autocast
    r_b = 2 if (deepspeed and half) else 4  # the residual stream: the embeddings' dtype
    per_layer = tokens * shape.layer_activations(a_b, r_b)
    h = shape.hidden_size
    layers = shape.num_hidden_layers
    if s["gradient_checkpointing"]:
        activations = layers * tokens * h * r_b + per_layer
    else:
        activations = layers * per_layer
    activations += tokens * h * r_b  # the final norm's input
    logits = tokens * shape.vocab_size * (a_b + (4 if a_b < 4 else 0) + 4)
    # bf16 autocast over fp32 weights (the Trainer, unsharded) keeps for the backward the bf16 copy of each weight it
    # multiplied by: every decoder linear (one layer's under checkpointing) and the lm_head. Sharded modes compute on
    # weights already in bf16 (FSDP's mixed-precision policy, DeepSpeed's bf16 model); 4-bit linears dequantise
    # inside their own op, which keeps only the 4-bit weights.
    casts = 0
    if half and mode not in SHARDED:
        kept = 1 if s["gradient_checkpointing"] else layers
        casts = 2 * ((0 if q4 else kept * layer_w) + shape.vocab_size * h)
    return Estimate(
        weights=math.ceil(weights),
        gradients=math.ceil(grads),
        optimizer=math.ceil(optim),
        activations=int(activations),
        logits=int(logits),
        casts=casts,
        reference=math.ceil(reference),
        gathered=int(gathered),
        cpu=math.ceil(cpu),
        parameters=total,
        trainable=trainable,
        settings={**s, GPUS: n, DISTRIBUTED: mode, "preference": preference, "reference_model": reference_model},
        notes=tuple(notes),
    )


# --- a job's training stages ----------------------------------------------------------------------------------
def stage_settings(cfg: Any) -> dict[str, Any]:
    """estimate()'s keyword arguments from a training stage's config (ml.stages' *Config)."""
    from ml.stages.dpo import DPOStageConfig

    out = {n: getattr(cfg, n) for n in STAGE_SETTINGS if getattr(cfg, n, None) is not None}
    out["preference"] = isinstance(cfg, DPOStageConfig)  # dpo and weak_align (a DPOStageConfig)
    out["reference_model"] = out["preference"] and not getattr(cfg, "precompute_ref_log_probs", True)
    return out


def training_configs(built: dict[str, Any]) -> dict[str, Any]:
    """The training stages' configs of what ml.resolve.build made, by stage name (in run order)."""
    from ml.stages._train import TrainConfig

    if "pipeline" in built:
        from ml.pipeline import check

        planned = check(built["pipeline"])
    else:
        planned = dict(built)
    return {name: cfg for name, cfg in planned.items() if isinstance(cfg, TrainConfig)}


def estimate_spec(spec: dict[str, Any], inputs: Any) -> dict[str, Any]:
    """Every training stage of a resolved spec (ml.resolve) with the job's files (ml.resolve.JobInputs), for
    the strong model's shape, or the shape of the folder a stage trains when it exists (weak_align's pi_pre):
    {"stages": {name: Estimate.as_dict() or {"error"}}, "max": the biggest, "text"}."""
    from ml.resolve import build

    execution = spec.get("execution") or {}
    x = {k: execution[k] for k in (GPUS, DISTRIBUTED) if k in execution}
    stages: dict[str, dict[str, Any]] = {}
    for name, cfg in training_configs(build(spec, inputs)).items():
        folder = cfg.model if (Path(cfg.model) / "config.json").is_file() else inputs.strong  # trained from strong
        try:
            stages[name] = estimate(ModelShape.from_folder(folder), **x, **stage_settings(cfg)).as_dict()
        except ValueError as exc:
            stages[name] = {"error": str(exc)}
    ok = {k: v for k, v in stages.items() if "total" in v}
    if not stages:
        return {"stages": {}, "max": None, "text": f"kind={spec['kind']} trains no model: no GPU memory estimate"}
    if not ok:
        return {"stages": stages, "max": None, "text": next(iter(stages.values()))["error"]}
    worst = max(ok, key=lambda k: ok[k]["total"])
    return {"stages": stages, "max": {"stage": worst, **ok[worst]}, "text": f"{worst}: {ok[worst]['text']}"}


# --- python -m ml memory --------------------------------------------------------------------------------------
def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from ml.distributed import DISTRIBUTED_MODES
    from ml.stages._train import TrainConfig

    helps = {f.name: str(f.metadata.get("help", "")) for f in fields(TrainConfig)}
    d, x = setting_defaults(), execution_defaults()
    p = sub.add_parser(
        "memory",
        help="estimate the GPU memory per device of a training stage",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model", required=True, help=f"HF folder with a config.json, or a llama shape: {', '.join(PRESETS)}"
    )
    p.add_argument("--stage", choices=("sft", "dpo", "wspo", "auxconf", "weak_align"), default="sft",
                   help="dpo and weak_align train chosen + rejected: twice the batch")  # fmt: skip
    p.add_argument("--per-device-train-batch-size", type=int, default=d["per_device_train_batch_size"],
                   help=helps["per_device_train_batch_size"])  # fmt: skip
    p.add_argument("--max-length", type=int, default=d["max_length"], help=helps["max_length"])
    p.add_argument("--lora-r", type=int, default=d["lora_r"], help=helps["lora_r"])
    p.add_argument("--lora-target-modules", default=d["lora_target_modules"], help=helps["lora_target_modules"])
    p.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction,
                   default=d["gradient_checkpointing"], help=helps["gradient_checkpointing"])  # fmt: skip
    p.add_argument("--load-in-4bit", action=argparse.BooleanOptionalAction, default=d["load_in_4bit"],
                   help=helps.get("load_in_4bit", "QLoRA: 4-bit base weights (needs lora_r > 0)."))  # fmt: skip
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=d["bf16"],
                   help=helps.get("bf16", "bf16 autocast (what the Trainer does on CUDA)."))  # fmt: skip
    p.add_argument("--no-precompute-ref-log-probs", action="store_true",
                   help="dpo: keep a reference model instead of precomputed log-probs")  # fmt: skip
    p.add_argument("--gpus", type=int, default=x[GPUS], help="devices (world size)")
    p.add_argument("--distributed", choices=list(DISTRIBUTED_MODES), default=x[DISTRIBUTED],
                   help="; ".join(f"{k}: {v}" for k, v in DISTRIBUTED_MODES.items()))  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the breakdown as JSON")
    p.set_defaults(func=_cmd_memory)


def _cmd_memory(args: argparse.Namespace) -> int:
    pref = args.stage in ("dpo", "weak_align")
    est = estimate(
        shape_of(args.model),
        **{n: getattr(args, n) for n in STAGE_SETTINGS},
        gpus=args.gpus,
        distributed=args.distributed,
        preference=pref,
        reference_model=pref and args.no_precompute_ref_log_probs,
    )
    if args.json:
        print(json.dumps(est.as_dict(), indent=2))
        return 0
    print(est.text())
    print(f"parameters {est.parameters:,}, trainable {est.trainable:,}")
    for t in (*Estimate.TERMS, "cpu"):
        print(f"  {t:<12}{getattr(est, t) / GIB:8.2f} GiB")
    print(f"  {'total':<12}{est.total / GIB:8.2f} GiB per GPU")
    for note in est.notes:
        print(f"note: {note}")
    return 0
