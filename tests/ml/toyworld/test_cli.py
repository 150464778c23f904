"""The toyworld subcommands are registered in ``python -m ml`` and parse."""

from ml.cli import build_parser


def test_toyworld_subcommands_parse():
    p = build_parser()
    a = p.parse_args(["toyworld", "build", "--world", "sort", "--seed", "2", "--size", "tiny"])
    assert a.world == ["sort"] and a.seed == 2 and callable(a.func)
    a = p.parse_args(["toyworld", "report", "--seeds", "1", "--out", "x", "--worlds", "review", "sort"])
    assert a.worlds == ["review", "sort"] and a.seeds == 1
    a = p.parse_args(["toyworld", "diagnose", "--world", "review"])
    assert a.world == "review" and a.n == 2


def test_build_cli_tiny(tmp_path, capsys):
    from ml.cli import main

    assert main(["toyworld", "build", "--world", "sort", "--size", "tiny", "--data-dir", str(tmp_path), "--quiet"]) == 0
    assert "manifest.json" in capsys.readouterr().out


def test_diagnose_cli_on_any_weak_pair(tiny_review, capsys):
    import json

    from ml.cli import main

    m = tiny_review
    rc = main(
        [
            "toyworld",
            "diagnose",
            "--aligned",
            m["models"]["weak_aligned"],
            "--base",
            m["models"]["weak_base"],
            "--prompts",
            m["prompts"]["heldout"],
            "--gold",
            m["gold"],
            "--n-prompts",
            "4",
            "--n",
            "1",
            "--max-new-tokens",
            "8",
            "--device",
            "cpu",
            "--json",
            "--quiet",
        ]
    )
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["verdict"] in ("raises", "no_gain", "lowers") and out["message"].startswith("CD ")
