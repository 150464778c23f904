from __future__ import annotations

import json

import pytest
import torch

from ml.io import read_jsonl
from ml.modeling import load_causal_lm, load_tokenizer
from ml.stages.wspo import WSPOConfig, map_token_values, weak_targets, wspo, wspo_loss
from tests.ml._stage_fixtures import WORDS, save_tiny, write_pairs


def test_loss_zero_when_strong_ratio_matches_target_and_positive_otherwise():
    policy = torch.tensor([[0.0, -1.0, -2.0, -0.5]])
    ref = torch.tensor([[0.0, -1.5, -1.0, -0.5]])
    mask = torch.tensor([[0.0, 1.0, 1.0, 0.0]])
    beta = 0.1
    target = beta * (policy - ref)
    assert wspo_loss(policy, ref, target, mask, beta).item() == pytest.approx(0.0, abs=1e-12)
    off = target + torch.tensor([[5.0, 0.2, 0.0, 5.0]])  # masked positions must not count
    assert wspo_loss(policy, ref, off, mask, beta).item() == pytest.approx(0.2**2 / 2)


def test_loss_averages_each_sequence_over_its_own_length_then_over_sequences():
    """The reference's normalisation: a 1-token response weighs as much as a 3-token one (a token average over the
    batch would give the long one three quarters of the weight), and a row with no response token is left out."""
    zero = torch.zeros(3, 4)
    mask = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    target = torch.tensor([[2.0, 9.0, 9.0, 9.0], [1.0, 1.0, 1.0, 9.0], [7.0, 7.0, 7.0, 7.0]])
    # squared errors: row 0 -> 4 over 1 token; row 1 -> 1 + 1 + 1 over 3 tokens; row 2 has none
    assert wspo_loss(zero, zero, target, mask, 0.1).item() == pytest.approx((4.0 / 1 + 3.0 / 3) / 2)
    assert wspo_loss(zero, zero, target, torch.zeros(3, 4), 0.1).item() == 0.0


def test_map_token_values_identity_and_conservation():
    text = "ab cd"
    offs = [(0, 2), (3, 5)]
    assert map_token_values(text, offs, [1.0, 2.0], offs) == [1.0, 2.0]
    # Source per character, destination per word (space goes to the next word): totals conserved.
    chars = [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]
    out = map_token_values(text, chars, [1.0, 1.0, 0.5, 2.0, 2.0], offs)
    assert out == pytest.approx([2.0, 4.5])
    # Coarse to fine: a word's value spreads evenly over its characters.
    assert map_token_values(text, offs, [1.0, 2.0], chars) == pytest.approx([0.5, 0.5, 0.0, 1.0, 1.0])


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("w")
    return {
        "aligned": save_tiny(root / "post", seed=6),
        "base": save_tiny(root / "pre", seed=7),
        "strong": save_tiny(root / "strong", seed=8, n_embd=48),
    }


def _config(models, tmp_path, data: str, **kw) -> WSPOConfig:
    """A short WSPO run of the tiny strong model on ``data`` against the tiny weak pair."""
    return WSPOConfig(
        model=models["strong"],
        output_dir=str(tmp_path / "wspo"),
        data=data,
        weak_aligned=models["aligned"],
        weak_base=models["base"],
        per_device_train_batch_size=2,
        learning_rate=1e-3,
        **kw,
    )


def test_wspo_trains_and_caches_targets(models, tmp_path):
    cfg = _config(models, tmp_path, write_pairs(tmp_path / "d.jsonl"), max_steps=2)
    out = wspo(cfg)
    assert out["steps"] == 2 and out["final_loss"] is not None and out["final_loss"] > 0
    cached = read_jsonl(tmp_path / "wspo" / "wspo_data.jsonl")
    assert all(len(d["target"]) == len(d["input_ids"]) - d["prompt_len"] == len(d["ref"]) for d in cached)
    load_causal_lm(tmp_path / "wspo" / "model", device="cpu")
    assert wspo(cfg) == out


def test_on_preference_data_a_cut_chosen_response_is_left_out(models, tmp_path):
    """WSPO on weak_align's preferences.jsonl reads how the chosen side ended from chosen_finish_reason: a cut one is
    dropped (drop_truncated, the default) and counted."""
    rows = [
        {"prompt": "a b", "chosen": "a a", "rejected": "b", "chosen_finish_reason": "eos"},
        {"prompt": "b a", "chosen": "a b a", "rejected": "b b", "chosen_finish_reason": "length"},
        {"prompt": "a a", "chosen": "a", "rejected": "b a", "chosen_finish_reason": "eos"},
    ]
    data = tmp_path / "prefs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = wspo(_config(models, tmp_path, str(data), response_field="chosen", max_steps=1))
    assert out["n_truncated_dropped"] == 1 and out["n_examples"] == 2


def test_different_tokenizer_maps_to_same_targets_when_splits_agree(models, tmp_path):
    """A strong tokenizer with other ids (fingerprint differs) but the same word splits: the character
    mapping must reproduce the exact per-token targets."""
    from ml.tiny import tiny_gpt2, word_tokenizer

    other = word_tokenizer(list(reversed(WORDS)))
    path = tmp_path / "strong2"
    tiny_gpt2(len(other), n_layer=1, n_embd=32, n_head=2, n_positions=64).save_pretrained(str(path))
    other.save_pretrained(str(path))
    rows = [{"prompt": "tell me", "response": "good a b the cat"}]
    kw = dict(output_dir=str(tmp_path / "x"), data="unused", weak_aligned=models["aligned"], weak_base=models["base"])
    same = weak_targets(WSPOConfig(model=models["strong"], **kw), rows, load_tokenizer(models["strong"]))
    mapped = weak_targets(WSPOConfig(model=str(path), **kw), rows, load_tokenizer(path))
    assert mapped[0]["target"] == pytest.approx(same[0]["target"], abs=1e-5)
    assert mapped[0]["input_ids"] != same[0]["input_ids"]  # really another tokenisation


@pytest.mark.slow  # two tiny pipelines
def test_the_pipeline_trains_wspo_on_the_weak_preference_data_by_default(tmp_path):
    """wspo_data "weak_chosen" (the default, the reference's): the chosen side of the preference data pi_post was
    aligned on; "plain": plain pi_post samples; a given pi_post without that data falls back to plain, logged."""
    from ml.io import read_json, read_jsonl
    from ml.pipeline import PipelineConfig, run
    from ml.reporter import RecordingReporter
    from tests.ml._stage_fixtures import save_tiny, tiny_config

    cfg = tiny_config(tmp_path / "a", methods=["wspo"])  # no weak_aligned: the pipeline runs weak_align
    run(PipelineConfig.from_dict(cfg))
    prefs = read_jsonl(tmp_path / "a" / "run" / "weak_align" / "preferences.jsonl")
    assert read_json(tmp_path / "a" / "run" / "wspo" / "DONE.json")["n_examples"] == len(prefs)
    cached = read_jsonl(tmp_path / "a" / "run" / "wspo" / "wspo_data.jsonl")
    assert len(cached) == len(prefs)

    given = tiny_config(
        tmp_path / "b", methods=["wspo"], weak_aligned=save_tiny(tmp_path / "b" / "models" / "post", seed=13)
    )
    rep = RecordingReporter()
    run(PipelineConfig.from_dict(given), rep)
    plain = read_jsonl(tmp_path / "b" / "run" / "plain_generate" / "samples.jsonl")
    assert read_json(tmp_path / "b" / "run" / "wspo" / "DONE.json")["n_examples"] == len(plain)
    assert [m for m in rep.of("log") if "no weak preference data beside pi_post" in m]
    with pytest.raises(ValueError, match="wspo_data must be one of weak_chosen, plain"):
        PipelineConfig.from_dict({**given, "wspo_data": "chosen"})
