"""``python -m ml job KIND``: any job kind from a terminal, with the web app's settings as flags.

Every flag is derived from ml's registry (ml.spec): the kind's knobs (``--epochs 3``), the pipeline's top
settings, and each stage's fields as ``--STAGE.FIELD`` (``--sft.num-train-epochs 3``). The request is resolved
and checked exactly as the web app does (ml.resolve), then run by the worker's own path (ml.execute). Files come
from ``--weak-base``/``--prompts``/... here; a web request can never set them.

    python -m ml job cd_generate --weak-base pre --weak-aligned post --prompts p.jsonl --out runs/cd --batch-size 4
    python -m ml job cong --weak-base pre --weak-aligned post --strong s --prompts p.jsonl --gold toy:review \\
        --out runs/cong --methods cong_s,cong --sft.num-train-epochs 3
"""

from __future__ import annotations

import argparse
from typing import Any

from ml.execution import SETTINGS as EXECUTION
from ml.execution import from_text
from ml.spec import DEFAULT_LIMITS, knob_field, registry, settable, top_settable
from ml.spec_schema import add_flag

FILES = ("weak_base", "weak_aligned", "strong", "prompts", "eval_prompts")
MODELS = FILES[:3]


def setting_flags(kind: str) -> dict[str, str]:
    """dest -> params key path ("knob", "stage.field") of every settings flag of a kind."""
    ks = registry()[kind]
    out = {f"k__{k}": k for k in ks.knobs}
    if ks.pipeline:
        out.update({f"k__{k}": k for k in top_settable()})
    for stage, st in ks.stages.items():
        out.update({f"s__{stage}__{name}": f"{stage}.{name}" for name in settable(st)})
    return out


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "job",
        help="run any job kind with the web app's settings (derived flags)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    kinds = p.add_subparsers(dest="kind", required=True, metavar="KIND")
    for name, ks in registry().items():
        k = kinds.add_parser(name, help=ks.help, description=ks.help)
        for file_arg in FILES:
            k.add_argument("--" + file_arg.replace("_", "-"), default="", help=f"{file_arg} (folder or JSONL file)")
        k.add_argument("--gold", default="", help="registered gold reward name (python -m ml golds)")
        k.add_argument("--out", required=True, help="run folder (each stage gets a subfolder; reruns resume)")
        k.add_argument("--alpha", type=float, default=None, help="CD alpha (kinds that decode with one)")
        if ks.pipeline:
            k.add_argument("--methods", default=None, help="comma-separated methods (kind=cong)")
            k.add_argument("--method", default=None, help="the method (kind=train)")
        if ks.sweep:
            k.add_argument("--alphas", default=None, help="comma-separated CD alphas")
        k.add_argument("--quiet", action="store_true", help="no progress output")
        for setting in EXECUTION.values():
            if name in setting.kinds:
                help_ = (setting.help + setting.cli_note).replace("%", "%%")
                k.add_argument("--" + setting.name, dest=f"x__{setting.name}", type=from_text, default=None, help=help_)
        for dest, path in setting_flags(name).items():
            stage, _, field = path.partition(".")
            if field:
                f, tp = settable(ks.stages[stage])[field]
                add_flag(k, f"--{stage}.{field.replace('_', '-')}", dest, tp, str(f.metadata.get("help", "")))
            elif path in top_settable() and ks.pipeline:
                f, tp = top_settable()[path]
                add_flag(k, f"--{path.replace('_', '-')}", dest, tp, str(f.metadata.get("help", "")))
            else:
                _, tp = knob_field(ks, path)
                add_flag(k, f"--{path.replace('_', '-')}", dest, tp, f"sets {', '.join(ks.knobs[path])}")
        k.set_defaults(func=_cmd_job)


def params_from_args(args: argparse.Namespace) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for dest, path in setting_flags(args.kind).items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        stage, _, field = path.partition(".")
        if field:
            params.setdefault(stage, {})[field] = value
        else:
            params[path] = value
    for setting in EXECUTION:
        if getattr(args, f"x__{setting}", None) is not None:
            params[setting] = getattr(args, f"x__{setting}")
    if getattr(args, "alphas", None):
        params["alphas"] = [float(a) for a in args.alphas.split(",") if a.strip()]
    return params


def _cmd_job(args: argparse.Namespace) -> int:
    from ml.cli import _print_json, console_reporter, setup_torch_threads
    from ml.execute import execute
    from ml.modeling import context_length
    from ml.resolve import JobInputs, check, resolve
    from ml.shards import run_shards_here
    from ml.spec import SpecError

    inputs = JobInputs(output_dir=args.out, gold=args.gold, **{f: getattr(args, f) for f in FILES})
    methods = args.methods.split(",") if getattr(args, "methods", None) else None
    try:
        # The terminal is the machine's owner: the web app's limits are not the CLI's (none but the model's).
        spec = resolve(
            args.kind,
            params_from_args(args),
            alpha=args.alpha,
            methods=methods,
            method=getattr(args, "method", None),
            limits={k: float("inf") for k in DEFAULT_LIMITS},
            # ... but a model's context is: a budget it cannot hold fails here, as at the web app's submit.
            contexts={f: (path, context_length(path)) for f in MODELS if (path := getattr(args, f))},
        )
        check(spec, inputs)
    except SpecError as exc:
        for key, msgs in exc.errors.items():
            print(f"error: {key}: {' '.join(msgs)}")
        return 2
    setup_torch_threads()
    shards = spec["execution"].get("shards", 1)  # one process: "auto" is 1; a number is each shard in turn (ml.shards)
    generation = run_shards_here(shards) if isinstance(shards, int) and shards > 1 else None
    result = execute(spec, inputs, console_reporter(args), generation=generation)
    _print_json(result)
    return 3 if result.get("stopped") else 0
