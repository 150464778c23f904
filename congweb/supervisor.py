"""The processes of `make serve` / `make demo`: started, restarted when they die, and never left behind.

Used by congweb.launcher (serve) and congweb.demo (demo); both import it, it imports neither.

- Each child gets its own session (process group), so a stop or a restart can kill a child together
  with whatever it forked (the worker's pool child), and Ctrl-C in the terminal reaches the launcher
  only, which then stops the children newest first.
- Each child asks the kernel for SIGKILL when the launcher dies (PR_SET_PDEATHSIG): a launcher
  killed with SIGKILL runs no cleanup, and without this its children would run on as orphans (a
  celery beat firing reaper tasks into the next stack's Redis). Celery's prefork pool children ask
  the same of the worker, so the whole tree goes.
- A child that dies (web, worker, beat, embedded Redis) is restarted after 1 s, 2 s, 4 s ... at most
  BACKOFF_MAX_S; the wait starts again from 1 s once a child has stayed up STABLE_AFTER_S.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from congweb.parent_death import exit_with_parent, libc

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable

BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 30.0
STABLE_AFTER_S = 60.0
STOP_GRACE_S = 15.0


def say(msg: str) -> None:
    print(f"congweb | {msg}", flush=True)


def die_with_parent() -> Callable[[], None] | None:
    """A Popen preexec_fn that makes the child get SIGKILL when this process dies (exit_with_parent)."""
    if not sys.platform.startswith("linux"):
        return None
    libc()  # loaded before the fork: the child between fork and exec should do as little as it can
    parent = os.getpid()
    return lambda: exit_with_parent(parent)


def kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass  # nothing left in the group


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class Child:
    """One supervised process. ``start_fn`` starts it and returns its Popen (started with
    start_new_session=True and die_with_parent()), or None when it found one it does not own."""

    def __init__(self, name: str, start_fn: Callable[[], subprocess.Popen | None], log: Path) -> None:
        self.name = name
        self.start_fn = start_fn
        self.log = log
        self.proc: subprocess.Popen | None = None
        self.started_at = 0.0
        self.restarts = 0
        self.quick_deaths = 0  # deaths in a row, each within STABLE_AFTER_S of its start: sets the wait
        self.restart_at: float | None = None
        self.owned = True

    def start(self) -> None:
        self.proc = self.start_fn()
        self.started_at = time.monotonic()
        if self.proc is None:
            self.owned = False

    def check(self, now: float) -> None:
        """Notice a death and schedule the restart; run the restart once it is due."""
        if not self.owned:
            return
        if self.restart_at is not None:
            if now >= self.restart_at:
                self._restart()
            return
        proc = self.proc
        code = proc.poll() if proc else None
        if proc is None or code is None:
            return
        # The main process is gone; anything it forked must not keep running (e.g. a pool child
        # still holding a job), and the group must be empty before the next one starts.
        kill_group(proc.pid, signal.SIGKILL)
        up = now - self.started_at
        self.quick_deaths = 1 if up >= STABLE_AFTER_S else self.quick_deaths + 1
        delay = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (self.quick_deaths - 1))
        self.restart_at = now + delay
        say(
            f"{self.name} (pid {proc.pid}) {describe_exit(code)} after {up:.0f}s up; "
            f"restarting it in {delay:.0f}s (see {self.log})"
        )

    def _restart(self) -> None:
        self.restarts += 1
        self.restart_at = None
        try:
            self.start()
        except Exception as exc:  # e.g. Redis did not come up: count it as one more quick death
            self.quick_deaths += 1
            delay = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (self.quick_deaths - 1))
            self.restart_at = time.monotonic() + delay
            say(f"{self.name}: restart {self.restarts} failed ({exc}); trying again in {delay:.0f}s")
            return
        if self.proc is None:
            say(f"{self.name}: another server now answers in its place; using it, no longer supervised")
        else:
            say(f"{self.name}: restarted (pid {self.proc.pid}), restart {self.restarts}, log {self.log}")


class Stack:
    """The processes of one local deployment; stopping it stops all of them, newest first."""

    def __init__(self, port: int, var_dir: Path) -> None:
        self.port = port
        self.var_dir = var_dir
        self.children: list[Child] = []
        self.env = dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
        self.logs = var_dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)

    def start_redis(self) -> None:
        if "REDIS_URL" in os.environ:
            say(f"Redis: using REDIS_URL={os.environ['REDIS_URL']}")
            return
        from congweb import embedded_redis

        sock = self.var_dir / "redis" / "redis.sock"
        self.env["REDIS_URL"] = f"unix://{sock}"
        if embedded_redis.ping(sock):
            say(f"Redis: reusing the embedded server already on unix://{sock} (not supervised)")
            return
        child = Child(
            "redis", lambda: embedded_redis.start(sock, preexec_fn=die_with_parent()), sock.parent / "redis.log"
        )
        child.start()
        if child.proc is None:
            say(f"Redis: reusing the embedded server that just came up on unix://{sock} (not supervised)")
            return
        self.children.append(child)
        say(f"redis: started (pid {child.proc.pid}), embedded redis-server on unix://{sock}, log {child.log}")

    def run(self, *args: str, what: str) -> None:
        res = subprocess.run([PY, *args], cwd=ROOT, env=self.env, preexec_fn=die_with_parent())
        if res.returncode != 0:
            raise SystemExit(f"{what} failed (exit {res.returncode}); see the output above")

    def spawn(self, name: str, *args: str) -> None:
        log_path = self.logs / f"{name}.log"

        def start() -> subprocess.Popen:
            with log_path.open("ab") as log:  # the child keeps its own descriptor
                log.write(f"--- congweb launcher: starting {name} at {time.ctime()} ---\n".encode())
                log.flush()
                return subprocess.Popen(
                    [PY, *args],
                    cwd=ROOT,
                    env=self.env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=die_with_parent(),
                )

        child = Child(name, start, log_path)
        child.start()
        self.children.append(child)
        say(f"{name}: started (pid {child.proc.pid if child.proc else '?'}), log {log_path}")

    def start_services(self) -> None:
        """web (gunicorn: WEB_CONCURRENCY uvicorn processes, congweb.web), one Celery worker and celery beat,
        each its own supervised process (web's workers are the gunicorn master's to restart)."""
        from congweb import web  # not at the top: it imports uvicorn and gunicorn, which demo's import needs not

        workers = web.web_concurrency()
        self.spawn("web", *web.argv(f"127.0.0.1:{self.port}", workers))
        say(f"web: {workers} processes (WEB_CONCURRENCY)")
        self.spawn(
            "worker",
            "-m",
            "celery",
            "-A",
            "congweb",
            "worker",
            "-Q",
            "gpu,default",
            "--concurrency",
            "1",
            "--loglevel",
            "INFO",
            "-n",
            f"local-{os.getpid()}@%h",
        )
        # beat fires the stale-job reaper, so a job whose worker died is requeued or failed instead of
        # staying "running". Its own process (not `worker -B`): a worker restart does not stop the
        # reaper, and the launcher can see and stop beat like every other child.
        self.spawn(
            "beat",
            "-m",
            "celery",
            "-A",
            "congweb",
            "beat",
            "--loglevel",
            "INFO",
            "-s",
            str(self.var_dir / "celerybeat-schedule"),
        )
        self.wait_http(f"http://127.0.0.1:{self.port}/healthz")

    def wait_http(self, url: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.tick()
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.3)
        raise SystemExit(f"the web server did not answer {url} within {timeout:.0f}s; see {self.logs}/web.log")

    def tick(self) -> None:
        """Restart what died (call it often: the main loop does, and so do long waits)."""
        now = time.monotonic()
        for child in self.children:
            child.check(now)

    def stop(self) -> None:
        live = [(c, c.proc) for c in reversed(self.children) if c.proc is not None]
        for _, proc in live:
            kill_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for child, proc in live:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                say(f"{child.name} did not stop within {STOP_GRACE_S:.0f}s of SIGTERM; killing it")
            kill_group(proc.pid, signal.SIGKILL)  # and whatever it forked that is still there
            proc.wait()
