"""What the training stages share: text formatting, tokenising (prompt, response) pairs, batched
sampling, TrainingArguments defaults, LoRA, checkpoint resume and the final model save.

One formatting rule everywhere (generation, scoring, training), so a model is trained on exactly the
token sequence it would see at inference:
- with a chat template (and ``use_chat_template``): the prompt is one user turn rendered with
  ``add_generation_prompt=True``; the response is the assistant text, then the tokenizer's eos.
- without one (tiny word-level tokenizers, plain base models): prompt tokens (tokenizer defaults),
  then the response's tokens (no special tokens), then eos.
Prompt and response are tokenised separately and concatenated, never re-tokenised jointly, so the
boundary between them is exact (BPE merges across it cannot move tokens from one side to the other).
The encoders are ml.contrastive's, so CD generation, implicit-reward scoring and training agree.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import torch

from ml.distributed import DEFAULT_MODE, DISTRIBUTED_MODES
from ml.modeling import pad_batch, pick_device, pick_dtype
from ml.reporter import Reporter
from ml.shards import Shard
from ml.stages._scale import check_runnable, load_base, mode_kwargs, mode_used, save_final

if TYPE_CHECKING:
    from ml.stages.callbacks import ReporterCallback

# ----------------------------------------------------------------------------------------------
# Text and tokens


def encode_prompt(tokenizer: Any, prompt: str, use_chat_template: bool = True) -> list[int]:
    # Delegates to contrastive decoding's encoder so training and generation agree token for token.
    from ml.contrastive import encode_prompt as _encode_prompt

    return _encode_prompt(tokenizer, prompt, use_chat_template=use_chat_template)


def encode_response(tokenizer: Any, response: str, use_chat_template: bool = True, add_eos: bool = True) -> list[int]:
    from ml.contrastive import encode_response as _encode_response

    ids = _encode_response(tokenizer, response)
    if add_eos and tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return ids


def encode_pair(
    tokenizer: Any,
    prompt: str,
    response: str,
    *,
    use_chat_template: bool = True,
    max_length: int | None = None,
    eos: bool = True,
) -> tuple[list[int], list[int]]:
    """(prompt_ids, response_ids) with eos (unless ``eos`` is false: a response cut at the length limit, which did not
    end); over ``max_length`` the prompt loses its start and the response its end (the response keeps at least one
    token, so every pair still carries a signal)."""
    p = encode_prompt(tokenizer, prompt, use_chat_template)
    r = encode_response(tokenizer, response, use_chat_template, add_eos=eos)
    if max_length and len(p) + len(r) > max_length:
        # The prompt keeps what the whole response leaves room for, but at least half the budget (and at least
        # one token, never the whole budget); the response fills the rest. So a larger budget never keeps fewer
        # tokens of either side (the previous rule kept 3 response tokens at 6 and 2 at 7).
        floor_p = min(len(p), max(1, max_length // 2), max_length - 1)
        keep_p = max(floor_p, min(len(p), max_length - len(r)))
        p = p[len(p) - keep_p :]
        r = r[: max(1, max_length - len(p))]
    return p, r


def decode_response(tokenizer: Any, ids: list[int]) -> str:
    text: str = tokenizer.decode(ids, skip_special_tokens=True).strip()
    return text


# ----------------------------------------------------------------------------------------------
# Batched sampling (weak_align's k samples per prompt, self_sample, evaluate)


@torch.no_grad()
def sample_finished(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    *,
    n: int = 1,
    temperature: float = 0.8,
    top_p: float = 0.95,
    max_new_tokens: int = 64,
    use_chat_template: bool = True,
    seed: int | None = None,
    do_sample: bool = True,
) -> list[list[tuple[str, str]]]:
    """n sampled (or greedy) responses for each prompt, as (text, finish_reason: "eos" or "length"): one
    ``generate`` call, left padding, no repetition penalty. Seeded per call so a resumed run regenerates the same
    batch. Public: the stages and the pre-flight diagnostic (ml.diagnose) sample through it."""
    if seed is not None:
        torch.manual_seed(seed)
    device = next(model.parameters()).device
    rows = [encode_prompt(tokenizer, p, use_chat_template) for p in prompts]
    rows = [r for r in rows for _ in range(n)]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    width = max(len(r) for r in rows)
    # Left padding keeps every prompt's last token at the same position, which generate() needs.
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r) :] = 1
    kw: dict[str, Any] = dict(max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
    if do_sample:
        kw.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
    else:
        kw.update(do_sample=False)
    out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kw)
    eos = tokenizer.eos_token_id
    # generate() stops a row at EOS (then pads it with pad, which may be EOS too); a row with no EOS ran to the limit.
    got = [
        (decode_response(tokenizer, seq[width:].tolist()), "eos" if eos in seq[width:].tolist() else "length")
        for seq in out
    ]
    return [got[i * n : (i + 1) * n] for i in range(len(prompts))]


def sample_responses(model: Any, tokenizer: Any, prompts: list[str], **kw: Any) -> list[list[str]]:
    """``sample_finished`` without the finish reasons: n responses per prompt, as text."""
    return [[text for text, _ in rows] for rows in sample_finished(model, tokenizer, prompts, **kw)]


# ----------------------------------------------------------------------------------------------
# Config shared by the training stages


def _help(text: str, default: Any) -> Any:
    return field(default=default, metadata={"help": text})


def _internal(text: str, default: Any) -> Any:
    """A setting the caller wires (device, dtype), never taken from a web request (ml.spec)."""
    return field(default=default, metadata={"help": text, "internal": True})


@dataclass(kw_only=True)
class TrainConfig:
    """Settings every training stage has. Stage configs add their own (data, beta, ...)."""

    model: str = field(
        metadata={"internal": True, "help": "HF folder of the model to train (the strong model, or pi_pre)."}
    )
    output_dir: str = field(
        metadata={"internal": True, "help": "Stage folder: checkpoints/, model/ and DONE.json go here."}
    )
    learning_rate: float = _help("Peak learning rate.", 1e-5)
    num_train_epochs: float = _help("Epochs over the data (ignored when max_steps > 0).", 1.0)
    max_steps: int = _help("Stop after this many optimizer steps; -1 = use num_train_epochs.", -1)
    per_device_train_batch_size: int = _help("Examples per step per device.", 4)
    gradient_accumulation_steps: int = _help("Steps accumulated per optimizer update.", 1)
    lr_scheduler_type: str = _help("Learning-rate schedule (HF name: cosine, linear, constant...).", "cosine")
    warmup_ratio: float = _help("Fraction of steps spent warming the learning rate up.", 0.1)
    weight_decay: float = _help("AdamW weight decay.", 0.0)
    max_length: int = _help("Longest prompt+response in tokens; longer pairs are truncated.", 512)
    save_steps: int = _help("Checkpoint every N steps (kept: the latest one) so a crash resumes.", 50)
    logging_steps: int = _help("Report the loss every N steps.", 1)
    seed: int = _help("Random seed (data order, dropout, sampling).", 0)
    lora_r: int = _help("LoRA rank; 0 = full fine-tune. LoRA weights are merged into model/ at the end.", 0)
    lora_alpha: int = _help("LoRA scaling alpha (used when lora_r > 0).", 16)
    lora_dropout: float = _help("LoRA dropout (used when lora_r > 0).", 0.0)
    lora_target_modules: str = _help("LoRA target modules: 'all-linear' or comma-separated names.", "all-linear")
    use_chat_template: bool = _help("Format prompts with the tokenizer's chat template when it has one.", True)
    load_in_4bit: bool = _help(
        "QLoRA: load the base weights 4-bit (NF4, bitsandbytes) and train LoRA (lora_r > 0) on top; needs a CUDA "
        "GPU and one of several processes in ddp. model/ is the base reloaded in bf16 with the adapter merged.",
        False,
    )
    bf16: bool = _help(
        "bf16 mixed precision on CUDA (fp16 where the GPU lacks bf16); ignored on CPU (fp32).",
        True,
    )
    gradient_checkpointing: bool = _help("Trade compute for memory (useful for big models on GPU).", False)
    distributed: str = _internal(
        f"How several processes share the training: {', '.join(DISTRIBUTED_MODES)} (ml.distributed).", DEFAULT_MODE
    )
    device: str | None = _internal("'cpu', 'cuda', 'cuda:1'; None = CUDA when present.", None)
    dtype: str | None = _internal("Weights dtype: float32/bfloat16/float16; None = bf16 on CUDA, fp32 on CPU.", None)

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("model is empty: give the HF folder of the model to train")
        if not self.output_dir:
            raise ValueError("output_dir is empty: give a folder for the stage's outputs")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0 (got {self.learning_rate})")
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError(f"max_steps must be -1 (use epochs) or a positive count (got {self.max_steps})")
        if self.max_steps == -1 and self.num_train_epochs <= 0:
            raise ValueError("num_train_epochs must be > 0 when max_steps is -1")
        for name in (
            "per_device_train_batch_size",
            "gradient_accumulation_steps",
            "save_steps",
            "logging_steps",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 (got {getattr(self, name)})")
        if self.max_length < 2:
            # A pair needs a prompt token to predict from and a response token to learn: at 1, encode_pair keeps
            # the response's first token alone, and the stage trained on nothing (loss 0) yet reported success.
            raise ValueError(
                f"max_length must be >= 2: one prompt token and one response token (got {self.max_length})"
            )
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1) (got {self.warmup_ratio})")
        if self.lora_r < 0:
            raise ValueError(f"lora_r must be >= 0, 0 meaning full fine-tune (got {self.lora_r})")
        if self.distributed not in DISTRIBUTED_MODES:
            raise ValueError(f"distributed must be one of {', '.join(DISTRIBUTED_MODES)} (got {self.distributed!r})")
        if self.load_in_4bit and self.lora_r == 0:
            raise ValueError("load_in_4bit (QLoRA) trains LoRA adapters on the frozen 4-bit base: set lora_r > 0")
        if self.load_in_4bit and self.distributed != "ddp":
            # fsdp and ZeRO-3 shard the weights themselves; sharding 4-bit weights needs a matching quant storage
            # dtype and loader settings this code does not set up (nor test), so the pair is refused.
            raise ValueError(f"load_in_4bit (QLoRA) runs in one process or several in ddp, not {self.distributed}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"unknown {cls.__name__} field(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return cls(**data)


def training_kwargs(cfg: TrainConfig, model: Any = None) -> dict[str, Any]:
    """TrainingArguments values every stage uses: local only, checkpoints for resume, right precision, and the
    settings of ``cfg.distributed`` (fsdp needs ``model``: it wraps the model's own decoder-layer class)."""
    check_runnable(cfg)
    device = pick_device(cfg.device)
    dtype = pick_dtype(device, cfg.dtype)
    on_cuda = device.type == "cuda"
    # Mixed precision only on CUDA; on CPU bf16 autocast is slow and fp16 unsupported.
    mixed = on_cuda and cfg.bf16
    kw: dict[str, Any] = dict(
        output_dir=str(Path(cfg.output_dir) / "checkpoints"),
        learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        lr_scheduler_type=cfg.lr_scheduler_type,
        warmup_steps=cfg.warmup_ratio,  # transformers 5: a float < 1 here is a ratio of total steps
        weight_decay=cfg.weight_decay,
        logging_steps=cfg.logging_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=1,  # only the latest checkpoint is needed to resume
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to="none",
        push_to_hub=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=on_cuda,
        use_cpu=not on_cuda,
        bf16=mixed and dtype == torch.bfloat16,
        fp16=mixed and dtype == torch.float16,
        activation_checkpointing=cfg.gradient_checkpointing,  # transformers 5 name; the old one warns
        remove_unused_columns=False,
        disable_tqdm=True,
    )
    # A mode's settings win over the plain ones (fsdp moves activation checkpointing into its own config).
    return kw | mode_kwargs(cfg.distributed, model, gradient_checkpointing=cfg.gradient_checkpointing)


def load_for_training(cfg: TrainConfig) -> tuple[Any, Any]:
    """(model, tokenizer) to train; LoRA-wrapped when lora_r > 0."""
    from ml.modeling import load_tokenizer

    check_runnable(cfg)
    model = load_base(cfg)
    tok = load_tokenizer(cfg.model)
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id
    if cfg.lora_r > 0:
        from peft import LoraConfig, get_peft_model

        targets: Any = cfg.lora_target_modules
        if targets != "all-linear":
            targets = [t.strip() for t in targets.split(",") if t.strip()]
        model = get_peft_model(
            model,
            LoraConfig(
                r=cfg.lora_r,
                lora_alpha=cfg.lora_alpha,
                lora_dropout=cfg.lora_dropout,
                target_modules=targets,
                task_type="CAUSAL_LM",
            ),
        )
    return model, tok


def last_checkpoint(cfg: TrainConfig) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    ckpt_dir = Path(cfg.output_dir) / "checkpoints"
    if not ckpt_dir.is_dir():
        return None
    # transformers leaves get_last_checkpoint unannotated; it returns the folder's path or None.
    found: str | None = get_last_checkpoint(str(ckpt_dir))  # type: ignore[no-untyped-call]
    return found


def run_training(
    trainer: Any, cfg: TrainConfig, callback: ReporterCallback, *, stage: str, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Train (resuming from the latest checkpoint), then save model/ and DONE.json; or report a stop."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from ml.io import mark_done

    # Our ReporterCallback reports progress and losses; the Trainer's own printers would write raw
    # log dicts to stdout (where the CLI prints JSON).
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    t0 = time.time()
    resume = last_checkpoint(cfg)
    if resume:
        callback.reporter.log(f"{stage}: resuming from {resume}")
    result = trainer.train(resume_from_checkpoint=resume)
    state = trainer.state
    losses = [h["loss"] for h in state.log_history if "loss" in h]
    summary: dict[str, Any] = {
        "stage": stage,
        "steps": int(state.global_step),
        "max_steps": int(state.max_steps),
        # What the Trainer was told and what it did: the spec's epochs are checked against these.
        "num_train_epochs": float(state.num_train_epochs),
        "epochs_trained": round(float(state.epoch or 0.0), 3),
        "final_loss": float(losses[-1]) if losses else None,
        "train_loss": float(result.training_loss)
        if result.training_loss is not None and not math.isnan(result.training_loss)
        else None,
        "resumed_from": resume,
        "seconds": round(time.time() - t0, 3),
        **(extra or {}),
    }
    # Several processes (ml.distributed): they trained one model; the first one saves it and says so.
    summary.update(world_size=int(trainer.args.world_size), distributed=mode_used(trainer, cfg))
    if callback.stopped:
        # The callback asked the Trainer to checkpoint the step it stopped at; a rerun resumes there.
        return {**summary, "stopped": True}
    summary["model_dir"] = str(save_final(trainer, cfg))
    if trainer.is_world_process_zero():
        mark_done(cfg.output_dir, summary)
    trainer.accelerator.wait_for_everyone()
    return summary


def sample_to_jsonl(
    *,
    model_dir: str,
    prompts: list[str],
    path: Path,
    reporter: Reporter,
    progress_name: str,
    n: int = 1,
    temperature: float = 0.8,
    top_p: float = 0.95,
    do_sample: bool = True,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    seed: int = 0,
    use_chat_template: bool = True,
    device: str | None = None,
    shard: Shard | None = None,
) -> bool:
    """Sample n responses per prompt into a JSONL ({"index","sample","prompt","response","finish_reason"}), batch
    by batch;
    a rerun keeps the batches written whole and generates the others. Batch k (prompts k*batch_size...) is
    seeded by ``seed + k*batch_size`` wherever it runs, so ``shard`` i/n (batches i, i+n, ... into its own file,
    ml.shards) writes exactly those rows of an unsharded run. Returns False when the reporter asked to stop."""
    from ml.io import append_jsonl, repair_jsonl, write_jsonl
    from ml.modeling import load_causal_lm, load_tokenizer

    starts = [s for k, s in enumerate(range(0, len(prompts), batch_size)) if shard is None or shard.takes(k)]
    have = repair_jsonl(path)
    present = {int(r["index"]) for r in have}
    whole = {s for s in starts if all(i in present for i in range(s, min(s + batch_size, len(prompts))))}
    kept = [r for r in have if int(r["index"]) - int(r["index"]) % batch_size in whole]
    if len(kept) < len(have):  # a batch cut short by a crash is generated again whole, from its own seed
        write_jsonl(path, kept)
    todo = [s for s in starts if s not in whole]
    total = sum(min(batch_size, len(prompts) - s) for s in starts)
    done = total - sum(min(batch_size, len(prompts) - s) for s in todo)
    if not todo:
        return True
    model = load_causal_lm(model_dir, device=device)
    tok = load_tokenizer(model_dir)
    for start in todo:
        if reporter.should_stop():
            return False
        batch = prompts[start : start + batch_size]
        outs = sample_finished(
            model,
            tok,
            batch,
            n=n,
            temperature=temperature,
            top_p=top_p,
            max_new_tokens=max_new_tokens,
            use_chat_template=use_chat_template,
            seed=seed + start,
            do_sample=do_sample,
        )
        append_jsonl(
            path,
            [
                {"index": start + i, "sample": j, "prompt": p, "response": r, "finish_reason": why}
                for i, (p, rs) in enumerate(zip(batch, outs))
                for j, (r, why) in enumerate(rs)
            ],
        )
        done += len(batch)
        reporter.progress(progress_name, done, total)
    return True


# ----------------------------------------------------------------------------------------------
# Per-token log-probs and padding for the custom-loss trainers (WSPO, AuxConf)


@torch.no_grad()
def token_logprobs(model: Any, seqs: list[list[int]], *, batch_size: int = 8, pad_id: int = 0) -> list[list[float]]:
    """For each sequence, [0.0, log p(s1|s0), log p(s2|s0 s1), ...] (same length as the sequence).

    Right padding with an attention mask: positions before a row's pads are computed exactly as
    without padding (causal attention), so no position ids are needed."""
    device = next(model.parameters()).device
    out: list[list[float]] = []
    for i in range(0, len(seqs), batch_size):
        chunk = seqs[i : i + batch_size]
        ids, mask = pad_batch(chunk, pad_id, side="right")
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        lp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None].to(device)).squeeze(-1)
        for j, s in enumerate(chunk):
            out.append([0.0] + lp[j, : len(s) - 1].tolist())
    return out


def pad_collate(features: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad list-valued features: input_ids with pad_id, everything else with 0."""
    width = max(len(f["input_ids"]) for f in features)
    batch: dict[str, torch.Tensor] = {}
    for key in features[0]:
        vals = [f[key] for f in features]
        is_float = any(isinstance(x, float) for v in vals for x in v)
        fill = pad_id if key == "input_ids" else 0
        t = torch.full((len(vals), width), fill, dtype=torch.float32 if is_float else torch.long)
        for i, v in enumerate(vals):
            t[i, : len(v)] = torch.tensor(v, dtype=t.dtype)
        batch[key] = t
    return batch


def shifted_token_logps(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """[B, L] log p(token_t | tokens_<t) with position 0 set to 0 (no prediction for it)."""
    lp = torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    return torch.cat([torch.zeros_like(lp[:, :1]), lp], dim=1)
