"""A real `python -m congweb.launcher serve` for tests: its own port, VAR_DIR, SQLite file and Redis.

The console goes to a file (read while it runs, no pipe to drain), children's pids are read from it
("NAME: started (pid N)" / "NAME: restarted (pid N)"), and liveness is read from /proc, where a
zombie (dead, not yet reaped by whoever inherited it) counts as dead.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PID_LINE = re.compile(r"^congweb \| (\w+): (?:started|restarted) \(pid (\d+)\)", re.M)


def free_port() -> int:
    """A port free now. The launcher binds it itself later (it takes a number, not a socket), so another
    process may take it first: ``Launcher.wait_ready`` notices the web server's bind failure and starts over on
    another port, and checks the port it polls is held by its own web process."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bind_failed(log: str, port: int) -> bool:
    """The web server could not listen on ``port``: gunicorn (congweb.web) logs "Connection in use: (HOST, PORT)"
    (and retries, then gives up); daphne "Couldn't listen on HOST:PORT: ..."."""
    return f"Connection in use: ('127.0.0.1', {port})" in log or f"Couldn't listen on 127.0.0.1:{port}:" in log


def listens_on(pid: int, port: int) -> bool:
    """Process ``pid`` holds a listening TCP socket on ``port`` (from /proc/net/tcp* and its fds)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            f = row.split()
            if f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(f"socket:[{f[9]}]")
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(fd) in inodes:
                return True
        except OSError:
            continue
    return False


class PortTaken(Exception):
    pass


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def descendants(root: int) -> set[int]:
    """Every live process below ``root`` (children, grandchildren ...), from /proc."""
    parent_of: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parent_of[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # gone meanwhile
    found, frontier = set(), {root}
    while frontier:
        frontier = {p for p, pp in parent_of.items() if pp in frontier and p not in found}
        found |= frontier
    return {p for p in found if alive(p)}


def wait_until(pred, timeout: float, what: str, interval: float = 0.3):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


class Launcher:
    def __init__(self, var_dir: Path, **env: str) -> None:
        self.var_dir = var_dir
        self.port = free_port()
        self.env = {
            k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL") and not k.startswith("PYTEST")
        }
        self.env.update(
            {
                "VAR_DIR": str(var_dir),
                "DJANGO_SETTINGS_MODULE": "congweb.settings",
                "OMP_WAIT_POLICY": "PASSIVE",
                "OMP_NUM_THREADS": "1",
                "PYTHONUNBUFFERED": "1",
                **env,
            }
        )
        self.console_path = var_dir / "console.txt"
        self.proc: subprocess.Popen | None = None
        self.seen: set[int] = set()  # every child pid ever reported, for the cleanup

    # --- running it --------------------------------------------------------------------------------
    def start(self) -> Launcher:
        self.var_dir.mkdir(parents=True, exist_ok=True)
        with self.console_path.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "congweb.launcher", "serve", "--port", str(self.port)],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return self

    def console(self) -> str:
        return self.console_path.read_text(errors="replace")

    def log(self, name: str) -> str:
        p = self.var_dir / "logs" / f"{name}.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def report(self) -> str:
        tails = "".join(f"\n--- {n}.log ---\n{self.log(n)[-1500:]}" for n in ("web", "worker", "beat"))
        return f"--- console ---\n{self.console()}{tails}"

    def pids(self, name: str) -> list[int]:
        """Every pid the launcher reported for ``name``, oldest first."""
        found = [int(pid) for n, pid in PID_LINE.findall(self.console()) if n == name]
        self.seen.update(found)
        return found

    def pid(self, name: str) -> int:
        return self.pids(name)[-1]

    def get(self, path: str, token: str | None = None, body: dict | None = None, timeout: float = 10):
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            method="POST" if body else "GET",
            data=json.dumps(body).encode() if body else None,
        )
        req.add_header("Content-Type", "application/json")
        if token:
            req.add_header("Authorization", f"Token {token}")
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())

    def healthy(self) -> bool:
        assert self.proc.poll() is None, f"the launcher exited with {self.proc.returncode}:\n{self.report()}"
        try:
            return self.get("/healthz", timeout=3) == {"ok": True}
        except (OSError, ValueError):
            return False

    def web_up(self) -> bool:
        """Our own web server listens on self.port and answers /healthz (not some process that took the port
        between free_port() and its bind); PortTaken when it could not bind it."""
        if bind_failed(self.log("web"), self.port):
            raise PortTaken(self.port)
        web = self.pids("web")
        return bool(web) and listens_on(web[-1], self.port) and self.healthy()

    def wait_ready(self, timeout: float = 150, tries: int = 3) -> Launcher:
        """Web answers, the worker said "ready." and has its pool child, beat started: all is up. A port
        taken by someone else before the web server bound it: stop, and start over on another (``tries`` in all)."""
        for attempt in range(1, tries + 1):
            try:
                wait_until(self.web_up, timeout, f"/healthz\n{self.report()}")
                break
            except PortTaken:
                if attempt == tries:
                    raise AssertionError(
                        f"port {self.port} was taken each of {tries} times:\n{self.report()}"
                    ) from None
                self.stop()
                self.port = free_port()
                self.start()
        wait_until(
            lambda: " ready." in self.log("worker") and "beat: Starting" in self.log("beat"),
            timeout,
            f"worker and beat\n{self.report()}",
        )
        for name in ("redis", "web", "worker", "beat"):
            self.pids(name)
        # The prefork pool child may be forked just after "ready." is logged.
        wait_until(lambda: descendants(self.pid("worker")), 30, f"the worker's pool child\n{self.report()}")
        return self

    def wait_console(self, pattern: str, timeout: float = 60) -> re.Match:
        return wait_until(
            lambda: re.search(pattern, self.console(), re.M), timeout, f"console line /{pattern}/\n{self.report()}"
        )

    def setup_job_owner(self, model_root: Path, n_prompts: int) -> dict:
        """A user with a token, the tiny weak pair and a prompts dataset, in the launcher's database."""
        script = f"""
import json
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token
from jobs import services
u = get_user_model().objects.create_user(username="sup", password="pw-sup-123")
wb = services.model_register(name="wb", path={str(model_root / "weak_base")!r}, kind="weak", owner=u)
wa = services.model_register(name="wa", path={str(model_root / "weak_aligned")!r}, kind="weak", owner=u)
rows = "".join(json.dumps({{"prompt": f"the movie {{i}} was"}}) + "\\n" for i in range({n_prompts}))
ds = services.dataset_create(name="p", chunks=[rows.encode()], owner=u)
print("SETUP " + json.dumps({{"token": Token.objects.create(user=u).key, "wb": wb.pk, "wa": wa.pk, "ds": ds.pk}}))
"""
        out = subprocess.run(
            [sys.executable, "manage.py", "shell", "-c", script],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        line = [ln for ln in out.stdout.splitlines() if ln.startswith("SETUP ")]
        assert out.returncode == 0 and line, f"setup failed:\n{out.stdout}\n{out.stderr}"
        return json.loads(line[0][len("SETUP ") :])

    def submit_cd_generate(self, owner: dict) -> dict:
        body = {
            "kind": "cd_generate",
            "weak_base": owner["wb"],
            "weak_aligned": owner["wa"],
            "prompts": owner["ds"],
            "alpha": 0.4,
            "params": {"batch_size": 1, "max_new_tokens": 16, "cd_generate": {"ignore_eos": True}},
        }
        return self.get("/api/v1/jobs/", owner["token"], body)

    # --- ending it ---------------------------------------------------------------------------------
    def stop(self) -> None:
        """SIGTERM, then make sure nothing is left (a failed test must not leave processes behind)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.seen |= descendants(self.proc.pid)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid in self.seen:
            for kill in (os.killpg, os.kill):  # a child leads its own group; a grandchild does not
                if alive(pid):
                    try:
                        kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
