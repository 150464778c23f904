"""Run `python -m ml` command lines the way `python -m ml` runs them, each in its own process, paying for the
imports once: ``python tests/docs/ml_forks.py PLAN.json`` imports ml.cli (what ml/__main__.py does first),
then forks one child per command. A child runs ``ml.cli.main(argv)`` with its output in the command's log and
exits with its exit code, as `python -m ml ...` would; the parent prints the exit codes as a JSON list.

Why fork: importing ml.cli costs ~10 s of CPU (torch, transformers, peft), ten times what a tiny-world command
itself does; forked children share that one import but nothing else (each starts from the freshly imported
state, so no command sees what an earlier one did in memory). The parent runs no torch code before forking.

PLAN.json: {"cwd": folder the commands run in, "commands": [{"argv": [...], "log": file}, ...]}.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback

WARM = (
    "ml.pipeline",
    "ml.execute",
    "ml.diagnose",
    "ml.scoring",
    "ml.contrastive",
    *(f"ml.stages.{s}" for s in ("weak_align", "generate", "sft", "self_sample", "dpo", "wspo", "auxconf", "evaluate")),
    "transformers.models.gpt2.modeling_gpt2",  # the tiny world's models (transformers loads a class on first use)
)


def run_child(argv: list[str], log: str) -> int:
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    from ml.cli import main

    sys.argv = ["python -m ml", *argv]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's --help and usage errors, as `python -m ml` exits with them
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    return int(code)


def warm_imports() -> None:
    """What every `python -m ml` command imports (its parser: the stage registry, hence torch, transformers,
    trl, peft) and the modules the commands then load, so that the children find them imported."""
    import importlib

    from ml.cli import build_parser

    build_parser()
    for name in WARM:
        importlib.import_module(name)


def main() -> None:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as ml/__main__.py, before torch loads
    with open(sys.argv[1], encoding="utf-8") as f:
        plan = json.load(f)
    os.chdir(plan["cwd"])
    warm_imports()

    codes = []
    for command in plan["commands"]:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = run_child(command["argv"], command["log"])
            finally:
                os._exit(code)
        start = time.monotonic()
        _, status = os.waitpid(pid, 0)
        codes.append(os.waitstatus_to_exitcode(status))
        # For whoever makes the docs run faster: which command took how long (stderr, not the result).
        print(f"{time.monotonic() - start:6.1f} s  ml {' '.join(command['argv'])[:80]}", file=sys.stderr)
    print(json.dumps(codes))


if __name__ == "__main__":
    main()
