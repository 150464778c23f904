"""The training stages' scale options (ml.stages._scale): distributed mode, QLoRA, bf16, and what each turns into.

Runs on this CPU machine: where a setting only acts on CUDA, the TrainingArguments values a CUDA-shaped config
produces are checked (pick_device takes "cuda" at its word), and what must be refused here is refused before any
model loads (the configs point at a model folder that does not exist, so a load would fail differently)."""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import re

import pytest
import torch

from ml.distributed import DISTRIBUTED_MODES, mode_unavailable, qlora_unavailable
from ml.modeling import load_causal_lm, load_tokenizer, pick_device
from ml.reporter import RecordingReporter
from ml.stages._scale import load_base, mode_kwargs, prepare_once, save_final, zero3_config
from ml.stages._train import TrainConfig, load_for_training, training_kwargs
from ml.stages.sft import SFTStageConfig, sft

from ._stage_fixtures import save_tiny, write_pairs


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    return save_tiny(tmp_path_factory.mktemp("m") / "strong", seed=3)


def _cfg(tmp_path, **kw) -> TrainConfig:
    return TrainConfig(model=kw.pop("model", str(tmp_path / "no-model")), output_dir=str(tmp_path / "out"), **kw)


# ---------------------------------------------------------------------------------------------- validation


def test_defaults_keep_todays_behaviour(tmp_path):
    cfg = _cfg(tmp_path)
    assert (cfg.distributed, cfg.load_in_4bit, cfg.bf16, cfg.gradient_checkpointing) == ("ddp", False, True, False)
    meta = {f.name: f.metadata for f in dataclasses.fields(TrainConfig)}
    assert meta["distributed"].get("internal") is True  # set by the CLI / launcher, not a web form field
    assert not meta["load_in_4bit"].get("internal") and not meta["bf16"].get("internal")


def test_unknown_mode_is_refused_naming_the_choices(tmp_path):
    with pytest.raises(ValueError, match="distributed must be one of ddp, fsdp, zero3, zero3_offload"):
        _cfg(tmp_path, distributed="tp")
    for mode in DISTRIBUTED_MODES:
        assert _cfg(tmp_path, distributed=mode).distributed == mode


def test_qlora_needs_lora_and_ddp(tmp_path):
    with pytest.raises(ValueError, match="set lora_r > 0"):
        _cfg(tmp_path, load_in_4bit=True)
    with pytest.raises(ValueError, match="not fsdp"):
        _cfg(tmp_path, load_in_4bit=True, lora_r=4, distributed="fsdp")
    assert _cfg(tmp_path, load_in_4bit=True, lora_r=4).load_in_4bit


# ---------------------------------------------------------------------------------------------- refused at run time


def _sft_cfg(tmp_path, **kw) -> SFTStageConfig:
    data = write_pairs(tmp_path / "pairs.jsonl")
    return SFTStageConfig(model=str(tmp_path / "no-model"), output_dir=str(tmp_path / "out"), data=data, **kw)


@pytest.mark.parametrize("device", [None, "cpu", "cuda"])
def test_qlora_on_this_cpu_machine_is_refused_with_the_shared_message(tmp_path, device):
    assert not torch.cuda.is_available()
    with pytest.raises(ValueError, match=re.escape(qlora_unavailable(False) or "")):
        sft(_sft_cfg(tmp_path, load_in_4bit=True, lora_r=4, device=device))


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is not None, reason="deepspeed is installed here")
@pytest.mark.parametrize("mode", ["zero3", "zero3_offload"])
def test_zero3_without_deepspeed_is_refused_with_the_shared_message(tmp_path, mode):
    why = mode_unavailable(mode)
    assert why and "DeepSpeed" in why
    with pytest.raises(ValueError, match=re.escape(why)):
        sft(_sft_cfg(tmp_path, distributed=mode))


def test_fsdp_on_cpu_is_refused(tmp_path):
    # accelerate ignores an FSDP plugin on a CPU (gloo) process group and the Trainer trains in DDP: fsdp is GPU-only.
    with pytest.raises(ValueError, match="fsdp shards the model across CUDA GPUs"):
        sft(_sft_cfg(tmp_path, distributed="fsdp", device="cpu"))


# ---------------------------------------------------------------------------------------------- precision


@pytest.mark.parametrize(
    ("device", "dtype", "bf16", "expected"),
    [
        ("cuda", "bfloat16", True, (True, False)),  # today's default on a bf16 GPU
        ("cuda", "bfloat16", False, (False, False)),  # bf16 off: fp32 on CUDA
        ("cuda", "float16", True, (False, True)),  # a GPU without bf16 (pick_dtype's fp16) keeps fp16 autocast
        ("cpu", None, True, (False, False)),  # ignored on CPU
    ],
)
def test_bf16_reaches_training_arguments(tmp_path, device, dtype, bf16, expected):
    kw = training_kwargs(_cfg(tmp_path, device=device, dtype=dtype, bf16=bf16))
    assert (kw["bf16"], kw["fp16"]) == expected
    assert kw["use_cpu"] is (device == "cpu")


def test_bf16_off_on_cuda_builds_training_arguments(tmp_path):
    from transformers import TrainingArguments

    args = TrainingArguments(**training_kwargs(_cfg(tmp_path, device="cuda", dtype="bfloat16", bf16=False)))
    assert (args.bf16, args.fp16, args.use_cpu) == (False, False, False)


# ---------------------------------------------------------------------------------------------- modes


@pytest.mark.parametrize("lora_r", [0, 4])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_fsdp_settings_reach_the_trainer(model, tmp_path, lora_r, checkpointing):
    """The run itself is GPU-only (test_fsdp_on_cpu_is_refused); what it would run with is checked here."""
    from transformers import TrainingArguments

    cfg = _cfg(
        tmp_path, model=model, device="cuda", bf16=False, distributed="fsdp", lora_r=lora_r,
        gradient_checkpointing=checkpointing,
    )  # fmt: skip
    m, _ = load_for_training(dataclasses.replace(cfg, device="cpu", distributed="ddp"))  # the same model, here
    args = TrainingArguments(**training_kwargs(cfg, m))
    plugin = args.fsdp_plugin_args
    assert plugin["transformer_cls_names_to_wrap"] == "GPT2Block"  # the tiny GPT-2's decoder layer, from the model
    assert plugin["auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert (plugin["fsdp_version"], plugin["reshard_after_forward"]) == (2, True)  # FSDP2, full shard
    assert plugin["state_dict_type"] == "FULL_STATE_DICT"
    assert plugin["activation_checkpointing"] is checkpointing and args.activation_checkpointing is False
    assert args.deepspeed is None


def test_zero3_loads_on_the_cpu_and_deepspeed_places_the_shards(model, tmp_path):
    # device "cuda" on this CPU machine: a load onto the GPU would fail, so the model being here proves the rule.
    m = load_base(_cfg(tmp_path, model=model, device="cuda", distributed="zero3_offload"))
    assert next(m.parameters()).device == torch.device("cpu") and next(m.parameters()).dtype == torch.float32


def test_fsdp_needs_a_model_with_decoder_layers(tmp_path):
    with pytest.raises(ValueError, match="give training_kwargs the model"):
        mode_kwargs("fsdp", None)
    with pytest.raises(ValueError, match="names none"):
        mode_kwargs("fsdp", torch.nn.Linear(2, 2))


def test_ddp_adds_nothing_and_zero3_configs():
    assert mode_kwargs("ddp", None) == {}
    plain, offload = zero3_config(offload=False), zero3_config(offload=True)
    assert plain["zero_optimization"]["stage"] == offload["zero_optimization"]["stage"] == 3
    assert "offload_param" not in plain["zero_optimization"]
    assert offload["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert offload["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    # Batch sizes, lr and precision come from TrainingArguments ("auto"), so the stage settings stay the source.
    for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size"):
        assert plain[key] == "auto"
    assert plain["optimizer"]["params"]["lr"] == "auto" and plain["bf16"] == {"enabled": "auto"}
    assert mode_kwargs("zero3_offload", None) == {"deepspeed": offload}


def test_each_process_loads_on_its_own_gpu(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert pick_device("cuda") == torch.device("cuda", 1)
    assert pick_device("cuda:0") == torch.device("cuda", 0) and pick_device("cpu") == torch.device("cpu")
    monkeypatch.delenv("LOCAL_RANK")
    assert pick_device("cuda") == torch.device("cuda")


# ---------------------------------------------------------------------------------------------- once, before training


def test_prepare_once_runs_in_the_first_process_and_the_others_wait(monkeypatch):
    made: list[int] = []
    monkeypatch.setenv("RANK", "0")
    assert prepare_once(lambda: False, lambda: made.append(0) is None, RecordingReporter()) is True
    monkeypatch.setenv("RANK", "1")
    answers = iter([False, True])  # the first process finishes while this one waits
    assert prepare_once(lambda: next(answers), lambda: made.append(1) is None, RecordingReporter()) is True
    assert made == [0]  # only the first process made anything
    # A stop while waiting: the waiting process returns stopped rather than making the files itself.
    assert prepare_once(lambda: False, lambda: made.append(1) is None, RecordingReporter(stop_after=0)) is False
    assert made == [0]


# ---------------------------------------------------------------------------------------------- results


def test_done_json_says_one_process_trained_alone(model, tmp_path):
    cfg = SFTStageConfig(
        model=model, output_dir=str(tmp_path / "out"), data=write_pairs(tmp_path / "p.jsonl"), max_steps=1,
        use_chat_template=False,
    )  # fmt: skip
    out = sft(cfg)
    assert (out["world_size"], out["distributed"]) == (1, None)


def test_qlora_save_merges_the_adapter_into_the_base_reloaded_in_bf16(model, tmp_path):
    """save_final's path for a 4-bit base (and for sharded weights): the Trainer saves the adapter, and the base is
    reloaded unquantized and merged. Here the base is not 4-bit (no CUDA); the save path is the same."""
    from transformers import Trainer, TrainingArguments

    cfg = _cfg(tmp_path, model=model, lora_r=4, device="cpu")
    m, tok = load_for_training(cfg)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "lora_B" in name:
                p.add_(torch.randn_like(p) * 0.5)  # a trained adapter: B is zero at initialisation
    trainer = Trainer(model=m, args=TrainingArguments(**training_kwargs(cfg, m)), processing_class=tok)
    want = copy.deepcopy(m).merge_and_unload().state_dict()  # what merging in memory gives (fp32)
    out = save_final(trainer, dataclasses.replace(cfg, load_in_4bit=True))
    saved = load_causal_lm(out, device="cpu", dtype="bfloat16")
    assert next(saved.parameters()).dtype == torch.bfloat16
    got = saved.state_dict()
    changed = [k for k in want if "attn.c_attn.weight" in k]
    assert changed  # the tiny GPT-2's attention projection carries LoRA under all-linear
    for k in changed:
        assert torch.allclose(got[k].float(), want[k].to(torch.bfloat16).float(), atol=1e-2)
    assert not (tmp_path / "out" / "trained.partial").exists()
    assert load_tokenizer(out).get_vocab() == tok.get_vocab()
