"""`make serve` supervision: a child killed with kill -9 is restarted and the rest keep serving; a
launcher killed with kill -9 takes every child with it. Real launcher, real processes, no mocks.

Each test starts its own `python -m congweb.launcher serve` (own port, VAR_DIR, SQLite, embedded
Redis); see launcher_proc.py. Jobs are the tiny weak pair of the jobs fixtures, submitted over REST.
"""

from __future__ import annotations

import os
import signal

import pytest

from tests.faults.launcher_proc import Launcher, alive, descendants, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.slow]

N = 120  # prompts at batch size 1, 16 forced tokens: a job of ~10 s, long enough to kill half way


@pytest.fixture
def launcher(tmp_path, tiny_model_root):
    started: list[Launcher] = []

    def make() -> Launcher:
        # A 1 s heartbeat and a 6 s stale window: beat's reaper runs every 3 s, so a job whose worker
        # died is requeued within seconds instead of the default two minutes.
        lr = Launcher(
            tmp_path / f"var{len(started)}",
            MODEL_ROOTS=str(tiny_model_root),
            JOB_HEARTBEAT_SECONDS="1",
            JOB_STALE_AFTER_SECONDS="6",
        )
        started.append(lr)
        return lr.start().wait_ready()

    yield make
    for lr in started:
        lr.stop()


def _job(lr: Launcher, owner: dict, job_id: int) -> dict:
    return lr.get(f"/api/v1/jobs/{job_id}/", owner["token"])


def _finished(lr: Launcher, owner: dict, job_id: int, timeout: float) -> dict:
    return wait_until(
        lambda: (j := _job(lr, owner, job_id))["status"] in ("succeeded", "failed", "cancelled") and j,
        timeout,
        f"job {job_id} to finish\n{lr.report()}",
        interval=1,
    )


def test_worker_kill9_mid_job_is_restarted_and_the_job_succeeds(launcher, tiny_model_root):
    lr = launcher()
    web, beat, old = lr.pid("web"), lr.pid("beat"), lr.pid("worker")
    owner = lr.setup_job_owner(tiny_model_root, N)
    job_id = lr.submit_cd_generate(owner)["id"]
    job = wait_until(
        lambda: (j := _job(lr, owner, job_id))["pair_count"] >= 5 and j,
        90,
        f"first pairs of job {job_id}\n{lr.report()}",
    )
    assert job["status"] == "running" and job["pair_count"] < N, job

    pool = descendants(old)  # the prefork child running the job
    os.kill(old, signal.SIGKILL)  # the worker's main process only, as the OOM killer would
    lr.wait_console(rf"^congweb \| worker \(pid {old}\) was killed by SIGKILL .* restarting it in 1s")
    lr.wait_console(r"^congweb \| worker: restarted \(pid \d+\), restart 1")
    assert lr.pid("worker") != old
    wait_until(lambda: not any(alive(p) for p in pool | {old}), 15, f"the old worker's pool child {pool} to die")

    # beat (still the same process) reaps the stale job; the new worker resumes it to the end.
    job = _finished(lr, owner, job_id, 150)
    assert job["status"] == "succeeded", job.get("error")
    assert job["attempts"] == 2 and job["pair_count"] == N, job
    assert lr.pids("web") == [web] and lr.pids("beat") == [beat] and alive(web) and alive(beat)


def test_redis_kill9_is_restarted_and_web_keeps_answering(launcher, tiny_model_root):
    from congweb.embedded_redis import ping

    lr = launcher()
    owner = lr.setup_job_owner(tiny_model_root, 10)
    web, old = lr.pid("web"), lr.pid("redis")
    os.kill(old, signal.SIGKILL)
    lr.wait_console(rf"^congweb \| redis \(pid {old}\) was killed by SIGKILL .* restarting it in 1s")
    lr.wait_console(r"^congweb \| redis: restarted \(pid \d+\), restart 1")
    new = lr.pid("redis")
    assert new != old and alive(new) and not alive(old)
    assert ping(lr.var_dir / "redis" / "redis.sock")
    wait_until(lr.healthy, 30, f"/healthz after the Redis restart\n{lr.report()}")
    assert lr.pids("web") == [web] and alive(web), "the web process must survive a Redis restart"

    # The stack works on the new (empty) Redis: web sends the job, the reconnected worker runs it.
    job = _finished(lr, owner, lr.submit_cd_generate(owner)["id"], 120)
    assert job["status"] == "succeeded" and job["pair_count"] == 10, job

    # The web process itself is restarted too.
    os.kill(web, signal.SIGKILL)
    lr.wait_console(r"^congweb \| web: restarted \(pid \d+\), restart 1")
    wait_until(lr.healthy, 60, f"/healthz after the web restart\n{lr.report()}")
    assert lr.pid("web") != web


def test_launcher_kill9_leaves_no_child_behind(launcher):
    from congweb.embedded_redis import ping

    lr = launcher()
    children = {name: lr.pid(name) for name in ("redis", "web", "worker", "beat")}
    tree = descendants(lr.proc.pid)  # the four children and the worker's pool child
    assert set(children.values()) <= tree and len(tree) >= 5, (children, tree)

    lr.proc.kill()  # SIGKILL: the launcher runs no cleanup at all
    lr.proc.wait(timeout=10)
    wait_until(
        lambda: not any(alive(p) for p in tree),
        20,
        f"every child to die with the launcher; alive: {[p for p in tree if alive(p)]} of {children}",
    )
    assert not ping(lr.var_dir / "redis" / "redis.sock")
