"""Mutation testing of the modules that carry guarantees (``make mutate``; docs/TESTING.md has the results).

Why this shape:

- mutmut 3 rewrites the source it mutates, so it never runs in the working tree: each module is mutated in
  its own snapshot under ``var/mutate/<module>/`` (git-ignored), made fresh on every run from the working
  tree's tracked and untracked-but-not-ignored files (what ``make test`` would test), or from a commit with
  ``--rev``. Nothing is cached between runs, so a score is always the score of the tree it names.
- Only the functions that carry the guarantee are mutated (``funcs`` below, passed to mutmut as mutant-name
  globs); the rest of the file is copied as is. Whole files would mostly mutate log messages and plumbing
  that other suites cover, and would not finish in an hour on two cores.
- Each module runs against the tests of its area only, and only the fast ones (``-m "not slow ..."``, the
  real-worker tests deselected): mutmut runs, per mutant, just the tests that reached the mutated function
  during its first, traced run, and stops at the first failure (``-x``).
- torch does not survive a fork from a process that already ran it, so mutmut's forkserver isolation is
  used: a clean server process forks one child per mutant.

Usage: ``python tools/mutate.py [--module NAME ...] [--rev REV] [--jobs N] [--list]``. It prints, per module,
killed/survived/timeout/other/total and the names of the surviving mutants (``mutmut show NAME`` in
``var/mutate/<module>`` prints a mutant's diff). Exit status 0 when it ran, whatever the score.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "var" / "mutate"
# What a snapshot needs for the tests to import and run (bench/ and docs/ are not needed).
SNAPSHOT = ("ml/", "jobs/", "congweb/", "tests/", "templates/", "static/", "pytest.ini", "manage.py", "pyproject.toml")

# Never the slow tests, nor the ones needing a real worker/browser/GPU: a mutant must be checked in seconds.
# (``faults`` kill workers; ``e2e`` drive a browser; ``gpu`` skip anyway; ``worker`` start a Celery worker, marked
# by the fixtures they use. Deselecting by name instead, -k "not worker", also dropped tests that merely say
# "worker" in their names and start none: six job_claim mutants "survived" a clean run that way.)
FAST = ["-m", "not slow and not faults and not e2e and not gpu and not worker"]


@dataclass
class Module:
    name: str
    files: dict[str, list[str]]  # source file -> the functions mutated in it ("f" or "Class.method")
    tests: list[str]
    extra: list[str] = field(default_factory=list)  # extra pytest arguments (e.g. -k to deselect)
    preload: list[str] = field(default_factory=list)  # imports for the fork server (see PRELOAD)


MODULES = [
    # CD scoring: the score and its plausibility mask, the argument checks and the per-batch seed (plain
    # sampling's penalty is checked by tests/ml/test_plain_sampling.py: equal to CD at alpha 1).
    Module(
        "cd",
        {"ml/contrastive.py": ["_cd_step", "cd_scores", "batch_seed"]},
        ["tests/ml/test_contrastive.py", "tests/ml/test_cd_mutants.py"],
    ),
    # Teacher-forced scoring: which positions are scored, the context-limit fit, the implicit reward.
    Module(
        "scoring",
        {"ml/scoring.py": ["_fit", "token_logprobs_from_ids", "_reward_dicts"]},
        ["tests/ml/test_train_data_mutants.py", "tests/ml/test_scoring.py"],
    ),
    # SFT data and labels: the pair loading and encoding (the label mask is prompt -> -100 in _train's
    # collator/encoding, which DPO and WSPO share).
    Module(
        "sft",
        {
            "ml/stages/_train.py": ["encode_response", "encode_pair", "pad_collate"],
        },
        ["tests/ml/test_train_data_mutants.py", "tests/ml/test_masks.py", "tests/ml/test_stages_sft.py"],
        preload=["trl", "transformers.trainer"],
    ),
    # DPO data: pairing weak/strong responses into preferences, the filter, the implicit-reward sums.
    Module(
        "dpo",
        {"ml/stages/dpo.py": ["join_pairs", "filter_pairs"]},
        ["tests/ml/test_train_data_mutants.py", "tests/ml/test_stages_dpo.py", "tests/ml/test_masks.py"],
        preload=["trl", "transformers.trainer"],
    ),
    # WSPO: the loss, the weak-to-strong token value mapping, the targets, the per-token log-probs.
    Module(
        "wspo",
        {
            "ml/stages/wspo.py": ["wspo_loss", "map_token_values"],
            "ml/stages/_train.py": ["shifted_token_logps"],
        },
        ["tests/ml/test_train_data_mutants.py", "tests/ml/test_wspo_mutants.py", "tests/ml/test_stages_wspo.py"],
        preload=["transformers.trainer"],
    ),
    # Job lifecycle: cancel/retry/claim/heartbeat/finish/fail and the stale-job reaper.
    Module(
        "lifecycle",
        {
            "jobs/services/lifecycle.py": [
                "job_cancel",
                "job_claim",
                "job_heartbeat",
                "job_finish",
                "job_fail",
                "job_mark_cancelled",
                "jobs_reap_stale",
            ]
        },
        ["tests/jobs/test_lifecycle_mutants.py", "tests/jobs/test_lifecycle.py", "tests/jobs/test_services.py"],
    ),
    # Visibility: who sees which job, model, dataset.
    Module(
        "selectors",
        {
            "jobs/selectors.py": [
                "jobs_visible",
                "job_list",
                "job_get",
                "job_events",
                "job_pairs",
                "visible",
                "models_visible",
                "datasets_visible",
            ]
        },
        ["tests/jobs/test_selectors.py", "tests/jobs/test_privacy.py", "tests/jobs/test_ownership.py"],
    ),
    # Spec validation: the layered resolve and its checks.
    Module(
        "spec",
        {
            "ml/resolve.py": ["_Errors.*", "_check_value", "_read_layer", "_check_alphas"],
            "ml/spec.py": ["check_type", "check_limit", "check_alpha"],
        },
        ["tests/ml/test_spec_mutants.py", "tests/ml/test_spec.py", "tests/jobs/test_specs.py"],
    ),
]


def globs(mod: Module) -> list[str]:
    """mutmut names a mutant ``ml.contrastive.x_func__mutmut_3`` or ``...xǁClassǁmethod__mutmut_3``."""
    out = []
    for path, funcs in mod.files.items():
        dotted = path.removesuffix(".py").replace("/", ".")
        for f in funcs:
            if "." in f:
                cls, meth = f.split(".", 1)
                out.append(f"{dotted}.xǁ{cls}ǁ{meth}__mutmut_*")
            elif f == "*":
                out.append(f"{dotted}.x*__mutmut_*")
            else:
                out.append(f"{dotted}.x_{f}__mutmut_*")
    return out


def snapshot(dest: Path, rev: str | None) -> None:
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    if rev:
        tar = subprocess.run(["git", "archive", rev, *SNAPSHOT], cwd=ROOT, check=True, capture_output=True).stdout
        with tarfile.open(fileobj=BytesIO(tar)) as t:
            t.extractall(dest, filter="data")
        return
    names = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z", "--", *SNAPSHOT],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split("\0")
    for name in filter(None, names):
        src = ROOT / name
        if src.is_file():  # a tracked file deleted in the working tree is skipped
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


# Appended to the SNAPSHOT's tests/conftest.py (never the working tree's) for the modules tested against the
# database: pytest-django would migrate a fresh SQLite database in every mutant's pytest session (~20 s a
# mutant on this machine); instead each session starts from its own copy of one database migrated up front.
FAST_DB = """

# --- added by tools/mutate.py in its snapshot only ---
@pytest.fixture(scope="session")
def django_db_setup(django_db_blocker):
    import shutil

    from django.conf import settings
    from django.db import connections

    path = f"{os.environ['MUTATE_DB_TEMPLATE']}.{os.getpid()}"
    shutil.copy(os.environ["MUTATE_DB_TEMPLATE"], path)
    conn = connections["default"]
    conn.close()
    conn.settings_dict["NAME"] = settings.DATABASES["default"]["NAME"] = path
    yield
    conn.close()
    os.remove(path)
"""


# Also appended to the snapshot's tests/conftest.py: mutmut's fork server collects the tests once and forks
# every mutant's session from it, so what is imported here is imported once, not per mutant. transformers
# imports its model classes lazily (~10 s the first time a test builds a tiny GPT-2 on this machine).
PRELOAD = """

# --- added by tools/mutate.py in its snapshot only: imported once in the fork server ---
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast  # noqa: E402,F401
"""


def migrate_template(where: Path, env: dict[str, str]) -> None:
    template = where / "template.sqlite3"
    env["MUTATE_DB_TEMPLATE"] = str(template)
    migrate_env = {**env, "DATABASE_URL": f"sqlite:///{template}"}
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=where, env=migrate_env, check=True
    )
    with open(where / "tests" / "conftest.py", "a") as fh:
        fh.write(FAST_DB)


def setup_cfg(mod: Module) -> str:
    lines = lambda xs: "".join(f"\n    {x}" for x in xs)
    pytest_args = ["-x", "-q", "-p", "no:randomly", *FAST, *mod.extra]
    return (
        "[mutmut]\n"
        f"source_paths ={lines(['ml', 'jobs', 'congweb'])}\n"
        f"only_mutate ={lines(mod.files)}\n"
        f"also_copy ={lines(['templates', 'static', 'pytest.ini', 'manage.py'])}\n"
        f"pytest_add_cli_args ={lines(pytest_args)}\n"
        f"pytest_add_cli_args_test_selection ={lines(mod.tests)}\n"
        "process_isolation = forkserver\n"
        "use_git_change_detection = false\n"
        "track_dependencies = false\n"
    )


def tally(where: Path, mod: Module, mutmut: str) -> tuple[dict[str, int], list[str]]:
    out = subprocess.run([mutmut, "results", "--all", "true"], cwd=where, capture_output=True, text=True).stdout
    pats = globs(mod)
    counts: dict[str, int] = {}
    survivors = []
    for line in out.splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if not sep or not any(fnmatch.fnmatchcase(name, p) for p in pats):
            continue
        counts[status] = counts.get(status, 0) + 1
        if status != "killed":
            survivors.append(f"{name}: {status}")
    return counts, survivors


def run(mod: Module, rev: str | None, jobs: int) -> tuple[dict[str, int], list[str], float]:
    where = WORK / mod.name
    snapshot(where, rev)
    (where / "setup.cfg").write_text(setup_cfg(mod))
    mutmut = str(Path(sys.executable).with_name("mutmut"))
    # One thread per mutant: torch's OpenMP pool in a forked child can deadlock (seen as spurious timeouts),
    # and --jobs children already use the cores.
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    t0 = time.monotonic()
    with open(where / "tests" / "conftest.py", "a") as fh:
        fh.write(PRELOAD + "".join(f"import {m}  # noqa: E402,F401\n" for m in mod.preload))
    if any(t.startswith("tests/jobs/") for t in mod.tests):
        migrate_template(where, env)
    print(f"== {mod.name}: {', '.join(mod.files)} against {' '.join(mod.tests)}", flush=True)
    log = where / "mutmut.log"
    with open(log, "w") as fh:
        rc = subprocess.run(
            [mutmut, "run", "--max-children", str(jobs), *globs(mod)], cwd=where, env=env, stdout=fh, stderr=fh
        ).returncode
    dt = time.monotonic() - t0
    if rc != 0:
        print(f"   mutmut exited {rc}; last lines of {log}:")
        print("".join(log.read_text(errors="replace").splitlines(keepends=True)[-30:]))
    counts, survivors = tally(where, mod, mutmut)
    return counts, survivors, dt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--module", action="append", help="run only these (repeatable); default: all")
    ap.add_argument("--rev", help="mutate this commit instead of the working tree")
    ap.add_argument("--jobs", type=int, default=2, help="mutants run at once (default 2)")
    ap.add_argument("--list", action="store_true", help="list the modules, what they mutate and their tests")
    a = ap.parse_args()
    known = {m.name: m for m in MODULES}
    if a.list:
        for m in MODULES:
            print(f"{m.name:10} {m.files} <- {' '.join(m.tests)} {' '.join(m.extra)}")
        return 0
    chosen = [known[n] for n in a.module] if a.module else MODULES
    rows = []
    for mod in chosen:
        counts, survivors, dt = run(mod, a.rev, a.jobs)
        total = sum(counts.values())
        k, s, t = counts.get("killed", 0), counts.get("survived", 0), counts.get("timeout", 0)
        other = total - k - s - t
        score = f"{100 * (k + t) / total:.1f}%" if total else "-"
        rows.append((mod.name, k, s, t, other, total, score, dt))
        print(f"   killed {k}  survived {s}  timeout {t}  other {other}  total {total}  score {score}  ({dt:.0f} s)")
        for line in survivors:
            print(f"   - {line}")
    print("\nmodule      killed survived timeout other total  score   time")
    for name, k, s, t, o, n, score, dt in rows:
        print(f"{name:10} {k:7} {s:8} {t:7} {o:5} {n:5} {score:>6} {dt:6.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
