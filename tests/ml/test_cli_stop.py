"""The CLI's stop contract (ml/cli.py, README): a command that was asked to stop exits 3 and leaves a
resumable output folder; the same command run again finishes from there and exits 0.

The stop request comes through the reporter every command gets from ``ml.cli.console_reporter``: here a
RecordingReporter that asks to stop after the first batch's progress report.
"""

from __future__ import annotations

import json

import pytest

import ml.cli
from ml.cli import main
from ml.io import read_jsonl
from ml.reporter import RecordingReporter
from tests.ml.conftest import TINY_PROMPTS


@pytest.fixture
def reporters(monkeypatch):
    """Make console_reporter hand out the next reporter of the list (each call records what it gets)."""
    queue: list[RecordingReporter] = []
    given: list[RecordingReporter] = []

    def fake(args):
        rep = queue.pop(0)
        given.append(rep)
        return rep

    monkeypatch.setattr(ml.cli, "console_reporter", fake)
    return queue, given


def _generate(pair, prompts, out) -> list[str]:
    return [
        "generate",
        "--aligned",
        pair["aligned"],
        "--base",
        pair["base"],
        "--prompts",
        prompts,
        "--out",
        str(out),
        "--max-new-tokens",
        "4",
        "--batch-size",
        "2",
    ]


def test_generate_stopped_exits_3_and_resumes_to_0(tmp_path, tiny_pair_dirs, tiny_prompts_file, reporters, capsys):
    queue, given = reporters
    out = tmp_path / "cd"
    argv = _generate(tiny_pair_dirs, tiny_prompts_file, out)
    queue.append(RecordingReporter(stop_after=1))  # stop once the first batch is written
    assert main(argv) == 3
    summary = json.loads(capsys.readouterr().out)
    assert summary["stopped"] is True and summary["n"] == 2 and summary["total"] == len(TINY_PROMPTS)
    # Resumable: the first batch is on disk, nothing marks the folder done.
    first = read_jsonl(out / "samples.jsonl")
    assert len(first) == 2 and not (out / "DONE.json").exists()
    assert given[0].should_stop() and [p[1] for p in given[0].of("progress")] == [2]

    queue.append(RecordingReporter())  # never asks to stop
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert "stopped" not in summary and summary["n"] == len(TINY_PROMPTS)
    assert (out / "DONE.json").exists()
    rows = read_jsonl(out / "samples.jsonl")
    assert sorted(r["index"] for r in rows) == list(range(len(TINY_PROMPTS)))
    # It resumed: the rows written before the stop are kept as they were, only the rest were generated.
    by_index = {r["index"]: r for r in rows}
    assert all(by_index[r["index"]] == r for r in first)
    assert [p[1] for p in given[1].of("progress")] == [4, 6]

    # Done is done: a third run returns the finished folder at once (exit 0, nothing regenerated).
    queue.append(RecordingReporter(stop_after=0))  # would stop at once if anything were left to do
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["n"] == len(TINY_PROMPTS)
    assert read_jsonl(out / "samples.jsonl") == rows


def test_stage_command_stopped_exits_3_too(tmp_path, tiny_pair_dirs, tiny_prompts_file, reporters, capsys):
    """``python -m ml stage cd_generate`` (the generic stage runner) keeps the same contract."""
    import yaml

    queue, _ = reporters
    (tmp_path / "g.yaml").write_text(
        yaml.safe_dump(
            {
                "aligned": tiny_pair_dirs["aligned"],
                "base": tiny_pair_dirs["base"],
                "prompts": tiny_prompts_file,
                "output_dir": "g",
                "max_new_tokens": 4,
                "batch_size": 2,
            }
        )
    )
    argv = ["stage", "cd_generate", "--config", str(tmp_path / "g.yaml")]
    queue.append(RecordingReporter(stop_after=1))
    assert main(argv) == 3
    assert json.loads(capsys.readouterr().out)["stopped"] is True
    assert not (tmp_path / "g" / "DONE.json").exists()
    queue.append(RecordingReporter())
    assert main(argv) == 0
    assert (tmp_path / "g" / "DONE.json").exists()
    assert len(read_jsonl(tmp_path / "g" / "samples.jsonl")) == len(TINY_PROMPTS)
