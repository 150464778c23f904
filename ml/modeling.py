"""Loading models and tokenizers: HF folders and GGUF files, with sensible device and dtype.

Never sets ``trust_remote_code``: a model folder is data, not code we agreed to run.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


def pick_device(requested: str | None = None) -> torch.device:
    """``requested`` wins ("cpu", "cuda", "cuda:1"); otherwise CUDA when present, else CPU. A bare "cuda" in one of
    several processes (ml.distributed: torch's launcher sets LOCAL_RANK) is that process's own GPU, so N processes
    never stack N copies of a model on GPU 0 before the Trainer moves them."""
    dev = torch.device(requested or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda" and dev.index is None and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return dev


def pick_dtype(device: torch.device, requested: str | None = None) -> torch.dtype:
    """bf16 on CUDA (where the hardware supports it), float32 on CPU (bf16 matmuls are slow there)."""
    if requested:
        try:
            return {
                "float32": torch.float32,
                "fp32": torch.float32,
                "bfloat16": torch.bfloat16,
                "bf16": torch.bfloat16,
                "float16": torch.float16,
                "fp16": torch.float16,
            }[requested]
        except KeyError:
            raise ValueError(f"dtype {requested!r} is not one of float32, bfloat16, float16") from None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def setup_cpu_threads() -> None:
    """Threads on small VMs stall for seconds while spinning; passive waiting avoids that.

    OMP_WAIT_POLICY must be set before the OpenMP runtime starts, so this only helps when called
    before torch does any parallel work; the Makefile and CLI also export it.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        torch.set_flush_denormal(True)
    except Exception:  # not every CPU supports it; it is only a speed-up
        pass


@dataclass(frozen=True)
class ModelRef:
    """Where a model lives: an HF folder, or a GGUF file (converted once to a cached HF folder)."""

    path: str
    gguf_file: str | None = None


def _check_folder(path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(f"model folder {path} does not exist; build or install the model first")
    if path.is_dir() and not (path / "config.json").exists():
        raise ValueError(f"{path} is not a Hugging Face model folder (no config.json in it)")


# Where a model's config states its context (the most positions it can attend to): GPT-2 style configs name it
# n_positions, most others max_position_embeddings; multimodal ones (Gemma 3) keep it in their text_config.
CONTEXT_KEYS = ("n_positions", "max_position_embeddings")


def context_of(config: Any) -> int | None:
    """The context length a model config states (a config.json's dict or a loaded config object), or None."""

    def get(name: str) -> Any:
        return config.get(name) if isinstance(config, dict) else getattr(config, name, None)

    for name in CONTEXT_KEYS:
        value = get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    text = get("text_config")
    return context_of(text) if text is not None else None


def context_length(path: str | Path) -> int | None:
    """The context length of the HF folder at ``path``, read from its config.json without loading the model
    (the web app asks at submit). None when there is no readable config.json or it names no context."""
    import json

    try:
        config = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return context_of(config) if isinstance(config, dict) else None


# Models and tokenizers are typed Any here: transformers' own types (PreTrainedModel's wrapped .to(), Auto*
# classes' return types) reject ordinary use, and callers only need attribute access.
def load_tokenizer(path: str | Path) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    if tok.pad_token_id is None:
        # Generation batches need a pad id; eos is the conventional stand-in for decoder-only models.
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(
    path: str | Path,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    eval_mode: bool = True,
    load_in_4bit: bool = False,
) -> Any:
    """The model of an HF folder on ``device`` in ``dtype``. ``load_in_4bit``: QLoRA's base (CUDA + bitsandbytes):
    linear weights stored 4-bit NF4 with double quantisation, matmuls computed in ``dtype``."""
    from transformers import AutoModelForCausalLM

    path = Path(path)
    _check_folder(path)
    dev = device if isinstance(device, torch.device) else pick_device(device)
    dt = dtype if isinstance(dtype, torch.dtype) else pick_dtype(dev, dtype)
    kw: dict[str, Any] = {}
    if load_in_4bit:
        from transformers import BitsAndBytesConfig

        quant = BitsAndBytesConfig(  # type: ignore[no-untyped-call]
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dt
        )
        # bitsandbytes places quantized weights while loading; such a model refuses .to() afterwards.
        kw = dict(quantization_config=quant, device_map={"": dev})
    model: Any = AutoModelForCausalLM.from_pretrained(str(path), dtype=dt, trust_remote_code=False, **kw)
    if not load_in_4bit:
        model.to(dev)
    if eval_mode:
        model.eval()
    return model


def convert_gguf(gguf_path: str | Path, out_dir: str | Path) -> Path:
    """Convert a GGUF file to a float32 HF folder once; later calls return the cached folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if (out_dir / "config.json").exists() and any(out_dir.glob("*.safetensors")):
        return out_dir
    if not gguf_path.exists():
        raise FileNotFoundError(f"GGUF file {gguf_path} does not exist")
    kw = dict(gguf_file=gguf_path.name, trust_remote_code=False)
    model: Any = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), dtype=torch.float32, **kw)
    tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), **kw)
    # A GGUF-loaded model carries its dequantising quantizer; it must go before save_pretrained.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = out_dir.with_name(out_dir.name + ".partial")
    model.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    tmp.rename(out_dir)  # atomic: a crash mid-save never leaves a folder that looks complete
    return out_dir


def vocab_of(tokenizer: Any) -> dict[str, int]:
    return dict(tokenizer.get_vocab())


def check_same_vocab(tok_a: Any, tok_b: Any, *, names: tuple[str, str] = ("weak aligned", "weak base")) -> None:
    """Contrastive decoding compares logits id by id, so both weak models must map tokens to ids alike."""
    va, vb = vocab_of(tok_a), vocab_of(tok_b)
    if va == vb:
        return
    by_id_a = {i: t for t, i in va.items()}
    by_id_b = {i: t for t, i in vb.items()}
    for i in sorted(set(by_id_a) | set(by_id_b)):
        ta, tb = by_id_a.get(i), by_id_b.get(i)
        if ta != tb:
            raise ValueError(
                f"the {names[0]} and {names[1]} models do not share a vocabulary: token id {i} is "
                f"{ta!r} in the {names[0]} tokenizer and {tb!r} in the {names[1]} one. Contrastive "
                "decoding needs a weak pair from the same family (same tokenizer); pick another pair."
            )


def vocab_fingerprint(tokenizer: Any) -> str:
    """A short stable hash of the token -> id map, for quick compatibility checks in the web app."""
    import hashlib
    import json

    items = sorted(vocab_of(tokenizer).items(), key=lambda kv: kv[1])
    return hashlib.sha256(json.dumps(items, ensure_ascii=False).encode()).hexdigest()[:16]


def save_hf_folder(model: Any, tokenizer: Any, out_dir: str | Path) -> Path:
    """Save model and tokenizer as a plain Hugging Face folder, atomically: written beside it as
    <name>.partial, then renamed, so a crash never leaves a folder that looks complete."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir


def merge_adapter(
    base: str | Path, adapter_dir: str | Path, tokenizer: Any, out_dir: str | Path, *, dtype: str | torch.dtype
) -> Path:
    """Save the LoRA adapter folder ``adapter_dir`` merged into a fresh copy of its base model (loaded on the CPU in
    ``dtype``) as a plain HF folder. For adapters trained where the in-memory model cannot be merged: on a 4-bit
    base (merging into quantized weights would round the update away), or sharded across processes."""
    from peft import PeftModel

    model = load_causal_lm(base, device="cpu", dtype=dtype)
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    if merged.generation_config.pad_token_id is None:
        merged.generation_config.pad_token_id = tokenizer.pad_token_id
    return save_hf_folder(merged, tokenizer, out_dir)


def pad_batch(seqs: list[list[int]], pad_id: int, *, side: str = "left") -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) for token lists of different lengths, padded to the longest.

    Left padding (decoding, scoring the tail of a sequence) puts every row's last token in the last column;
    right padding (teacher-forced log-probs) keeps positions as without padding, so no position ids are needed."""
    width = max(len(q) for q in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for j, q in enumerate(seqs):
        cols = slice(width - len(q), width) if side == "left" else slice(0, len(q))
        ids[j, cols] = torch.tensor(q, dtype=torch.long)
        mask[j, cols] = 1
    return ids, mask
