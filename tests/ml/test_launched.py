"""The training runner of a job on several devices (ml.distributed.Launched): the stage runs as N processes under
torch's launcher, its reports reach the caller's reporter, a stop request stops every rank at a checkpoint and a
rerun resumes there; and the file reporter it is built on."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from ml.distributed import Launched, run_here, training_runner
from ml.io import read_json
from ml.reporter import FileReporter, RecordingReporter, forward_events
from ml.stages.sft import SFTStageConfig, sft

from ._stage_fixtures import PROMPTS, save_tiny, write_pairs


def test_forward_events_replays_whole_lines_and_keeps_a_partial_one_for_later(tmp_path):
    path = tmp_path / "events.jsonl"
    rep = FileReporter(path, tmp_path / "STOP")
    rep.progress("sft", 1, 4)
    rep.metric("sft/loss", 2.5, 1)
    rep.log("hello")
    rep.sample({"prompt": "p", "response": "r"})
    with path.open("a", encoding="utf-8") as f:
        f.write('["progress", "sft", 2')  # a line the writer has not finished
    out = RecordingReporter()
    offset = forward_events(path, 0, out)
    assert out.events == [
        ("progress", ("sft", 1, 4)),
        ("metric", ("sft/loss", 2.5, 1)),
        ("log", "hello"),
        ("sample", {"prompt": "p", "response": "r"}),
    ]
    with path.open("a", encoding="utf-8") as f:
        f.write(", 4]\n")
    assert forward_events(path, offset, out) == path.stat().st_size
    assert out.events[-1] == ("progress", ("sft", 2, 4))
    assert forward_events(tmp_path / "none.jsonl", 0, out) == 0  # nothing written yet


def test_the_file_reporter_stops_on_its_stop_file_or_when_its_launcher_is_gone(tmp_path):
    rep = FileReporter(tmp_path / "e.jsonl", tmp_path / "STOP", watch_pid=os.getpid())
    assert not rep.should_stop()
    (tmp_path / "STOP").touch()
    assert rep.should_stop()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert FileReporter(tmp_path / "e.jsonl", tmp_path / "NOSTOP", watch_pid=dead.pid).should_stop()


def test_a_job_on_one_device_in_ddp_trains_in_process_and_anything_else_is_launched():
    assert training_runner(1) is run_here
    two = training_runner(2)
    assert isinstance(two, Launched) and (two.nproc, two.mode) == (2, "ddp")
    fsdp = training_runner(1, "fsdp")
    assert isinstance(fsdp, Launched) and (fsdp.nproc, fsdp.mode) == (1, "fsdp")
    with pytest.raises(ValueError, match="unknown distributed mode 'zero9'"):
        training_runner(2, "zero9")
    with pytest.raises(ValueError, match="nproc must be >= 1"):
        Launched(0)


def _sft_config(tmp_path, **kw) -> SFTStageConfig:
    return SFTStageConfig(
        model=save_tiny(tmp_path / "m", seed=3),
        output_dir=str(tmp_path / "out"),
        data=write_pairs(tmp_path / "pairs.jsonl"),
        use_chat_template=False,
        per_device_train_batch_size=len(PROMPTS) // 2,
        learning_rate=1e-3,
        warmup_ratio=0.0,
        lr_scheduler_type="constant",
        **kw,
    )


class _StopAtFirstStep(RecordingReporter):
    def should_stop(self) -> bool:
        return any(stage == "sft" and done >= 1 for stage, done, _ in self.of("progress"))


@pytest.mark.slow  # two launches of two processes
def test_launched_sft_reports_stops_at_a_checkpoint_and_resumes_on_two_processes(tmp_path):
    cfg = _sft_config(tmp_path, max_steps=4, save_steps=100)
    stopping = _StopAtFirstStep()
    out = Launched(2, poll_seconds=0.05)("sft_cong_s", sft, cfg, stopping)
    assert out == {"stopped": True, "stage": "sft_cong_s"}
    assert not (tmp_path / "out" / "DONE.json").exists()
    assert list((tmp_path / "out" / "checkpoints").glob("checkpoint-*"))  # every rank stopped at a saved step
    assert stopping.of("log")[0] == "sft_cong_s: training on 2 process(es), ddp"

    rep = RecordingReporter()
    done = Launched(2, poll_seconds=0.05)("sft_cong_s", sft, cfg, rep)
    assert done == read_json(tmp_path / "out" / "DONE.json")
    assert (done["world_size"], done["distributed"], done["steps"]) == (2, "ddp", 4)
    assert done["resumed_from"]  # from the stop's checkpoint
    bars = [p for p in rep.of("progress") if p[0] == "sft"]
    assert bars[-1] == ("sft", 4, 4)  # rank 0's progress reached the caller
    # The losses reached the caller (in the first run or the resumed one: on a loaded machine the ranks may reach
    # the last step before the launcher has seen the first report and written STOP).
    assert [m for m in stopping.of("metric") + rep.of("metric") if m[0] == "sft/loss"]
    assert yaml.safe_load((tmp_path / "out" / "launch" / "config.yaml").read_text())["distributed"] == "ddp"
    # Finished: a rerun returns the summary at once, as an in-process stage does.
    assert Launched(2)("sft_cong_s", sft, cfg, RecordingReporter()) == done


def test_a_launched_stage_that_fails_says_why(tmp_path):
    cfg = _sft_config(tmp_path, max_steps=1)
    (tmp_path / "pairs.jsonl").write_text('{"question": "q", "answer": "a"}\n' * 3, encoding="utf-8")
    with pytest.raises(RuntimeError, match=r"sft on 2 processes \(ddp\) failed with exit status") as exc:
        Launched(2, poll_seconds=0.05)("sft", sft, cfg, RecordingReporter())
    # What the rank said (ml.cli's "error: ..." line), not the launcher's report.
    assert "pairs.jsonl:1: missing field(s) prompt, response" in str(exc.value), str(exc.value)
    assert "ChildFailedError" not in str(exc.value)


def _vote(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from ml.stages.callbacks import _agreed

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        # Only the first process was asked to stop; both must stop at this step, or the other would wait forever.
        with open(f"{out}.{rank}", "w") as f:
            f.write(f"{_agreed(rank == 0)} {_agreed(False)}")
    finally:
        dist.destroy_process_group()


def test_every_process_stops_when_any_was_asked(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_vote, args=(port, str(tmp_path / "vote")), nprocs=2)
    assert [(tmp_path / f"vote.{r}").read_text() for r in (0, 1)] == ["True False", "True False"]


@pytest.mark.slow  # a small pipeline whose training stage runs on two processes
def test_run_nproc_trains_each_training_stage_on_that_many_processes(tmp_path, capsys):
    from ml.cli import main
    from tests.ml._stage_fixtures import tiny_config

    cfg = tiny_config(tmp_path, weak_aligned=save_tiny(tmp_path / "models" / "post", seed=13), methods=["weak_sft"])
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    assert main(["run", str(path), "--nproc", "2", "--quiet"]) == 0
    assert capsys.readouterr().out.startswith("# ConG results")  # the results table
    done = read_json(tmp_path / "run" / "sft_weak" / "DONE.json")
    assert (done["world_size"], done["distributed"]) == (2, "ddp")
    assert (tmp_path / "run" / "sft_weak" / "launch" / "config.yaml").exists()  # it went through the launcher
    assert read_json(tmp_path / "run" / "results.json")["methods"]["weak_sft"]["model"].endswith("sft_weak/model")
