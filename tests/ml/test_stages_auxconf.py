from __future__ import annotations

import pytest
import torch

from ml.modeling import load_causal_lm
from ml.reporter import RecordingReporter
from ml.stages.auxconf import AuxConfConfig, aux_weight_at, auxconf, auxconf_loss
from tests.ml._stage_fixtures import save_tiny, write_pairs


def test_weight_ramps_linearly_then_holds():
    assert aux_weight_at(0, 100, 0.5, 0.2) == 0.0
    assert aux_weight_at(10, 100, 0.5, 0.2) == pytest.approx(0.25)
    assert aux_weight_at(20, 100, 0.5, 0.2) == pytest.approx(0.5)
    assert aux_weight_at(90, 100, 0.5, 0.2) == pytest.approx(0.5)


def test_loss_mixes_weak_and_self_terms():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5)
    labels = torch.tensor([[1, 2, -100], [0, -100, -100]])
    weak_only, parts = auxconf_loss(logits, labels, 0.0)
    assert weak_only.item() == pytest.approx(parts["weak_ce"])
    both, parts = auxconf_loss(logits, labels, 0.5)
    assert both.item() == pytest.approx(0.5 * parts["weak_ce"] + 0.5 * parts["self_ce"])
    # When weak labels equal the model's own argmax, both terms agree.
    agree = logits.argmax(-1).masked_fill(labels == -100, -100)
    a0, _ = auxconf_loss(logits, agree, 0.0)
    a1, _ = auxconf_loss(logits, agree, 1.0)
    assert a0.item() == pytest.approx(a1.item())


def test_auxconf_trains(tmp_path):
    base = save_tiny(tmp_path / "strong", seed=9)
    rep = RecordingReporter()
    cfg = AuxConfConfig(
        model=base,
        output_dir=str(tmp_path / "aux"),
        data=write_pairs(tmp_path / "d.jsonl"),
        max_steps=3,
        per_device_train_batch_size=2,
        learning_rate=1e-3,
        aux_weight=0.5,
    )
    out = auxconf(cfg, rep)
    assert out["steps"] == 3
    load_causal_lm(tmp_path / "aux" / "model", device="cpu")
    assert any(n == "auxconf/aux_weight" for n, _, _ in rep.of("metric"))
    assert auxconf(cfg) == out


def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match="aux_weight"):
        AuxConfConfig(model="m", output_dir=str(tmp_path), data="d", aux_weight=1.5)
