"""The docs run: every curl example of docs/API.md and README.md against a live server and a real worker, and
every `python -m ml` example of docs/ML.md on the tiny toy world, as written.

**curl examples.** Each fenced shell block with a curl call runs as one bash script (``set -euo pipefail``), in
page order, in one folder, the variables it sets (``H``, ``TOKEN``, ``AUTH``) carried to the next block as in one
terminal session. What a reader fills in is replaced, and only that (``CURL_SUBSTITUTIONS``): the server's
address, alice's password, the model folder. The ids are the doc's own: the test database's sequences start at
1 and alice has registered her weak pair (models 1 and 2) before the first example, as the doc says. Before
each block the harness waits for the jobs to finish, as a reader would. ``curl`` is a shell function around
the real one that adds ``-w`` writing the HTTP status to stderr (the doc's own output is untouched): every
call must answer 2xx, or the status a ``# -> NNN`` comment on its command names. The number of statuses seen
must equal the number of curl calls found, so an example that did not run fails the test.

**CLI examples.** Placeholders (``ML_PLACEHOLDERS``: M_POST, M_PRE, M_STRONG) become the tiny world's model
folders; the files the lines name are put in the folder they run in (prompt files from the world; the
pipeline's ``experiment.yaml`` is the doc's own YAML example, with paths to the world and tiny sizes; a small
``sft.yaml``). Each line must exit 0, in doc order (later lines read what earlier ones wrote).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .examples import ROOT, curl_blocks, curl_outside_shell, fenced_blocks, ml_examples, ml_mentions

pytestmark = pytest.mark.slow

PASSWORD = "pw-alice-123"  # the `user` fixture's (tests/jobs/conftest.py)
STATUS = re.compile(r"@@HTTP (\d{3})")
PRELUDE = """set -euo pipefail
curl() { command curl -w '%{stderr}\\n@@HTTP %{http_code}\\n' "$@"; }
if [ -f .session.sh ]; then source .session.sh; fi
"""
CARRIED = ("H", "TOKEN", "AUTH")  # the session variables the setup block defines; later blocks use them
PROMPTS = "".join(json.dumps({"prompt": f"the movie {i} was"}) + "\n" for i in range(4))


def curl_substitutions(server: str, model_folder: Path) -> dict[str, str]:
    """What a reader puts in instead, as written in the docs -> what this test puts in."""
    return {
        "http://127.0.0.1:8000": server,
        '"password": "..."': f'"password": "{PASSWORD}"',
        "/srv/models/qwen-0.5b": str(model_folder),
    }


def shell_env() -> dict[str, str]:
    """The caller's environment with the venv's bin first: `python` and `openapi-python-client` are its."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "DJANGO_SETTINGS"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def wait_for_jobs() -> None:
    from jobs.models import Job
    from tests.jobs.conftest import wait_for

    wait_for(lambda: not Job.objects.filter(status__in=Job.ACTIVE).exists(), 180, what="the examples' jobs to finish")


@pytest.mark.django_db(transaction=True, reset_sequences=True)
def test_every_curl_example_runs_as_written(server, celery_worker_proc, weak_pair, model_folder, tmp_path):
    assert shutil.which("curl") and shutil.which("bash"), "the docs run needs curl and bash"
    assert [wb.pk for wb in weak_pair] == [1, 2], "the doc's weak pair is models 1 and 2"
    assert not curl_outside_shell(), "a curl command in a non-shell block: nothing runs it"
    blocks = curl_blocks()
    subs = curl_substitutions(server, model_folder)
    used = dict.fromkeys(subs, 0)
    (tmp_path / "prompts.jsonl").write_text(PROMPTS)  # the reader's prompt file (the upload's `file=@prompts.jsonl`)
    ran = 0
    for block in blocks:
        script = block.body
        for old, new in subs.items():
            used[old] += script.count(old)
            script = script.replace(old, new)
        carry = " ".join(CARRIED)
        save = f"\ndeclare -p {carry} > .session.sh 2>/dev/null || true\n"
        wait_for_jobs()
        done = subprocess.run(
            ["bash", "-c", PRELUDE + script + save],
            cwd=tmp_path,
            env=shell_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        why = f"{block.where} (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        assert done.returncode == 0, why
        seen = [int(s) for s in STATUS.findall(done.stderr)]
        expected = [c.expect for c in block.commands for _ in range(c.curl_calls)]
        assert len(seen) == len(expected) == block.curl_calls, f"curl calls run != found: {why}"
        for status, want, command in zip(seen, expected, _calls(block), strict=True):
            ok = status == want if want is not None else 200 <= status < 300
            assert ok, f"{block.where}: line {command.line} answered {status}, the doc says {want or '2xx'}: {why}"
        ran += len(seen)
    assert all(used.values()), f"a substitution no doc uses any more (drop it): {used}"
    assert ran == sum(b.curl_calls for b in blocks) >= 10, ran
    assert all(c.curl_calls for b in blocks for c in b.commands if c.expect is not None), "a `# -> NNN` on no curl"
    # What the examples did is what the doc says they do.
    from jobs.models import GeneratedPair, Job

    job = Job.objects.get(pk=1)
    assert job.status == Job.Status.SUCCEEDED, job.error
    assert GeneratedPair.objects.get(pk=1).review_status == "approved"
    assert GeneratedPair.objects.get(pk=2).review_status == "edited"
    assert (tmp_path / "pairs.jsonl").read_text().strip() and (tmp_path / "congweb-client").is_dir()


def _calls(block):
    """One entry per curl call of a block, in order: the command it belongs to."""
    return [c for c in block.commands for _ in range(c.curl_calls)]


# --- the CLI examples -------------------------------------------------------------------------------------
ML_PLACEHOLDERS = {"M_POST": "weak_aligned", "M_PRE": "weak_base", "M_STRONG": "strong_base"}
# Tiny sizes for the doc's pipeline YAML on 64-position models with ~20 prompts (the doc's values are a real run's).
TINY_PIPELINE = {"max_prompts": 4, "max_eval_prompts": 4, "max_new_tokens": 40, "train_max_steps": 1, "device": "cpu"}
TRAINING_STAGES = ("weak_align", "sft", "dpo", "wspo", "auxconf")


def ml_workdir(world: dict, folder: Path) -> None:
    """The files the doc's lines name, as a reader would have them, from the tiny world."""
    prompts = world["prompts"]
    for name, split in (("prompts.jsonl", "train"), ("train.jsonl", "train"), ("heldout.jsonl", "heldout")):
        shutil.copy(prompts[split], folder / name)
    # experiment.yaml: the doc's pipeline example (its relative paths made to exist), sized for the tiny world.
    (yaml_block,) = [b for b in fenced_blocks("docs/ML.md") if b.lang == "yaml"]
    config = yaml.safe_load(yaml_block.body)
    links = {config["weak_base"]: world["models"]["weak_base"], config["strong"]: world["models"]["strong_base"]}
    links |= {config["train_prompts"]: prompts["train"], config["eval_prompts"]: prompts["heldout"]}
    for rel, target in links.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).symlink_to(target)
    config |= TINY_PIPELINE
    for stage in TRAINING_STAGES:
        config[stage] = {**(config.get(stage) or {}), "max_length": 64}
    (folder / "experiment.yaml").write_text(yaml.safe_dump(config))
    sft = {"model": world["models"]["strong_base"], "data": "runs/cd/samples.jsonl", "output_dir": "runs/sft"}
    (folder / "sft.yaml").write_text(yaml.safe_dump({**sft, "max_steps": 2, "max_length": 64}))


def test_every_ml_cli_example_runs_on_the_tiny_world(tiny_world, tmp_path):
    examples = ml_examples()
    assert len(examples) == ml_mentions() >= 9, "a `python -m ml` line the harness did not read"
    ml_workdir(tiny_world, tmp_path)
    used = dict.fromkeys(ML_PLACEHOLDERS, 0)
    commands = []
    for i, ex in enumerate(examples):
        argv = []
        for word in ex.argv:
            if word in ML_PLACEHOLDERS:
                used[word] += 1
                word = tiny_world["models"][ML_PLACEHOLDERS[word]]
            argv.append(word)
        commands.append({"argv": argv, "log": str(tmp_path / f"cmd{i}.log")})
    assert all(used.values()), f"a placeholder no example uses any more: {used}"
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"cwd": str(tmp_path), "commands": commands}))
    env = shell_env() | {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("ml_forks.py")), str(plan)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    codes = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(codes) == len(examples)
    failed = [
        f"{ex.where}: exit {code}: {ex.text}\n{Path(cmd['log']).read_text(errors='replace')[-2000:]}"
        for ex, cmd, code in zip(examples, commands, codes, strict=True)
        if code != 0
    ]
    assert not failed, "\n\n".join(failed)
