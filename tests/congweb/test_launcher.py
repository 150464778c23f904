"""`make serve` brings up embedded Redis, web and worker, and takes all of them down on SIGTERM."""

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
    proc = subprocess.Popen([sys.executable, "-m", "congweb.launcher", "serve", "--port", str(port)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
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
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "stopping" in out
    # Nothing it started outlives it: the embedded Redis socket no longer answers.
    from congweb.embedded_redis import ping

    assert not ping(tmp_path / "redis" / "redis.sock")
