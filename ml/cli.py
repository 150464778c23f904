"""``python -m ml``: the ML core from a terminal (no web app needed).

Subcommands are registered from modules: each has ``add_parser(subparsers)`` that adds its parser and
sets ``func`` (a callable taking the parsed args and returning an exit code). The built-in ones live
here; other packages plug in by being listed in ``PLUGINS`` (skipped when not installed).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ml.job_cli import add_parser as _add_job
from ml.memory import add_parser as _add_memory
from ml.spec import DEFAULT_ALPHA, registry
from ml.spec_schema import add_stage_flags, stage_values
from ml.stage_cli import add_distributed_arg, stage_config
from ml.stage_cli import add_parser as _add_stage

if TYPE_CHECKING:  # both are imported when a command runs, not at import (keeps `--help` fast)
    from ml.pipeline import PipelineConfig
    from ml.reporter import ConsoleReporter

# Modules that add subcommands when importable (toy worlds, offline model installs).
PLUGINS = ["ml.toyworld.cli", "ml.offline.cli"]

DESCRIPTION = """\
congweb's ML core: Contrastive Weak-to-Strong Generalization (ConG) from the command line.

A weak model before alignment (pi_pre, "base") and after it (pi_post, "aligned") define an implicit
reward log pi_post/pi_pre. Contrastive decoding (CD) samples responses that score high on it; ConG
trains a strong model on those samples. See docs/ML.md for file formats and a walk-through."""

EPILOG = """\
examples:
  python -m ml generate --aligned models/post --base models/pre --prompts prompts.jsonl --out runs/cd
  python -m ml run configs/toy.yaml            # the whole experiment, resumable; prints a results table
  python -m ml score --input runs/cd/samples.jsonl --gold toy:review --aligned models/post --base models/pre
  python -m ml stage sft --config sft.yaml     # one stage on its own
  python -m ml golds                           # list the gold rewards you can name
  python -m ml spec cong                       # every setting a job kind takes (type, default, help)
  python -m ml job cd_generate --weak-base models/pre --weak-aligned models/post --prompts p.jsonl --out runs/j
  python -m ml diagnose --aligned models/post --base models/pre --prompts heldout.jsonl --gold toy:review

Every command that writes a folder can be rerun: finished stages are skipped, unfinished ones resume."""


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, ensure_ascii=False, default=str))


# Shared by every subcommand, the plugins' too (ml.toyworld.cli, ml.offline.cli import them from here).


def console_reporter(args: argparse.Namespace) -> ConsoleReporter:
    """Progress and logs on the console; ``--quiet`` hides them."""
    from ml.reporter import ConsoleReporter

    return ConsoleReporter(quiet=getattr(args, "quiet", False))


def setup_torch_threads() -> None:
    """torch's CPU thread settings, imported only when a command runs (keeps ``--help`` fast)."""
    from ml.modeling import setup_cpu_threads

    setup_cpu_threads()


def run_pipeline_and_print(cfg: PipelineConfig, args: argparse.Namespace) -> int:
    """Run (or resume) a pipeline and print its results table; exit code 3 when it was stopped."""
    from ml.distributed import DEFAULT_MODE, training_runner
    from ml.pipeline import run
    from ml.results import results_markdown

    training = training_runner(getattr(args, "nproc", 1), getattr(cfg, "distributed", DEFAULT_MODE))
    res = run(cfg, console_reporter(args), training=training)
    if res.get("stopped"):
        print(f"stopped during {res['stage']}; run the same command again to resume", file=sys.stderr)
        return 3
    print(results_markdown(res))
    return 0


# ---------------------------------------------------------------------------------------------- generate


def _add_generate(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "generate",
        help="contrastive-decoding samples for a prompt file",
        description="Sample one CD response per prompt from the weak pair (pi_post, pi_pre) into "
        "OUT/samples.jsonl. Resumes if interrupted; a finished folder is returned as is.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--aligned", required=True, help="pi_post: the aligned weak model's folder")
    p.add_argument("--base", required=True, help="pi_pre: the weak base model's folder (same tokenizer)")
    p.add_argument("--prompts", required=True, help='JSONL file, one {"prompt": ...} per line')
    p.add_argument("--out", required=True, help="output folder (samples.jsonl, DONE.json)")
    p.add_argument("--alpha", type=float, default=DEFAULT_ALPHA, help="1 = plain pi_post sampling, 0 = pure log-ratio")
    # Every other setting is a flag derived from the stage's dataclasses (ml.spec_schema), as the web form and
    # the REST schema are: --relative-top, --temperature, --batch-size, --no-do-sample (greedy), ...
    p.set_defaults(stage_settings=add_stage_flags(p, registry()["cd_generate"], "cd_generate"))
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA when present)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_generate)


def _cmd_generate(args: argparse.Namespace) -> int:
    from ml.resolve import make
    from ml.stages.generate import CDGenerateConfig, cd_generate

    cfg = make(
        CDGenerateConfig,
        {
            "aligned": args.aligned,
            "base": args.base,
            "prompts": args.prompts,
            "output_dir": args.out,
            "device": args.device,
            "alpha": args.alpha,
            **stage_values(args, args.stage_settings),
        },
    )
    summary = cd_generate(cfg, console_reporter(args))
    _print_json(summary)
    return 3 if summary.get("stopped") else 0


# ---------------------------------------------------------------------------------------------- run


def _add_run(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "run",
        help="run (or resume) the whole ConG experiment from a YAML config",
        description="Weak alignment (if needed), CD and plain generation, ConG-S, ConG, WeakSFT, "
        "WSPO, AuxConf, then evaluation of every method with the gold reward. Writes "
        "OUTPUT_DIR/results.json and results.md. Paths in the YAML are relative to it. "
        "See docs/ML.md for every setting.",
    )
    p.add_argument("config", help="pipeline YAML file")
    p.add_argument("--output-dir", default=None, help="override output_dir from the config")
    p.add_argument("--device", default=None, help="override device (cpu, cuda)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or logs")
    p.add_argument(
        "--nproc",
        type=int,
        default=1,
        help="run each training stage as this many processes (torch.distributed; one per GPU); generation and "
        "evaluation stay in this process (docs/SCALING.md)",
    )
    add_distributed_arg(p)
    p.set_defaults(func=_cmd_run)


def _cmd_run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from ml.pipeline import PipelineConfig

    cfg = PipelineConfig.from_yaml(args.config)
    if args.output_dir:
        cfg = replace(cfg, output_dir=str(Path(args.output_dir).resolve()))
    if args.device:
        cfg = replace(cfg, device=args.device)
    if args.distributed:
        cfg = replace(cfg, distributed=args.distributed)
    return run_pipeline_and_print(cfg, args)


# ---------------------------------------------------------------------------------------------- score


def _add_score(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "score",
        help="gold and/or implicit reward of prompt/response pairs",
        description='Score a JSONL of {"prompt", "response"} rows with a gold reward (--gold) '
        "and/or the implicit reward log pi_post - log pi_pre (--aligned and --base). "
        "Prints mean and 95%% interval; --out writes every row with its scores.",
    )
    p.add_argument("--input", required=True, help="JSONL with prompt and response fields")
    p.add_argument("--response-field", default="response", help="field holding the response (e.g. chosen)")
    p.add_argument("--gold", default=None, help="registered gold reward name (see: python -m ml golds)")
    p.add_argument("--aligned", default=None, help="pi_post folder (for the implicit reward)")
    p.add_argument("--base", default=None, help="pi_pre folder (for the implicit reward)")
    p.add_argument("--append-eos", action="store_true", help="include the EOS token in the implicit reward")
    p.add_argument("--no-chat-template", action="store_true")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default=None)
    p.add_argument("--out", default=None, help="write scored rows to this JSONL")
    p.set_defaults(func=_cmd_score)


def _cmd_score(args: argparse.Namespace) -> int:
    from ml.io import read_jsonl, write_jsonl
    from ml.stats import mean_ci

    if not args.gold and not (args.aligned and args.base):
        print("score: give --gold NAME and/or both --aligned and --base", file=sys.stderr)
        return 2
    if bool(args.aligned) != bool(args.base):
        print("score: the implicit reward needs both --aligned and --base", file=sys.stderr)
        return 2
    rows = read_jsonl(args.input, required=("prompt", args.response_field))
    prompts = [str(r["prompt"]) for r in rows]
    responses = [str(r[args.response_field]) for r in rows]
    summary: dict[str, Any] = {"n": len(rows)}
    if args.gold:
        from ml.gold import get_gold

        gold = get_gold(args.gold)
        for r, p, y in zip(rows, prompts, responses):
            r["gold"], r["valid"] = gold(p, y), gold.is_valid(p, y)
        summary["gold"] = mean_ci([r["gold"] for r in rows]).as_dict()
        summary["valid_rate"] = sum(r["valid"] for r in rows) / len(rows) if rows else None
    if args.aligned:
        from ml.modeling import load_causal_lm, load_tokenizer
        from ml.scoring import implicit_rewards

        scores = implicit_rewards(
            aligned=load_causal_lm(args.aligned, device=args.device),
            base=load_causal_lm(args.base, device=args.device),
            tokenizer=load_tokenizer(args.aligned),
            prompts=prompts,
            responses=responses,
            batch_size=args.batch_size,
            use_chat_template=not args.no_chat_template,
            append_eos=args.append_eos,
            base_tokenizer=load_tokenizer(args.base),
        )
        for r, s in zip(rows, scores):
            r["implicit_sum"], r["implicit_mean"] = s["sum"], s["mean"]
        summary["implicit_sum"] = mean_ci([r["implicit_sum"] for r in rows]).as_dict()
        summary["implicit_per_token"] = mean_ci([r["implicit_mean"] for r in rows]).as_dict()
    if args.out:
        write_jsonl(args.out, rows)
        summary["out"] = args.out
    _print_json(summary)
    return 0


# ---------------------------------------------------------------------------------------------- golds


def _add_spec(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "spec",
        help="every setting a job kind takes: the web app's params, as a JSON Schema",
        description="Print the settings of one job kind (or all) as the REST API and the web form "
        "read them: knobs, top settings and each stage's fields with type, default, "
        "limit and help.",
    )
    p.add_argument("kind", nargs="?", choices=sorted(registry()), help="job kind (default: all)")
    p.set_defaults(func=_cmd_spec)


def _cmd_spec(args: argparse.Namespace) -> int:
    _print_json(_spec_of(args.kind))
    return 0


def _spec_of(kind: str | None) -> dict[str, Any]:
    from ml.spec_schema import describe

    every = describe()
    return every[kind] if kind else every


def _add_golds(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("golds", help="list the gold rewards that configs can name")
    p.set_defaults(func=_golds)


def _golds(args: argparse.Namespace) -> int:
    from ml.gold import known_golds

    print("\n".join(known_golds()))
    print("rm:<folder>   a reward model: a local AutoModelForSequenceClassification folder with one label")
    return 0


# ---------------------------------------------------------------------------------------------- diagnose


def _add_diagnose(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "diagnose",
        help="pre-flight check of a weak pair: does CD raise gold reward here?",
        description="Before training anything: samples plain pi_post and CD responses on held-out "
        "prompts, scores them with the gold reward and says in plain language whether CD "
        "at alpha 0.4 (ConG's training data) beats plain pi_post samples.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--aligned", required=True, help="pi_post: the aligned weak model's folder")
    p.add_argument("--base", required=True, help="pi_pre: the weak base model's folder (same tokenizer)")
    p.add_argument("--prompts", required=True, help='held-out prompt JSONL, one {"prompt": ...} per line')
    p.add_argument("--gold", required=True, help="registered gold reward name (python -m ml golds)")
    p.add_argument("--alphas", default="0,0.4,1", help="comma-separated CD alphas (0.4 and 1 are always added)")
    p.add_argument("--n", type=int, default=2, help="samples per prompt")
    p.add_argument("--n-prompts", type=int, default=200, help="use the first N prompts")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-chat-template", action="store_true", help="feed prompts raw even if the tokenizer has one")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: CUDA when present)")
    p.add_argument("--json", action="store_true", help="print the full result as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=_cmd_diagnose)


def _cmd_diagnose(args: argparse.Namespace) -> int:
    from ml.diagnose import preflight_dirs

    try:
        alphas = [float(a) for a in args.alphas.split(",") if a.strip()]
    except ValueError:
        raise ValueError(f"--alphas must be comma-separated numbers, got {args.alphas!r}") from None
    out = preflight_dirs(
        args.aligned,
        args.base,
        args.prompts,
        args.gold,
        n_prompts=args.n_prompts,
        device=args.device,
        reporter=console_reporter(args),
        alphas=alphas,
        n=args.n,
        seed=args.seed,
        max_new_tokens=args.max_new_tokens,
        use_chat_template=not args.no_chat_template,
    )
    if out.get("stopped"):
        return 3
    if args.json:
        _print_json(out)
    else:
        print(f"{out['verdict']}: {out['message']}")
    return 0


# ---------------------------------------------------------------------------------------------- main

BUILTINS = [
    _add_generate,
    _add_run,
    _add_score,
    _add_stage,
    _add_golds,
    _add_spec,
    _add_diagnose,
    _add_job,
    _add_memory,
]
__all__ = ["stage_config", "main", "build_parser"]


def _load_plugins(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for name in PLUGINS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
                continue  # that package is not installed: no subcommand, no fuss
            raise
        module.add_parser(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ml",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in BUILTINS:
        add(sub)
    _load_plugins(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as exc:
        # Config and input mistakes: one clear line, not a traceback.
        print(f"error: {exc}", file=sys.stderr)
        return 2
