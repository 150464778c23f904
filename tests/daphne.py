"""daphne serving the project's ASGI app (congweb.asgi: HTTP and websockets, what `make web` runs) as a real
subprocess for tests, on a loopback port bound race-free. The e2e stack and the websocket tests share it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def listening_socket() -> socket.socket:
    """A loopback socket already bound (the kernel picks the port) and listening, to hand to daphne
    (``--fd``): nobody can take the port between choosing it and serving on it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


@contextmanager
def daphne_server(env: dict[str, str], log_path: Path, wait: float = 60.0) -> Iterator[str]:
    """daphne in its own process group with ``env`` (the test database's DATABASE_URL, the test Redis...);
    yields its base URL once /healthz answers, and stops it on exit."""
    log = open(log_path, "ab")
    with listening_socket() as sock:  # daphne adopts an inherited copy; ours closes
        port = sock.getsockname()[1]
        web = subprocess.Popen(
            [sys.executable, "-m", "daphne", "--fd", str(sock.fileno()), "congweb.asgi:application"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            pass_fds=(sock.fileno(),),
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + wait
        while True:  # polls the condition (daphne answers), no fixed sleep
            if web.poll() is not None:
                raise RuntimeError(f"daphne exited:\n{log_path.read_text(errors='replace')[-4000:]}")
            try:
                with urllib.request.urlopen(f"{base}/healthz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"daphne not up in {wait}s:\n{log_path.read_text(errors='replace')[-4000:]}")
            time.sleep(0.3)
        yield base
    finally:
        if web.poll() is None:
            os.killpg(web.pid, signal.SIGTERM)
            try:
                web.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(web.pid, signal.SIGKILL)
                web.wait(timeout=10)
        log.close()
