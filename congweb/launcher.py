"""`make serve` and `make demo`: one foreground command that owns every process it starts.

serve: embedded Redis (unless REDIS_URL is set) -> migrate -> ASGI server (daphne) + one Celery
worker, until Ctrl-C. demo: the same, plus the toy world, a demo user, one ConG job submitted over
the REST API and followed in the terminal from the job's events, then the results table.

Children get REDIS_URL explicitly, so they talk to the server this process started instead of each
starting their own. Logs go to VAR_DIR/logs/ so the terminal stays readable.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


class Stack:
    """The processes of one local deployment; stopping it stops all of them, newest first."""

    def __init__(self, port: int, var_dir: Path) -> None:
        self.port = port
        self.var_dir = var_dir
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.env = dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
        self.logs = var_dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)

    def start_redis(self) -> None:
        if "REDIS_URL" in os.environ:
            say(f"Redis: using REDIS_URL={os.environ['REDIS_URL']}")
            return
        from congweb import embedded_redis

        sock = self.var_dir / "redis" / "redis.sock"
        proc = embedded_redis.start(sock)
        if proc is not None:
            self.procs.append(("redis", proc))
            say(f"Redis: embedded redis-server on unix://{sock}")
        else:
            say(f"Redis: reusing the embedded server already on unix://{sock}")
        self.env["REDIS_URL"] = f"unix://{sock}"

    def run(self, *args: str, what: str) -> None:
        res = subprocess.run([PY, *args], cwd=ROOT, env=self.env)
        if res.returncode != 0:
            raise SystemExit(f"{what} failed (exit {res.returncode}); see the output above")

    def spawn(self, name: str, *args: str) -> None:
        log = (self.logs / f"{name}.log").open("ab")
        proc = subprocess.Popen([PY, *args], cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs.append((name, proc))
        say(f"{name}: started (pid {proc.pid}), log {self.logs / (name + '.log')}")

    def start_web_and_worker(self) -> None:
        self.spawn("web", "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port), "congweb.asgi:application")
        # -B runs the beat scheduler inside this one local worker: it fires the stale-job reaper, so a
        # job whose worker died is requeued or failed instead of staying "running".
        self.spawn("worker", "-m", "celery", "-A", "congweb", "worker", "-Q", "gpu,default",
                   "--concurrency", "1", "--loglevel", "INFO", "-n", f"local-{os.getpid()}@%h",
                   "-B", "-s", str(self.var_dir / "celerybeat-schedule"))
        self.wait_http(f"http://127.0.0.1:{self.port}/healthz")

    def wait_http(self, url: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.3)
        raise SystemExit(f"the web server did not answer {url} within {timeout:.0f}s; see {self.logs}/web.log")

    def check_alive(self) -> None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                raise SystemExit(f"{name} exited with code {proc.returncode}; see {self.logs}/{name}.log")

    def stop(self) -> None:
        for name, proc in reversed(self.procs):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for name, proc in reversed(self.procs):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def say(msg: str) -> None:
    print(f"congweb | {msg}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m congweb.launcher", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["serve", "demo"])
    ap.add_argument("--port", type=int, default=int(os.environ.get("PORT", 8000)))
    ap.add_argument("--exit", action="store_true", help="demo: exit after printing the results table")
    args = ap.parse_args(argv)

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "congweb.settings")
    # SIGTERM (docker stop, timeout, a supervisor) must clean up like Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    var_dir = Path(os.environ.get("VAR_DIR", ROOT / "var")).resolve()
    stack = Stack(args.port, var_dir)
    try:
        stack.start_redis()
        os.environ["REDIS_URL"] = stack.env.get("REDIS_URL", os.environ.get("REDIS_URL", ""))
        stack.run("manage.py", "migrate", "--noinput", "-v0", what="database migration")
        if args.mode == "demo":
            from congweb import demo

            code = demo.run(stack, exit_after=args.exit)
            if args.exit:
                return code
        else:
            stack.start_web_and_worker()
        say(f"dashboard: http://127.0.0.1:{args.port}/  (Ctrl-C stops everything)")
        while True:
            stack.check_alive()
            time.sleep(1)
    except KeyboardInterrupt:
        say("stopping")
        return 0
    finally:
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
