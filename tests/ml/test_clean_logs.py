"""Issue 18: logs are clean when stderr is not a terminal (CI, a worker's log file, ``python -m ml ... 2> log``):
no carriage returns or cursor escapes from progress bars (ours, transformers', datasets', TRL's), no known harmless
library warnings, and progress still shows, as plain lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ml.reporter import ConsoleReporter
from tests.ml._stage_fixtures import save_tiny, write_prefs

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # one DPO stage in a fresh interpreter (imports torch, transformers, TRL)
def test_python_m_ml_writes_plain_lines_and_no_known_warnings_to_a_pipe(tmp_path):
    # DPO shows everything at once: transformers loads and saves a model, datasets maps the preference pairs,
    # TRL computes the reference log-probs with its own bar and reads a deprecated transformers property.
    (tmp_path / "dpo.yaml").write_text(
        yaml.safe_dump(
            {
                "model": save_tiny(tmp_path / "model", seed=1),
                "output_dir": "dpo",
                "data": write_prefs(tmp_path / "prefs.jsonl"),
                "max_steps": 2,
            }
        )
    )
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for name in ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS"):
        env.pop(name, None)  # what the entry point must set itself
    out = subprocess.run(
        [sys.executable, "-m", "ml", "stage", "dpo", "--config", str(tmp_path / "dpo.yaml")],
        cwd=ROOT,
        env=env,
        capture_output=True,  # stderr is a pipe, as in CI or `2> log`
        timeout=300,
    )
    err = out.stderr.decode()
    assert out.returncode == 0, err[-3000:]
    assert json.loads(out.stdout)["steps"] == 2
    assert "\r" not in err and "\x1b[" not in err, err[-3000:]
    assert "FutureWarning" not in err, err
    lines = err.splitlines()
    # Progress as lines: the stage's first report and its end ("[12:00:00] dpo: 2/2"), and its log.
    assert any(line.endswith("] dpo: 2/2") or "] dpo: 2/2 (" in line for line in lines), err
    assert any("dpo: training finished at step 2/2" in line for line in lines), err


def test_console_reporter_off_a_terminal_writes_a_line_at_the_start_at_most_every_interval_and_at_the_end(capsys):
    rep = ConsoleReporter(line_every=3600)  # pytest's captured stderr is not a terminal
    assert rep.lines
    rep.progress("gen", 0, 100)
    for done in range(10, 101, 10):
        rep.metric("gen/loss", done / 1000)
        rep.progress("gen", done, 100)
    rep.log("done")
    err = capsys.readouterr().err
    assert "\r" not in err and "\x1b[" not in err
    body = [line.split("] ", 1)[1] for line in err.splitlines()]
    # 0/100 at the start, nothing in between (the interval has not passed), 100/100 at the end with the metric
    # the stage reported last riding on it instead of a line of its own per step.
    assert body == ["gen: 0/100", "gen: 100/100 (loss=0.1)", "done"]
    # A stage run again (a resume) starts with a line again.
    rep.progress("gen", 50, 100)
    assert capsys.readouterr().err.split("] ", 1)[1] == "gen: 50/100\n"


def test_console_reporter_with_no_interval_writes_every_report_and_quiet_writes_nothing(capsys):
    rep = ConsoleReporter(line_every=0)
    for done in (1, 2, 3):
        rep.progress("sft", done, 3)
    assert [line.split("] ", 1)[1] for line in capsys.readouterr().err.splitlines()] == [
        "sft: 1/3",
        "sft: 2/3",
        "sft: 3/3",
    ]
    quiet = ConsoleReporter(quiet=True, line_every=0)
    quiet.progress("sft", 1, 3)
    quiet.metric("x", 1.0)
    quiet.log("hello")
    assert capsys.readouterr().err == ""
