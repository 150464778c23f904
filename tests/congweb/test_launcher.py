"""`make serve` brings up embedded Redis, web, worker and beat, and takes all of them down on SIGTERM.

Supervision under kill -9 (restarts, nothing outliving the launcher): tests/faults/test_launcher_supervision.py.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.faults.launcher_proc import PID_LINE, alive, descendants, wait_until

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_serve_starts_everything_and_stops_cleanly(tmp_path):
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env["VAR_DIR"] = str(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "congweb.launcher", "serve", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline, body = time.monotonic() + 90, None
        while time.monotonic() < deadline and body is None:
            assert proc.poll() is None, proc.stdout.read()
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2).read()
            except OSError:
                time.sleep(0.5)
        assert body == b'{"ok": true}'
        assert (tmp_path / "redis" / "redis.sock").exists()
        assert (tmp_path / "congweb.sqlite3").exists()
        tree = descendants(proc.pid)
        cmdlines = {p: Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0") for p in tree}
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "stopping" in out
    # DEBUG is the dev default: the console says so once, and how to turn it off.
    assert out.count("DEBUG is on") == 1 and "DEBUG=0" in out, out
    # beat is its own child, not embedded in the worker (`worker -B`), so the launcher owns it.
    pids = {name: int(pid) for name, pid in PID_LINE.findall(out)}
    assert set(pids) == {"redis", "web", "worker", "beat"}, out
    assert set(pids.values()) <= tree, (pids, tree)
    assert b"beat" in cmdlines[pids["beat"]] and b"-B" not in cmdlines[pids["worker"]], cmdlines
    # SIGTERM stops every process it started, grandchildren (the worker's pool child) included.
    wait_until(lambda: not any(alive(p) for p in tree), 20, f"{[p for p in tree if alive(p)]} of {tree} to stop")
    # Nothing it started outlives it: the embedded Redis socket no longer answers.
    from congweb.embedded_redis import ping

    assert not ping(tmp_path / "redis" / "redis.sock")
