"""``python -m ml toyworld build|report|diagnose``: the toy world from a terminal.

Registered by ml.cli (it imports this module and calls ``add_parser(subparsers)``)."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Callable
from typing import Any

from ml.cli import console_reporter, setup_torch_threads


def _cmd_build(args: argparse.Namespace) -> int:
    setup_torch_threads()
    from .build import build

    worlds = args.world or ["review", "review_balanced", "sort"]
    for w in worlds:
        m = build(w, args.seed, args.data_dir, reporter=console_reporter(args), size=args.size, device=args.device)
        if m.get("stopped"):
            return 1
        print(f"{w}: {m['root']}/manifest.json")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    setup_torch_threads()
    from .report import ReportConfig, report

    kw: dict[str, Any] = {}
    if args.worlds:
        kw["worlds"] = args.worlds
    if args.alphas:
        kw["alphas"] = [float(a) for a in args.alphas.split(",")]
    cfg = ReportConfig(
        out=args.out,
        seeds=args.seeds,
        data_dir=args.data_dir,
        size=args.size,
        n_samples=args.n_samples,
        filtered=not args.no_filtered,
        strong=not args.no_strong,
        device=args.device,
        jobs=args.jobs,
        **kw,
    )
    res = report(cfg, console_reporter(args), command="python -m ml " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
    if res.get("stopped"):
        return 1
    print(f"{args.out}/REPORT.md")
    return 0


def _cmd_diagnose(args: argparse.Namespace) -> int:
    setup_torch_threads()
    from .diagnose import preflight, preflight_world

    if args.world:
        out = preflight_world(
            args.world,
            args.seed,
            args.data_dir,
            size=args.size,
            n_prompts=args.n_prompts,
            n=args.n,
            reporter=console_reporter(args),
        )
    else:
        if not (args.aligned and args.base and args.prompts and args.gold):
            print("error: give --world, or all of --aligned, --base, --prompts and --gold", file=sys.stderr)
            return 2
        from ml.io import read_prompts
        from ml.modeling import load_causal_lm, load_tokenizer

        aligned = load_causal_lm(args.aligned, device=args.device)
        base = load_causal_lm(args.base, device=args.device)
        out = preflight(
            aligned,
            base,
            load_tokenizer(args.aligned),
            read_prompts(args.prompts, args.n_prompts),
            args.gold,
            n=args.n,
            max_new_tokens=args.max_new_tokens,
            reporter=console_reporter(args),
        )
    if out.get("stopped"):
        return 1
    if args.json:
        print(json.dumps(out, indent=2, default=str))
    else:
        print(out["message"])
    return 0


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "toyworld",
        help="the offline toy benchmark: build worlds, run the report, diagnose",
        description="Tiny deterministic worlds where ConG's claims are checked in minutes on a CPU (docs/TOYWORLD.md).",
    )
    sub = p.add_subparsers(dest="toyworld_command", metavar="ACTION")

    def common(q: argparse.ArgumentParser, world_multi: bool) -> None:
        q.add_argument("--data-dir", default=None, help="build cache (default: $CONGWEB_DATA_DIR or ./var/data)")
        q.add_argument(
            "--size", default="default", choices=("default", "tiny"), help="'tiny' builds in seconds, for tests only"
        )
        q.add_argument("--device", default=None, help="cpu, cuda, ... (default: CUDA when present)")
        q.add_argument("--quiet", action="store_true", help="no progress output")

    b = sub.add_parser("build", help="build (or reuse) a world's models and prompt files; prints manifest paths")
    b.add_argument(
        "--world",
        action="append",
        choices=("review", "review_balanced", "sort"),
        help="world to build (repeatable; default: all three)",
    )
    b.add_argument("--seed", type=int, default=0)
    common(b, True)
    b.set_defaults(func=_cmd_build)

    r = sub.add_parser(
        "report", help="alpha sweeps and the strong-model table over seeds -> report.json, REPORT.md, plots"
    )
    r.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    r.add_argument("--out", required=True, help="output folder")
    r.add_argument("--worlds", nargs="+", choices=("review", "review_balanced", "sort"), help="default: all")
    r.add_argument("--alphas", default=None, help="comma-separated CD alphas (default 0,0.2,...,1.0)")
    r.add_argument("--n-samples", type=int, default=3, help="samples per held-out prompt in the sweep")
    r.add_argument("--no-filtered", action="store_true", help="skip ConG with the implicit-reward DPO filter")
    r.add_argument("--no-strong", action="store_true", help="only the weak-pair sweep, no strong-model table")
    r.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="world/seed runs in parallel processes (2 on a 2-core CPU nearly halves the time)",
    )
    common(r, True)
    r.set_defaults(func=_cmd_report)

    d = sub.add_parser("diagnose", help="pre-flight check of a weak pair: does CD raise gold reward here?")
    d.add_argument("--world", choices=("review", "review_balanced", "sort"), help="a toy world's weak pair")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--aligned", help="pi_post folder (instead of --world)")
    d.add_argument("--base", help="pi_pre folder (instead of --world)")
    d.add_argument("--prompts", help="held-out prompt JSONL (instead of --world)")
    d.add_argument("--gold", help="registered gold name (instead of --world), e.g. toy:review")
    d.add_argument("--max-new-tokens", type=int, default=64)
    d.add_argument("--n-prompts", type=int, default=200)
    d.add_argument("--n", type=int, default=2, help="samples per prompt")
    d.add_argument("--json", action="store_true", help="print the full result as JSON")
    common(d, False)
    d.set_defaults(func=_cmd_diagnose)
    p.set_defaults(func=_show_help(p))


def _show_help(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    """The action of a bare ``python -m ml <command>``: print its help, exit status 2."""

    def show(args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    return show
