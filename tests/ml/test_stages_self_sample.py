from __future__ import annotations

import pytest

from ml.io import read_jsonl
from ml.reporter import RecordingReporter
from ml.stages.self_sample import SelfSampleConfig, self_sample
from tests.ml._stage_fixtures import PROMPTS, save_tiny, write_prompts


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("m") / "strong", seed=5)


def test_self_sample_writes_one_response_per_prompt_and_resumes(model, tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl")

    def cfg(out):
        return SelfSampleConfig(
            model=model, prompts=prompts, output_dir=str(tmp_path / out), batch_size=4, max_new_tokens=5, seed=3
        )

    full = self_sample(cfg("a"))
    rows = read_jsonl(tmp_path / "a" / "samples.jsonl")
    assert [r["index"] for r in rows] == list(range(len(PROMPTS)))
    assert [r["prompt"] for r in rows] == PROMPTS and full["n_samples"] == len(PROMPTS)
    assert self_sample(cfg("a")) == full
    part = self_sample(cfg("b"), RecordingReporter(stop_after=1))
    assert part["stopped"] is True and part["n_prompts"] == 4
    self_sample(cfg("b"))
    assert read_jsonl(tmp_path / "b" / "samples.jsonl") == rows


def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match="temperature"):
        SelfSampleConfig(model="m", prompts="p", output_dir=str(tmp_path), temperature=0)
