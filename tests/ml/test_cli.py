from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from ml.cli import build_parser, main, stage_config
from ml.io import read_jsonl, write_jsonl
from tests.ml._stage_fixtures import tiny_config

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _py(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "ml", *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout
    )


def test_help_explains_commands():
    out = _py("--help")
    assert out.returncode == 0
    for word in ("generate", "run", "score", "stage", "examples:", "Contrastive"):
        assert word in out.stdout
    sub = _py("run", "--help")
    assert sub.returncode == 0 and "results.json" in sub.stdout


def test_every_subcommand_has_help(capsys):
    parser = build_parser()
    choices = parser._subparsers._group_actions[0].choices
    assert {"generate", "run", "score", "stage", "golds"} <= set(choices)
    for name in choices:
        assert choices[name].format_help()


def test_run_tiny_config_subprocess(tmp_path):
    cfg = tiny_config(tmp_path, methods=["strong_base", "weak_sft", "cong_s"])
    # The test gold is registered in this process only; the subprocess gets it from a sitecustomize
    # module put first on its PYTHONPATH (Python imports it at start-up).
    plug = tmp_path / "plug"
    plug.mkdir()
    (plug / "sitecustomize.py").write_text(
        "from ml.gold import GoldReward, register\n"
        "register('test:count_a', lambda: GoldReward(name='test:count_a', "
        "score=lambda p, r: float(r.split().count('a'))))\n"
    )
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    env = {**ENV, "PYTHONPATH": f"{plug}{os.pathsep}{ROOT}"}
    out = subprocess.run(
        [sys.executable, "-m", "ml", "run", str(tmp_path / "cfg.yaml"), "--quiet"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "| ConG-S |" in out.stdout and "| WeakSFT |" in out.stdout
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert set(res["methods"]) == {"strong_base", "weak_sft", "cong_s"}


def test_score_gold_and_implicit(tmp_path, tiny_pair_dirs, capsys):
    write_jsonl(tmp_path / "s.jsonl", [{"prompt": "the cat", "response": "a a"}, {"prompt": "the", "response": "a"}])
    rc = main(
        [
            "score",
            "--input",
            str(tmp_path / "s.jsonl"),
            "--gold",
            "test:count_a",
            "--aligned",
            tiny_pair_dirs["aligned"],
            "--base",
            tiny_pair_dirs["base"],
            "--out",
            str(tmp_path / "o.jsonl"),
        ]
    )
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["gold"]["mean"] == 1.5 and summary["n"] == 2
    rows = read_jsonl(tmp_path / "o.jsonl")
    assert all("implicit_sum" in r and "gold" in r for r in rows)
    assert main(["score", "--input", str(tmp_path / "s.jsonl")]) == 2  # nothing to score with


def test_generate_and_stage_commands(tmp_path, tiny_pair_dirs, tiny_prompts_file, capsys):
    rc = main(
        [
            "generate",
            "--aligned",
            tiny_pair_dirs["aligned"],
            "--base",
            tiny_pair_dirs["base"],
            "--prompts",
            tiny_prompts_file,
            "--out",
            str(tmp_path / "cd"),
            "--max-new-tokens",
            "5",
            "--quiet",
        ]
    )
    assert rc == 0
    assert len(read_jsonl(tmp_path / "cd" / "samples.jsonl")) == 6
    capsys.readouterr()
    (tmp_path / "sft.yaml").write_text(
        yaml.safe_dump(
            {
                "model": tiny_pair_dirs["aligned"],
                "output_dir": "sft",
                "data": "cd/samples.jsonl",
                "max_steps": 1,
                "drop_truncated": False,  # the tiny models' samples are cut at the limit (tests/ml/test_truncation.py)
            }
        )
    )
    assert main(["stage", "sft", "--config", str(tmp_path / "sft.yaml"), "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 1
    assert (tmp_path / "sft" / "model" / "config.json").exists()


def test_bad_stage_config_is_one_clear_error(tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"model": "m", "output_dir": "o", "data": "d", "typo": 1}))
    assert main(["stage", "sft", "--config", str(tmp_path / "bad.yaml")]) == 2
    assert "typo" in capsys.readouterr().err


def test_stage_config_resolves_paths(tmp_path):
    cfg = stage_config("evaluate", {"output_dir": "ev", "gold": "g", "samples": "s.jsonl"}, base_dir=tmp_path)
    assert cfg.samples == str((tmp_path / "s.jsonl").resolve())


def test_golds_lists_the_registered_ones_and_says_how_to_name_a_reward_model(capsys):
    assert main(["golds"]) == 0
    out = capsys.readouterr().out
    assert "toy:review" in out and "toy:review:proxy" in out and "rm:<folder>" in out
