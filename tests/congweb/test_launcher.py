"""`make serve` brings up embedded Redis, web, worker and beat, and takes all of them down on SIGTERM.

Supervision under kill -9 (restarts, nothing outliving the launcher): tests/faults/test_launcher_supervision.py.
"""

from __future__ import annotations

import signal
import urllib.request
from pathlib import Path

import pytest

from tests.faults.launcher_proc import PID_LINE, Launcher, alive, descendants, wait_until


@pytest.mark.slow
def test_serve_starts_everything_and_stops_cleanly(tmp_path):
    # Launcher (tests/faults/launcher_proc.py): console to a file, and a port someone else took before
    # daphne bound it is noticed and replaced, never polled as if it were ours.
    lr = Launcher(tmp_path).start()
    try:
        lr.wait_ready()  # web on its port, worker ready with its pool child, beat started
        body = urllib.request.urlopen(f"http://127.0.0.1:{lr.port}/healthz", timeout=10).read()
        assert body == b'{"ok": true}'
        assert (tmp_path / "redis" / "redis.sock").exists()
        assert (tmp_path / "congweb.sqlite3").exists()
        tree = descendants(lr.proc.pid)
        # Words, not argv entries: celery renames its processes (setproctitle) at some point after start, and the
        # new title ("[celery beat] -A congweb beat ...") is one NUL-padded entry.
        cmdlines = {p: Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").split() for p in tree}
        lr.proc.send_signal(signal.SIGTERM)
        lr.proc.wait(timeout=60)
        out = lr.console()
        assert lr.proc.returncode == 0, out
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
    finally:
        lr.stop()  # after a failure: SIGTERM if still up, SIGKILL whatever it started that is left
