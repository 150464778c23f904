"""ml.memory: exact parameter counts against real models, the documented ratios, and the bytes a real training
step holds (weights, gradients, AdamW states) against the estimate."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

from ml.memory import NF4_BYTES, PRESETS, Estimate, ModelShape, add_parser, estimate, shape_of  # noqa: E402
from ml.tiny import tiny_gpt2, word_tokenizer  # noqa: E402
from tests.ml._stage_fixtures import WORDS, save_tiny  # noqa: E402

SMALL: dict[str, Any] = dict(
    hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, vocab_size=40
)


def _configs(small: dict[str, Any] = SMALL):
    from transformers import (
        Gemma3TextConfig,
        GPTNeoXConfig,
        LlamaConfig,
        MistralConfig,
        Qwen2Config,
        Qwen3Config,
    )

    return {
        "llama_untied_gqa": LlamaConfig(**small, num_key_value_heads=2, tie_word_embeddings=False),
        "llama_tied_mha": LlamaConfig(**small, num_key_value_heads=4, tie_word_embeddings=True),
        "llama_biases": LlamaConfig(**small, num_key_value_heads=2, attention_bias=True, mlp_bias=True),
        "mistral": MistralConfig(**small, num_key_value_heads=1),
        "qwen2_tied": Qwen2Config(**small, num_key_value_heads=2, tie_word_embeddings=True),
        "qwen3": Qwen3Config(**small, num_key_value_heads=2, head_dim=16),
        "gemma3_text": Gemma3TextConfig(**small, num_key_value_heads=1, head_dim=16),
        "gpt_neox": GPTNeoXConfig(**{**small, "intermediate_size": 4 * small["hidden_size"]}),
    }


def _numel(model) -> int:
    return sum(p.numel() for p in model.parameters())  # tied weights are one parameter: counted once


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Each tiny model saved as an HF folder (the shape is read back from its config.json, as the web app does)."""
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("memory_models")
    out = {}
    for name, cfg in _configs().items():
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(cfg)
        model.save_pretrained(str(root / name))
        out[name] = (str(root / name), model)
    gpt2 = tiny_gpt2(len(word_tokenizer(WORDS)), n_layer=2, n_embd=32, n_head=2, n_positions=64)
    gpt2.save_pretrained(str(root / "gpt2"))
    out["gpt2"] = (str(root / "gpt2"), gpt2)
    return out


@pytest.mark.parametrize(
    "name",
    [
        "llama_untied_gqa",
        "llama_tied_mha",
        "llama_biases",
        "mistral",
        "qwen2_tied",
        "qwen3",
        "gemma3_text",
        "gpt_neox",
        "gpt2",
    ],
)
def test_parameter_count_is_exact(saved, name):
    path, model = saved[name]
    assert ModelShape.from_folder(path).parameters() == _numel(model)


def test_tied_and_untied_differ_by_one_embedding(saved):
    tied, untied = (
        ModelShape.from_folder(saved["llama_tied_mha"][0]),
        ModelShape.from_folder(saved["llama_untied_gqa"][0]),
    )
    assert tied.tie_word_embeddings and not untied.tie_word_embeddings
    assert untied.embedding_parameters() - tied.embedding_parameters() == SMALL["vocab_size"] * SMALL["hidden_size"]


def test_presets_match_the_published_llama_sizes():
    from transformers import LlamaConfig, LlamaForCausalLM

    published = {"1b": 1_235_814_400, "3b": 3_212_749_824, "7b": 6_738_415_616, "8b": 8_030_261_248}
    for name, cfg in PRESETS.items():
        with torch.device("meta"):  # shapes only, no memory
            model = LlamaForCausalLM(LlamaConfig(**cfg))
        assert shape_of(name).parameters() == _numel(model) == published[name]


@pytest.mark.parametrize(
    "name,targets",
    [
        ("llama_untied_gqa", "all-linear"),
        ("llama_untied_gqa", "q_proj, v_proj"),
        ("qwen3", "self_attn.o_proj,down_proj"),
        ("gpt2", "all-linear"),
        ("gpt2", "c_proj"),  # both attention's and the MLP's c_proj
        ("gpt_neox", "query_key_value"),
    ],
)
def test_lora_trainable_count_is_peft_s(saved, name, targets):
    import copy

    from peft import LoraConfig, get_peft_model

    path, model = saved[name]
    names = targets if targets == "all-linear" else [t.strip() for t in targets.split(",")]
    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, target_modules=names, task_type="CAUSAL_LM"))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    shape = ModelShape.from_folder(path)
    assert shape.lora_parameters(4, targets) == trainable
    assert estimate(shape, lora_r=4, lora_target_modules=targets).trainable == trainable


# --- the documented ratios ------------------------------------------------------------------------------------
def test_fsdp_over_4_divides_weights_gradients_and_optimizer_by_4():
    shape = shape_of("8b")
    ddp = estimate(shape, gpus=4, distributed="ddp", per_device_train_batch_size=1, max_length=1024)
    fsdp = estimate(shape, gpus=4, distributed="fsdp", per_device_train_batch_size=1, max_length=1024)
    for term in ("weights", "gradients", "optimizer"):
        assert getattr(fsdp, term) * 4 == getattr(ddp, term)
    assert fsdp.activations == ddp.activations and fsdp.logits == ddp.logits  # per-device batch: unchanged
    assert ddp.gathered == 0 < fsdp.gathered < fsdp.weights
    # The Trainer's fp32 weights are the master copy: 4 + 4 + 8 bytes per parameter, no second copy.
    assert (ddp.weights, ddp.gradients, ddp.optimizer) == (
        4 * shape.parameters(),
        4 * shape.parameters(),
        8 * shape.parameters(),
    )
    z3 = estimate(shape, gpus=4, distributed="zero3")
    # DeepSpeed bf16: bf16 weights and gradients, fp32 master + Adam in the optimizer: the same 16 bytes in all.
    assert (z3.weights, z3.gradients, z3.optimizer) == tuple(b * shape.parameters() // 4 for b in (2, 2, 12))


def test_zero3_offload_moves_states_to_cpu():
    shape = shape_of("3b")
    z3 = estimate(shape, gpus=4, distributed="zero3")
    off = estimate(shape, gpus=4, distributed="zero3_offload")
    assert off.weights == off.gradients == off.optimizer == 0
    assert off.cpu >= z3.weights + z3.optimizer and z3.cpu == 0
    assert off.total < z3.total
    assert "CPU memory" in off.text() and "CPU memory" not in z3.text()


def test_lora_has_far_fewer_trainable_parameters_and_no_base_gradients():
    shape = shape_of("8b")
    full = estimate(shape, distributed="ddp")
    lora = estimate(shape, lora_r=16, distributed="ddp")
    assert lora.trainable * 100 < full.trainable
    assert lora.gradients == 4 * lora.trainable and lora.optimizer == 8 * lora.trainable
    assert lora.weights == full.weights + 4 * lora.trainable  # the frozen base, plus the adapters
    narrow = estimate(shape, lora_r=16, lora_target_modules="q_proj,v_proj")
    assert narrow.trainable < lora.trainable


def test_4bit_base_is_about_a_quarter_of_bf16_weights():
    shape = shape_of("8b")
    lora = estimate(shape, lora_r=16)  # the frozen base as the Trainer holds it: fp32
    q4 = estimate(shape, lora_r=16, load_in_4bit=True)
    quantized = shape.num_hidden_layers * shape.layer_parameters()[0]  # the decoder's linear weights
    assert lora.weights - q4.weights == pytest.approx(quantized * (4 - NF4_BYTES), abs=1)
    assert 0.25 < NF4_BYTES / 2 < 0.27  # 4 bits + quantisation constants: about a quarter of bf16
    assert q4.gradients == lora.gradients and q4.optimizer == lora.optimizer  # the adapters train the same
    with pytest.raises(ValueError, match="lora_r"):
        estimate(shape, load_in_4bit=True)


def test_activations_grow_with_batch_and_length_and_checkpointing_cuts_them():
    shape = shape_of("3b")
    base = estimate(shape, per_device_train_batch_size=1, max_length=1024)
    assert estimate(shape, per_device_train_batch_size=2, max_length=1024).activations == 2 * base.activations
    assert estimate(shape, per_device_train_batch_size=1, max_length=2048).logits == 2 * base.logits
    ckpt = estimate(shape, per_device_train_batch_size=1, max_length=1024, gradient_checkpointing=True)
    assert ckpt.activations * 5 < base.activations and ckpt.logits == base.logits
    # DPO: chosen and rejected in one forward: twice the batch.
    dpo = estimate(shape, per_device_train_batch_size=1, max_length=1024, preference=True)
    assert (dpo.activations, dpo.logits) == (2 * base.activations, 2 * base.logits)
    # A kept reference model (no precomputed log-probs) is one more frozen copy; none with LoRA (adapter off).
    ref = estimate(shape, preference=True, reference_model=True)
    assert ref.reference == ref.weights
    assert estimate(shape, preference=True, reference_model=True, lora_r=8).reference == 0
    assert estimate(shape, bf16=False).activations > estimate(shape, bf16=True).activations


def test_text_names_the_total_and_terms():
    est = estimate(shape_of("1b"), per_device_train_batch_size=2, max_length=512)
    assert est.text().startswith(f"about {est.total / 2**30:.1f} GiB per GPU (weights ")
    d = est.as_dict()
    assert d["total"] == est.total == sum(d[t] for t in Estimate.TERMS)


def test_unknown_mode_and_bad_config_are_refused(tmp_path):
    with pytest.raises(ValueError, match="distributed mode"):
        estimate(shape_of("1b"), distributed="tp")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mystery", "vocab_size": 10}))
    with pytest.raises(ValueError, match="hidden_size"):
        ModelShape.from_folder(tmp_path)
    with pytest.raises(ValueError, match="config.json"):
        ModelShape.from_folder(tmp_path / "nowhere")


def test_cli_prints_the_breakdown(capsys):
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(
        [
            "memory",
            "--model",
            "8b",
            "--stage",
            "dpo",
            "--per-device-train-batch-size",
            "2",
            "--max-length",
            "1024",
            "--gpus",
            "4",
            "--distributed",
            "fsdp",
            "--gradient-checkpointing",
            "--json",
        ]  # fmt: skip
    )
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out)
    want = estimate(
        shape_of("8b"),
        per_device_train_batch_size=2,
        max_length=1024,
        gpus=4,
        distributed="fsdp",
        gradient_checkpointing=True,
        preference=True,
    )
    assert out["total"] == want.total and out["settings"]["distributed"] == "fsdp"


# --- a real training step -------------------------------------------------------------------------------------
def _save_llama(path) -> str:
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = word_tokenizer(WORDS)
    cfg = LlamaConfig(
        **{**SMALL, "vocab_size": len(tok)}, num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2
    )
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return str(path)


def _held_after_one_step(cfg) -> dict[str, int]:
    """Train one step with the stages' own loader and TrainingArguments; the bytes the model's parameters, their
    gradients and the optimizer's AdamW states hold right after the optimizer step."""
    from datasets import Dataset
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from ml.stages._train import load_for_training, pad_collate, training_kwargs

    model, tok = load_for_training(cfg)
    held: dict[str, int] = {}

    class Measure(TrainerCallback):
        def on_optimizer_step(self, args, state, control, model=None, optimizer=None, **kw):
            params = list(model.parameters())
            held["weights"] = sum(p.numel() * p.element_size() for p in params)
            held["gradients"] = sum(p.grad.numel() * p.grad.element_size() for p in params if p.grad is not None)
            held["optimizer"] = sum(
                t.numel() * t.element_size()
                for st in optimizer.state.values()
                for name, t in st.items()
                if name != "step"  # one scalar per tensor, not per parameter
            )
            held["trainable"] = sum(p.numel() for p in params if p.requires_grad)

    rows = [{"input_ids": [1, 5, 6, 7, 2], "labels": [-100, 5, 6, 7, 2]} for _ in range(2)]
    args = TrainingArguments(**{**training_kwargs(cfg), "max_steps": 1, "save_strategy": "no"})
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        data_collator=lambda f: {
            **pad_collate(f, 0),
            "labels": pad_collate([{"input_ids": r["labels"]} for r in f], -100)["input_ids"],
        },
        callbacks=[Measure()],
    )
    trainer.train()
    return held


@pytest.mark.parametrize("lora_r", [0, 4])
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_estimate_equals_what_a_training_step_holds(tmp_path, arch, lora_r):
    from ml.stages._train import TrainConfig

    folder = save_tiny(tmp_path / "m", n_embd=32) if arch == "gpt2" else _save_llama(tmp_path / "m")
    cfg = TrainConfig(
        model=folder,
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=2,
        max_length=8,
        lora_r=lora_r,
        device="cpu",
    )
    held = _held_after_one_step(cfg)
    # On CPU the Trainer runs fp32 without autocast: bf16=False.
    est = estimate(
        ModelShape.from_folder(folder), per_device_train_batch_size=2, max_length=8, lora_r=lora_r, bf16=False
    )
    assert est.trainable == held["trainable"]
    assert (est.weights, est.gradients, est.optimizer) == (held["weights"], held["gradients"], held["optimizer"])


# --- the activation terms against what autograd keeps ---------------------------------------------------------
def _kept_for_backward(model, ids, autocast: bool) -> int:
    """Bytes of the tensors autograd saves in one forward with the loss (each storage once; the parameters, which
    are weights rather than activations, left out), as the Trainer runs it: under bf16 autocast or not."""
    import contextlib

    seen: dict[int, int] = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    cast = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), cast:
        model(input_ids=ids, labels=ids)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    return sum(n for ptr, n in seen.items() if ptr not in params)


@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("name", ["llama_untied_gqa", "qwen3", "gemma3_text", "gpt_neox", "gpt2"])
def test_activations_logits_and_casts_are_what_autograd_keeps(name, autocast):
    from transformers import AutoModelForCausalLM, GPT2Config

    wide = dict(hidden_size=256, intermediate_size=688, num_hidden_layers=3, num_attention_heads=8, vocab_size=1000)
    if name == "gpt2":
        cfg = GPT2Config(n_embd=256, n_layer=3, n_head=8, vocab_size=1000, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)
    else:
        cfg = _configs(wide)[name]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).train()
    ids = torch.randint(0, 1000, (2, 96))
    kept = _kept_for_backward(model, ids, autocast)
    est = estimate(ModelShape.from_config(cfg.to_dict()), per_device_train_batch_size=2, max_length=96, bf16=autocast)
    assert (est.casts > 0) == autocast  # bf16 copies of the fp32 weights exist only under autocast
    assert est.activations + est.logits + est.casts == pytest.approx(kept, rel=0.1)
