"""Empty generated responses stay out of training unless a stage is told to keep them (ml.stages._responses).

A toy CD run left 5 of 24 chosen responses empty; each stage that trains on generated samples (SFT, DPO,
WSPO, AuxConf) drops such rows (for DPO: a pair with either side empty), logs how many and returns the count
as ``n_empty_dropped``; ``keep_empty_responses=True`` trains on them. Real stages on tiny models throughout.
"""

from __future__ import annotations

import pytest

from ml.io import read_jsonl, write_jsonl
from ml.reporter import RecordingReporter
from ml.resolve import resolve
from ml.stages.auxconf import AuxConfConfig, auxconf
from ml.stages.dpo import DPOStageConfig, dpo, load_preferences
from ml.stages.sft import SFTStageConfig, load_pairs, sft
from ml.stages.wspo import WSPOConfig, wspo
from tests.ml._stage_fixtures import PROMPTS, save_tiny

# Six samples, two of them empty: one "" (EOS at once) and one whitespace only.
RESPONSES = ["good a", "", "yes ok c", "   \n", "good good b", "no d"]
N_EMPTY = 2
TRAIN = {"max_steps": 1, "per_device_train_batch_size": 2, "learning_rate": 1e-3}


@pytest.fixture(scope="module")
def strong(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("m") / "strong", seed=3)


def write_samples(path) -> str:
    write_jsonl(path, [{"index": i, "prompt": p, "response": r} for i, (p, r) in enumerate(zip(PROMPTS, RESPONSES))])
    return str(path)


def _dropped_logs(rep: RecordingReporter, stage: str) -> list[str]:
    return [m for m in rep.of("log") if m.startswith(f"{stage}: dropped {N_EMPTY} of 6 rows with an empty response")]


def test_sft_drops_empty_responses_reports_the_count_and_keeps_them_when_asked(strong, tmp_path):
    data = write_samples(tmp_path / "s.jsonl")
    rep = RecordingReporter()
    out = sft(SFTStageConfig(model=strong, output_dir=str(tmp_path / "sft"), data=data, **TRAIN), rep)
    assert out["n_examples"] == len(RESPONSES) - N_EMPTY and out["n_empty_dropped"] == N_EMPTY
    assert len(_dropped_logs(rep, "sft")) == 1
    # The rows it trains on are exactly the non-empty ones, in file order.
    kept, n = load_pairs(SFTStageConfig(model=strong, output_dir="o", data=data), "sft", RecordingReporter())
    assert [r["response"] for r in kept] == ["good a", "yes ok c", "good good b", "no d"]
    assert n == {"n_empty_dropped": N_EMPTY, "n_truncated_dropped": 0}
    # Kept on request: every row trains, nothing is reported as dropped.
    rep = RecordingReporter()
    cfg = SFTStageConfig(model=strong, output_dir=str(tmp_path / "keep"), data=data, keep_empty_responses=True, **TRAIN)
    out = sft(cfg, rep)
    assert out["n_examples"] == len(RESPONSES) and out["n_empty_dropped"] == 0
    assert not [m for m in rep.of("log") if "empty response" in m]


def test_max_examples_counts_only_usable_rows(strong, tmp_path):
    cfg = SFTStageConfig(model=strong, output_dir="o", data=write_samples(tmp_path / "s.jsonl"), max_examples=3)
    kept, _ = load_pairs(cfg, "sft", RecordingReporter())
    assert [r["response"] for r in kept] == ["good a", "yes ok c", "good good b"]


def test_dpo_drops_pairs_with_either_side_empty(strong, tmp_path):
    rows = [
        {"prompt": PROMPTS[0], "chosen": "good a", "rejected": "bad b"},
        {"prompt": PROMPTS[1], "chosen": " ", "rejected": "bad b"},  # chosen empty
        {"prompt": PROMPTS[2], "chosen": "good a", "rejected": ""},  # rejected empty: no preference either
        {"prompt": PROMPTS[3], "chosen": "yes c", "rejected": "no d"},
    ]
    write_jsonl(tmp_path / "p.jsonl", rows)
    rep = RecordingReporter()
    cfg = DPOStageConfig(model=strong, output_dir=str(tmp_path / "dpo"), data=str(tmp_path / "p.jsonl"), **TRAIN)
    out = dpo(cfg, rep)
    assert out["n_pairs"] == 2 and out["n_empty_dropped"] == 2
    trained = read_jsonl(tmp_path / "dpo" / "pairs.jsonl")
    assert [r["prompt"] for r in trained] == [PROMPTS[0], PROMPTS[3]]
    assert [m for m in rep.of("log") if m.startswith("dpo: dropped 2 of 4 rows with an empty response")]
    # A resumed (here: finished) stage still says how many it dropped.
    assert dpo(cfg)["n_empty_dropped"] == 2
    keep = DPOStageConfig(model=strong, output_dir="o", data=str(tmp_path / "p.jsonl"), keep_empty_responses=True)
    kept, n = load_preferences(keep)
    assert len(kept) == 4 and n["n_empty_dropped"] == 0


def test_dpo_joined_from_cd_and_own_samples_drops_an_empty_rejected(strong, tmp_path):
    chosen = write_samples(tmp_path / "cd.jsonl")
    own = [{"index": i, "prompt": p, "response": "bad b"} for i, p in enumerate(PROMPTS)]
    own[0]["response"] = ""  # the strong model's own sample is empty where CD's is not
    write_jsonl(tmp_path / "own.jsonl", own)
    cfg = DPOStageConfig(model=strong, output_dir="o", chosen_data=chosen, rejected_data=str(tmp_path / "own.jsonl"))
    rows, n = load_preferences(cfg)
    assert n["n_empty_dropped"] == N_EMPTY + 1 and [r["index"] for r in rows] == [2, 4, 5]


def test_wspo_and_auxconf_drop_empty_responses(strong, tmp_path):
    weak = {"weak_aligned": save_tiny(tmp_path / "post", seed=6), "weak_base": save_tiny(tmp_path / "pre", seed=7)}
    data = write_samples(tmp_path / "s.jsonl")
    rep = RecordingReporter()
    out = wspo(WSPOConfig(model=strong, output_dir=str(tmp_path / "wspo"), data=data, **weak, **TRAIN), rep)
    assert out["n_examples"] == len(RESPONSES) - N_EMPTY and out["n_empty_dropped"] == N_EMPTY
    assert len(_dropped_logs(rep, "wspo")) == 1
    assert len(read_jsonl(tmp_path / "wspo" / "wspo_data.jsonl")) == len(RESPONSES) - N_EMPTY
    rep = RecordingReporter()
    out = auxconf(AuxConfConfig(model=strong, output_dir=str(tmp_path / "aux"), data=data, **TRAIN), rep)
    assert out["n_examples"] == len(RESPONSES) - N_EMPTY and out["n_empty_dropped"] == N_EMPTY
    assert len(_dropped_logs(rep, "auxconf")) == 1


@pytest.mark.parametrize("stage", ["sft", "dpo", "wspo", "auxconf"])
def test_keep_empty_responses_is_a_declared_setting_off_by_default(stage):
    """It is a registry setting of every stage that trains on samples (so the API, the CLI and the form offer
    it), and a request can turn it on."""
    spec = resolve("cong", {stage: {"keep_empty_responses": True}}, methods=["weak_sft", "wspo", "auxconf", "cong"])
    assert spec["stages"][stage]["keep_empty_responses"] is True
    assert (
        resolve("cong", {}, methods=["weak_sft", "wspo", "auxconf", "cong"])["stages"][stage]["keep_empty_responses"]
        is False
    )
