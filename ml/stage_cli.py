"""``python -m ml stage NAME --config C``: one pipeline stage from a YAML of its settings, in this process or as
several (``--nproc``, ``--distributed``: ml.distributed), which is also how a pipeline or a web job launches a
training stage on several devices (``--report-dir``, hidden: ml.distributed.Launched)."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from typing import Any


def _stage_table() -> dict[str, tuple[str, str, str]]:
    """stage name -> (module, config class, function)."""
    return {
        "weak_align": ("ml.stages.weak_align", "WeakAlignConfig", "weak_align"),
        "cd_generate": ("ml.stages.generate", "CDGenerateConfig", "cd_generate"),
        "plain_generate": ("ml.stages.generate", "PlainGenerateConfig", "plain_generate"),
        "sft": ("ml.stages.sft", "SFTStageConfig", "sft"),
        "self_sample": ("ml.stages.self_sample", "SelfSampleConfig", "self_sample"),
        "dpo": ("ml.stages.dpo", "DPOStageConfig", "dpo"),
        "wspo": ("ml.stages.wspo", "WSPOConfig", "wspo"),
        "auxconf": ("ml.stages.auxconf", "AuxConfConfig", "auxconf"),
        "evaluate": ("ml.stages.evaluate", "EvaluateConfig", "evaluate"),
    }


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    names = list(_stage_table())
    p = sub.add_parser(
        "stage",
        help="run one pipeline stage from a YAML of its settings",
        description="Run a single stage. The YAML holds that stage's config fields (e.g. for sft: "
        "model, output_dir, data, learning_rate, max_steps ...); see docs/ML.md. "
        "Relative paths are relative to the YAML file.",
    )
    p.add_argument("name", choices=names, help="stage to run")
    p.add_argument("--config", required=True, help="YAML file with the stage's settings")
    p.add_argument("--quiet", action="store_true")
    p.add_argument(
        "--nproc",
        type=int,
        default=1,
        help="training stages: run as this many processes (torch.distributed; NCCL on GPUs, gloo on CPUs); "
        "per_device_train_batch_size stays per process (docs/SCALING.md)",
    )
    add_distributed_arg(p)
    # Set by ml.distributed.Launched, which runs a stage for a pipeline or a web job: reports go to a file it
    # replays, and a STOP file there (or the launcher's death) stops the ranks.
    p.add_argument("--report-dir", default=None, help=argparse.SUPPRESS)
    p.add_argument("--watch-pid", type=int, default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=_cmd_stage)


def add_distributed_arg(p: argparse.ArgumentParser) -> None:
    from ml.distributed import DEFAULT_MODE, DISTRIBUTED_MODES, modes_help

    p.add_argument(
        "--distributed",
        choices=list(DISTRIBUTED_MODES),
        default=None,
        help=f"how the processes share the training (default {DEFAULT_MODE}): {modes_help()}",
    )


_STAGE_PATH_KEYS = (
    "model",
    "output_dir",
    "data",
    "chosen_data",
    "rejected_data",
    "prompts",
    "samples",
    "reference",
    "weak_aligned",
    "weak_base",
    "aligned",
    "base",
)


def stage_config(name: str, data: dict[str, Any], base_dir: str | Path | None = None) -> Any:
    """Build stage ``name``'s config from a plain dict (paths made relative to base_dir)."""
    module, cls_name, _ = _stage_table()[name]
    cls = getattr(importlib.import_module(module), cls_name)
    data = dict(data)
    if base_dir is not None:
        for k in _STAGE_PATH_KEYS:
            v = data.get(k)
            if isinstance(v, str) and v and not Path(v).is_absolute() and (":" not in v or k != "model"):
                data[k] = str((Path(base_dir) / v).resolve())
    if hasattr(cls, "from_dict"):
        return cls.from_dict(data)
    try:
        return cls(**data)
    except TypeError as exc:  # unknown or missing field: say which, as ValueError like the rest
        raise ValueError(f"{cls_name}: {exc}") from None


def _cmd_stage(args: argparse.Namespace) -> int:
    import yaml

    from ml.distributed import is_main, launch, world
    from ml.reporter import FileReporter, Reporter
    from ml.stages import DISTRIBUTED_STAGES

    if (args.nproc > 1 or args.distributed) and args.name not in DISTRIBUTED_STAGES:
        raise ValueError(
            f"--nproc and --distributed apply to the training stages ({', '.join(DISTRIBUTED_STAGES)}); "
            f"{args.name} runs in one process (docs/SCALING.md)"
        )
    if args.nproc > 1 and world()[1] == 1:
        # The same command for each rank, without --nproc (a rank runs the stage itself).
        argv = ["stage", args.name, "--config", args.config] + (["--quiet"] if args.quiet else [])
        for flag, value in (("--distributed", args.distributed), ("--report-dir", args.report_dir)):
            argv += [flag, value] if value else []
        argv += ["--watch-pid", str(args.watch_pid)] if args.watch_pid else []
        return launch(argv, args.nproc)
    path = Path(args.config)
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if args.distributed:
        data["distributed"] = args.distributed
    cfg = stage_config(args.name, data, base_dir=path.parent)
    module, _, fn_name = _stage_table()[args.name]
    from ml.cli import _print_json, console_reporter

    rep: Reporter
    if args.report_dir:
        rep = FileReporter(Path(args.report_dir) / "events.jsonl", Path(args.report_dir) / "STOP", args.watch_pid)
    else:
        rep = console_reporter(args)
    # Only the first rank reports: every training stage wraps its reporter itself (ml.stages.callbacks.for_rank).
    summary = getattr(importlib.import_module(module), fn_name)(cfg, rep)
    if is_main():
        _print_json(summary)
        if args.report_dir:  # the launcher reads the outcome here: torch's launcher reports any exit but 0 as a crash
            from ml.distributed import RESULT
            from ml.io import write_json

            write_json(Path(args.report_dir) / RESULT, summary)
    return 0 if args.report_dir else 3 if summary.get("stopped") else 0
