"""The training losses are on response tokens only (ml/stages/sft.py, ml/stages/dpo.py; docs/METHOD.md).

Each test runs the stage itself up to the point where TRL's trainer is built, then, instead of training,
pulls every batch the trainer would train on from its own dataloader (TRL's dataset preparation and
collator included) and checks, row by row against the stage's own encoding (``_train.encode_pair``):

- SFT: ``labels`` are -100 on every prompt position (and padding) and equal the token on every response
  position (the response's eos included). The model shifts labels itself, so these are the positions whose
  next-token log-prob enters the loss.
- DPO: the batch is [chosen rows; rejected rows]; ``completion_mask`` (what TRL's loss and the chosen and
  rejected log-prob sums are masked with) is 0 on the prompt and padding and 1 on exactly the chosen,
  resp. rejected, tokens; the prompt is never part of the completion ids.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from ml.modeling import load_tokenizer
from ml.stages._train import encode_pair
from tests.ml._stage_fixtures import PROMPTS, save_tiny, write_pairs, write_prefs


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("m") / "strong", seed=1)


def _capture_batches(monkeypatch, module: Any) -> list[dict[str, torch.Tensor]]:
    """Replace ``module.run_training`` so the stage hands over its trainer: keep every batch of one epoch."""
    batches: list[dict[str, torch.Tensor]] = []

    def fake_run_training(trainer, config, callback, *, stage, extra=None):
        batches.extend(trainer.get_train_dataloader())
        return {"stage": stage, "captured": True}

    monkeypatch.setattr(module, "run_training", fake_run_training)
    return batches


def _expected(tok, rows: list[tuple[str, str]]) -> dict[tuple[int, ...], int]:
    """{prompt + response ids: prompt length} as the stage encodes each (prompt, response)."""
    out = {}
    for prompt, response in rows:
        p, r = encode_pair(tok, prompt, response, use_chat_template=True, max_length=512)
        assert p and len(r) >= 2 and r[-1] == tok.eos_token_id  # a real prompt, response + eos
        out[tuple(p + r)] = len(p)
    return out


def _unpad(ids: torch.Tensor, attention: torch.Tensor) -> list[int]:
    n = int(attention.sum())
    assert attention[:n].all() and not attention[n:].any(), "expected right padding"
    return ids[:n].tolist()


def test_sft_labels_cover_response_tokens_only(base, tmp_path, monkeypatch):
    import ml.stages.sft as sft_mod

    batches = _capture_batches(monkeypatch, sft_mod)
    data = write_pairs(tmp_path / "d.jsonl")
    cfg = sft_mod.SFTStageConfig(
        model=base, output_dir=str(tmp_path / "sft"), data=data, per_device_train_batch_size=4, max_steps=1
    )
    assert sft_mod.sft(cfg) == {"stage": "sft", "captured": True}
    tok = load_tokenizer(base)
    from ml.io import read_jsonl

    expected = _expected(tok, [(r["prompt"], r["response"]) for r in read_jsonl(data)])
    seen = []
    for batch in batches:
        for ids, att, labels in zip(batch["input_ids"], batch["attention_mask"], batch["labels"]):
            seq = _unpad(ids, att)
            n_prompt = expected[tuple(seq)]  # KeyError: the trainer does not train on the stage's encoding
            seen.append(tuple(seq))
            assert (labels[:n_prompt] == -100).all(), f"loss on prompt tokens: {labels[:n_prompt].tolist()}"
            assert labels[n_prompt : len(seq)].tolist() == seq[n_prompt:], "a response token carries no loss"
            assert (labels[len(seq) :] == -100).all(), "loss on padding"
    assert sorted(seen) == sorted(expected)  # every example, once


def test_dpo_completion_mask_covers_chosen_and_rejected_tokens_only(base, tmp_path, monkeypatch):
    import ml.stages.dpo as dpo_mod
    from ml.io import read_jsonl

    batches = _capture_batches(monkeypatch, dpo_mod)
    data = write_prefs(tmp_path / "prefs.jsonl")
    cfg = dpo_mod.DPOStageConfig(
        model=base, output_dir=str(tmp_path / "dpo"), data=data, per_device_train_batch_size=4, max_steps=1
    )
    out = dpo_mod.dpo(cfg)
    assert out == {"stage": "dpo", "captured": True}
    tok = load_tokenizer(base)
    rows = read_jsonl(data)
    chosen = _expected(tok, [(r["prompt"], r["chosen"]) for r in rows])
    rejected = _expected(tok, [(r["prompt"], r["rejected"]) for r in rows])
    n_rows = 0
    for batch in batches:
        assert "ref_chosen_logps" in batch  # precomputed reference log-probs ride with each pair
        half = batch["input_ids"].shape[0] // 2
        for i, (ids, att, mask) in enumerate(
            zip(batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
        ):
            seq = _unpad(ids, att)
            side = chosen if i < half else rejected
            n_prompt = side[tuple(seq)]
            assert mask[:n_prompt].sum() == 0, f"prompt tokens in the DPO log-prob sums: {mask.tolist()}"
            assert mask[n_prompt : len(seq)].all(), "a completion token left out of the DPO log-prob sums"
            assert mask[len(seq) :].sum() == 0, "padding in the DPO log-prob sums"
            n_rows += 1
        # Row i and row half+i are the same example: the same prompt, its chosen and its rejected.
        for i in range(half):
            c, r = (
                _unpad(batch["input_ids"][i], batch["attention_mask"][i]),
                _unpad(batch["input_ids"][half + i], batch["attention_mask"][half + i]),
            )
            n = chosen[tuple(c)]
            assert c[:n] == r[:n] and c[n:] != r[n:]
    assert n_rows == 2 * len(PROMPTS)


def test_dpo_rows_keep_the_prompt_out_of_the_completion_ids(base, tmp_path, monkeypatch):
    """The rows the stage hands TRL: prompt_ids is the prompt's encoding, chosen/rejected ids are the
    responses' (+ eos) only, so no prompt token can be counted as completion."""
    import ml.stages.dpo as dpo_mod

    captured: dict[str, Any] = {}

    def fake_run_training(trainer, config, callback, *, stage, extra=None):
        captured["rows"] = list(trainer.train_dataset)
        return {"stage": stage}

    monkeypatch.setattr(dpo_mod, "run_training", fake_run_training)
    data = write_prefs(tmp_path / "prefs.jsonl")
    dpo_mod.dpo(dpo_mod.DPOStageConfig(model=base, output_dir=str(tmp_path / "dpo"), data=data, max_steps=1))
    tok = load_tokenizer(base)
    from ml.stages._train import encode_prompt, encode_response

    rows = captured["rows"]
    assert len(rows) == len(PROMPTS)
    for prompt, row in zip(PROMPTS, rows):
        assert row["prompt_ids"] == encode_prompt(tok, prompt) and row["prompt_ids"]
        assert row["chosen_ids"] == encode_response(tok, "good good a")
        assert row["rejected_ids"] == encode_response(tok, "bad bad b")
