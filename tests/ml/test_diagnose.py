"""The generic pre-flight diagnostic (ml.diagnose) on tiny models: any weak pair, any gold, the verdict in
plain language, the CLI; the toy world uses the same code."""

from __future__ import annotations

import json

import pytest

from ml import diagnose
from ml.cli import main
from ml.gold import GoldReward
from ml.reporter import RecordingReporter
from tests.ml._stage_fixtures import count_a  # noqa: F401  (registers test:count_a)

from .conftest import TINY_PROMPTS


def _check(out: dict, n_rows: int) -> None:
    assert out["verdict"] in (diagnose.RAISES, diagnose.NO_GAIN, diagnose.LOWERS)
    assert out["message"].startswith(("CD raises gold reward here", "CD does not raise gold reward here"))
    assert [c["alpha"] for c in out["sweep"]["cd"]] == [0.0, 0.4, 1.0]
    assert out["sweep"]["plain_post"]["n"] == n_rows and out["sweep"]["pre"]["n"] == n_rows
    lo, hi = out["gold_gain_ci"]
    assert lo <= out["gold_gain"] <= hi


def test_preflight_on_a_loaded_pair_with_a_custom_gold(tiny_pair):
    gold = GoldReward(name="len", score=lambda p, r: float(len(r.split())))
    rep = RecordingReporter()
    out = diagnose.preflight(
        tiny_pair.aligned,
        tiny_pair.base,
        tiny_pair.tokenizer,
        TINY_PROMPTS[:4],
        gold,
        alphas=(0.0,),
        n=2,
        max_new_tokens=6,
        reporter=rep,
    )
    _check(out, 8)
    assert rep.of("progress")[-1] == (diagnose.SWEEP_STAGE, 3, 3)
    # The gold reward's own numbers: plain pi_post's mean is the mean response length in words.
    assert 0.0 <= out["sweep"]["plain_post"]["gold_mean"] <= 6.0


def test_preflight_stops_when_asked(tiny_pair):
    out = diagnose.preflight(
        tiny_pair.aligned,
        tiny_pair.base,
        tiny_pair.tokenizer,
        TINY_PROMPTS[:2],
        "test:count_a",
        n=1,
        max_new_tokens=4,
        reporter=RecordingReporter(stop_after=1),
    )
    assert out["stopped"] is True and "verdict" not in out


@pytest.mark.parametrize(
    "kw,needle",
    [
        (dict(prompts=[]), "at least one prompt"),
        (dict(prompts="the cat"), "list"),
        (dict(alphas=(1.5,)), "alphas"),
        (dict(n=0), "n (samples"),
    ],
)
def test_preflight_rejects_bad_input(tiny_pair, kw, needle):
    args = dict(prompts=TINY_PROMPTS[:2], alphas=(0.0,), n=1)
    args.update(kw)
    with pytest.raises(ValueError, match=needle.replace("(", r"\(")):
        diagnose.preflight(
            tiny_pair.aligned,
            tiny_pair.base,
            tiny_pair.tokenizer,
            args.pop("prompts"),
            "test:count_a",
            max_new_tokens=4,
            **args,
        )


def test_preflight_dirs_and_cli(tiny_pair_dirs, tiny_prompts_file, capsys):
    out = diagnose.preflight_dirs(
        tiny_pair_dirs["aligned"],
        tiny_pair_dirs["base"],
        tiny_prompts_file,
        "test:count_a",
        n_prompts=3,
        device="cpu",
        alphas=(0.0,),
        n=2,
        max_new_tokens=5,
    )
    _check(out, 6)
    assert out["gold"] == "test:count_a" and out["n_prompts"] == 3
    argv = [
        "diagnose",
        "--aligned",
        tiny_pair_dirs["aligned"],
        "--base",
        tiny_pair_dirs["base"],
        "--prompts",
        tiny_prompts_file,
        "--gold",
        "test:count_a",
        "--alphas",
        "0,0.4,1",
        "--n",
        "2",
        "--n-prompts",
        "3",
        "--max-new-tokens",
        "5",
        "--device",
        "cpu",
        "--quiet",
    ]
    assert main(argv) == 0
    line = capsys.readouterr().out.strip()
    assert line.split(":")[0] in ("raises", "no_gain", "lowers") and "gold reward here" in line
    assert main([*argv, "--json"]) == 0
    as_json = json.loads(capsys.readouterr().out)
    assert as_json["verdict"] == out["verdict"] and as_json["message"] == out["message"]  # same seed, same answer
    assert main([*argv, "--gold", "nope:none"]) == 2  # unknown gold: one clear line, no traceback
    assert "nope:none" in capsys.readouterr().err


def test_toy_world_uses_the_generic_code():
    from ml.toyworld import diagnose as toy

    assert toy.preflight is diagnose.preflight and toy.verdict is diagnose.verdict
