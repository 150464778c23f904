"""`python -m ml job KIND`: flags derived from the registry, checked like a web request, run by ml.execute."""

from __future__ import annotations

import json

from ml.cli import build_parser, main
from ml.execution import SETTINGS as EXECUTION
from ml.io import read_jsonl
from ml.job_cli import setting_flags
from ml.spec import registry, settable, top_settable


def _flags(kind: str) -> set[str]:
    sub = next(a for a in build_parser()._actions if getattr(a, "choices", None) and "job" in a.choices)
    job = sub.choices["job"]
    kinds = next(a for a in job._actions if getattr(a, "choices", None) and kind in a.choices)
    return {o for a in kinds.choices[kind]._actions for o in a.option_strings if not o.startswith("--no-")}


def test_every_setting_of_every_kind_is_a_flag():
    for kind, ks in registry().items():
        want = {"--" + k.replace("_", "-") for k in ks.knobs}
        if ks.pipeline:
            want |= {"--" + k.replace("_", "-") for k in top_settable()}
        for stage, st in ks.stages.items():
            want |= {f"--{stage}.{f.replace('_', '-')}" for f in settable(st)}
        want |= {f"--{name}" for name, s in EXECUTION.items() if kind in s.kinds}  # ml.execution
        got = _flags(kind)
        assert want <= got, (kind, sorted(want - got))
        extra = (
            got
            - want
            - {
                "-h",
                "--help",
                "--weak-base",
                "--weak-aligned",
                "--strong",
                "--prompts",
                "--eval-prompts",
                "--gold",
                "--out",
                "--alpha",
                "--methods",
                "--method",
                "--alphas",
                "--quiet",
            }
        )
        assert not extra, (kind, extra)  # no hand-declared setting beside the derived ones
        assert len(setting_flags(kind)) == len(set(setting_flags(kind).values()))


def _cd_job(dirs: dict[str, str], prompts: str, out) -> list[str]:
    """`python -m ml job cd_generate` on the tiny pair, quiet, into out."""
    pair = ["--weak-base", dirs["base"], "--weak-aligned", dirs["aligned"]]
    return ["job", "cd_generate", *pair, "--prompts", prompts, "--out", str(out), "--quiet"]


def test_job_cd_generate_runs_and_a_bad_setting_is_refused(tmp_path, tiny_pair_dirs, tiny_prompts_file, capsys):
    args = _cd_job(tiny_pair_dirs, tiny_prompts_file, tmp_path)
    assert main([*args, "--cd_generate.temperature", "-1"]) == 2
    assert "cd_generate.temperature" in capsys.readouterr().out
    assert main([*args, "--max-new-tokens", "3", "--cd_generate.batch-size", "2", "--no-do-sample"]) == 0
    summary = json.loads(capsys.readouterr().out)
    rows = read_jsonl(tmp_path / "cd_generate" / "samples.jsonl")
    assert summary["samples"].endswith("cd_generate/samples.jsonl") and len(rows) == 6
    assert all(r["n_tokens"] <= 3 for r in rows)


def test_job_shards_runs_each_shard_here_and_matches_one_run(tmp_path, tiny_pair_dirs, tiny_prompts_file, capsys):
    def run(out, *extra):
        args = _cd_job(tiny_pair_dirs, tiny_prompts_file, out)
        return main([*args, "--max-new-tokens", "4", "--cd_generate.batch-size", "2", *extra])

    assert run(tmp_path / "bad", "--shards", "0") == 2
    assert "params.shards: must be" in capsys.readouterr().out
    assert run(tmp_path / "one") == 0
    capsys.readouterr()
    assert run(tmp_path / "three", "--shards", "3") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["shards"] == 3 and (tmp_path / "three" / "cd_generate" / "shards" / "2-of-3" / "DONE.json").exists()
    assert read_jsonl(tmp_path / "three" / "cd_generate" / "samples.jsonl") == read_jsonl(
        tmp_path / "one" / "cd_generate" / "samples.jsonl"
    )
