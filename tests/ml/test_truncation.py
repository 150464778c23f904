"""Responses cut at the length limit (ml.stages._responses): sampling says how each ended, training leaves the cut
ones out by default (``drop_truncated``, counted as ``n_truncated_dropped``) and never appends EOS to one it keeps,
and sample sets report ``truncated_rate``. Real stages on tiny models."""

from __future__ import annotations

import pytest

from ml.io import read_jsonl, write_jsonl
from ml.reporter import RecordingReporter
from ml.stages._responses import truncated_rate
from ml.stages.dpo import DPOStageConfig, load_preferences
from ml.stages.self_sample import SelfSampleConfig, self_sample
from ml.stages.sft import SFTStageConfig, load_encoded_pairs, sft
from tests.ml._stage_fixtures import PROMPTS, save_tiny

TRAIN = {"max_steps": 1, "per_device_train_batch_size": 2, "learning_rate": 1e-3}
# Six samples: two cut at the limit, one with no finish reason (a user's data: counts as complete).
FINISH = ["eos", "length", "stop_string", "length", "eos", None]


@pytest.fixture(scope="module")
def strong(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("m") / "strong", seed=3)


def _samples(path) -> str:
    rows = []
    for i, (p, f) in enumerate(zip(PROMPTS, FINISH)):
        row = {"index": i, "prompt": p, "response": f"good answer {i}"}
        if f is not None:
            row["finish_reason"] = f
        rows.append(row)
    write_jsonl(path, rows)
    return str(path)


def test_sft_leaves_cut_responses_out_and_never_ends_a_kept_one_with_eos(strong, tmp_path):
    data = _samples(tmp_path / "s.jsonl")
    rep = RecordingReporter()
    out = sft(SFTStageConfig(model=strong, output_dir=str(tmp_path / "sft"), data=data, **TRAIN), rep)
    assert out["n_examples"] == 4 and out["n_truncated_dropped"] == 2
    assert [m for m in rep.of("log") if m.startswith("sft: dropped 2 of 6 rows cut at the length limit")]

    keep = SFTStageConfig(model=strong, output_dir="o", data=data, drop_truncated=False)
    _, tok, encoded, dropped = load_encoded_pairs(keep, "sft", RecordingReporter())
    assert dropped == {"n_empty_dropped": 0, "n_truncated_dropped": 0} and len(encoded) == 6
    ends_with_eos = [c[-1] == tok.eos_token_id for _, c in encoded]
    assert ends_with_eos == [f != "length" for f in FINISH]  # EOS only where the response ended by itself


def test_dpo_drops_a_pair_with_a_cut_side_and_says_how_many(strong, tmp_path):
    chosen = _samples(tmp_path / "cd.jsonl")
    own = [{"index": i, "prompt": p, "response": "bad b", "finish_reason": "eos"} for i, p in enumerate(PROMPTS)]
    own[0]["finish_reason"] = "length"  # the strong model's own sample was cut where CD's was not
    write_jsonl(tmp_path / "own.jsonl", own)
    cfg = DPOStageConfig(model=strong, output_dir="o", chosen_data=chosen, rejected_data=str(tmp_path / "own.jsonl"))
    rows, dropped = load_preferences(cfg)
    assert dropped["n_truncated_dropped"] == 3 and [r["index"] for r in rows] == [2, 4, 5]
    assert rows[0]["chosen_finish_reason"] == "stop_string" and rows[0]["rejected_finish_reason"] == "eos"
    cfg.drop_truncated = False
    rows, dropped = load_preferences(cfg)
    assert dropped["n_truncated_dropped"] == 0 and len(rows) == 6


def test_sampling_records_how_each_response_ended(strong, tmp_path):
    """One new token cannot hold a finished answer from a tiny model that rarely says EOS at once: each row says
    whether it ended or was cut, and the stage reports the share cut."""
    prompts = tmp_path / "p.jsonl"
    write_jsonl(prompts, [{"prompt": p} for p in PROMPTS])
    out = self_sample(
        SelfSampleConfig(model=strong, prompts=str(prompts), output_dir=str(tmp_path / "ss"), max_new_tokens=1)
    )
    rows = read_jsonl(tmp_path / "ss" / "samples.jsonl")
    assert {r["finish_reason"] for r in rows} <= {"eos", "length"}
    assert out["truncated_rate"] == truncated_rate(rows) == sum(r["finish_reason"] == "length" for r in rows) / 6
    assert out["truncated_rate"] > 0
    assert truncated_rate([{"response": "x"}]) is None  # nothing said how it ended: unknown, not zero
