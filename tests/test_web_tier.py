"""`make serve` runs WEB_CONCURRENCY web processes (congweb.web: gunicorn + uvicorn workers), each serving HTTP
and websockets, and a job event published by another process reaches clients on every one of them (the channel
layer is the embedded Redis, not per-process memory)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from jobs.notify import group_name
from tests.faults.launcher_proc import ROOT, Launcher, PortTaken, alive, free_port, listens_on, wait_until


def children(pid: int) -> set[int]:
    found = set()
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and alive(int(d.name)):
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.add(int(d.name))
            except (OSError, IndexError, ValueError):
                continue
    return found


def serving_pid(server_port: int, client_port: int, pids: set[int]) -> int | None:
    """Which of ``pids`` holds the server side of the loopback TCP connection from ``client_port``."""
    inode = None
    for row in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = row.split()
        local, remote = int(f[1].rsplit(":", 1)[1], 16), int(f[2].rsplit(":", 1)[1], 16)
        if f[3] == "01" and local == server_port and remote == client_port:  # 01: ESTABLISHED
            inode = f"socket:[{f[9]}]"
    for pid in pids:
        try:
            if any(os.readlink(fd) == inode for fd in Path(f"/proc/{pid}/fd").iterdir()):
                return pid
        except OSError:
            continue
    return None


def publish(sock: Path, job_id: int, event: dict) -> None:
    """What jobs.notify.notify sends, through a channel layer configured as settings say, on the given Redis."""
    from asgiref.sync import async_to_sync
    from channels_redis.core import RedisChannelLayer
    from django.conf import settings

    config = dict(settings.CHANNEL_LAYERS["default"]["CONFIG"], hosts=[f"unix://{sock}"])
    layer = RedisChannelLayer(**config)
    async_to_sync(layer.group_send)(group_name(job_id), {"type": "job.event", "event": event})


def shell(lr: Launcher, script: str) -> str:
    """Python in a process of its own on the launcher's database and Redis (as a Celery worker would be)."""
    out = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", script],
        cwd=ROOT,
        env=lr.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, f"{out.stdout}\n{out.stderr}"
    return out.stdout


def start_web_only(lr: Launcher, tries: int = 3) -> None:
    """Wait for the web tier only (not the Celery worker and beat); start over on another port if one was taken."""
    for attempt in range(tries):
        try:
            wait_until(lr.web_up, 120, f"/healthz\n{lr.report()}")
            return
        except PortTaken:
            if attempt == tries - 1:
                raise
            lr.stop()
            lr.port = free_port()
            lr.start()


@pytest.mark.slow
def test_serve_runs_web_concurrency_processes_and_websockets_reach_each(tmp_path):
    from websockets.sync.client import connect

    lr = Launcher(tmp_path, WEB_CONCURRENCY="2").start()
    conns = []
    try:
        start_web_only(lr)
        assert "congweb | web: 2 processes (WEB_CONCURRENCY)" in lr.console(), lr.report()
        master = lr.pid("web")
        workers = wait_until(lambda: len(children(master)) == 2 and children(master), 60, f"2 workers\n{lr.report()}")
        # Each worker serves the port itself (the master only forks and watches them).
        assert all(listens_on(w, lr.port) for w in workers), workers
        # Several processes on one SQLite file: readers must not wait for writers.
        with sqlite3.connect(tmp_path / "congweb.sqlite3") as db:
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"

        setup = shell(
            lr,
            "import json\n"
            "from django.contrib.auth import get_user_model\n"
            "from django.test import Client\n"
            "from jobs.models import Job\n"
            "u = get_user_model().objects.create_user(username='web', password='pw-web-12345')\n"
            "job = Job.objects.create(owner=u, kind='cd_generate', config={})\n"
            "c = Client()\n"
            "c.force_login(u)\n"
            "print('SETUP ' + json.dumps({'job': job.pk, 'session': c.cookies['sessionid'].value}))\n",
        )
        ids = json.loads(setup.split("SETUP ", 1)[1])
        url = f"ws://127.0.0.1:{lr.port}/ws/jobs/{ids['job']}/"
        headers = {"Cookie": f"sessionid={ids['session']}", "Origin": f"http://127.0.0.1:{lr.port}"}
        # Connect until both processes hold at least one websocket (the kernel hands each connection to one).
        served: dict[int, int] = {}
        while len(conns) < 40 and set(served.values()) != workers:
            ws = connect(url, additional_headers=headers, open_timeout=30)
            conns.append(ws)
            pid = serving_pid(lr.port, ws.socket.getsockname()[1], workers)
            assert pid is not None, "no web worker holds the connection"
            served[id(ws)] = pid
        assert set(served.values()) == workers, f"40 connections all went to {set(served.values())}"

        # Published by another process (this one, as a Celery worker would): group_send through the launcher's Redis.
        publish(tmp_path / "redis" / "redis.sock", ids["job"], {"seq": 1, "type": "log", "data": {"message": "hello"}})
        for ws in conns:
            msg = json.loads(ws.recv(timeout=30))
            assert msg["type"] == "log" and msg["data"]["message"] == "hello", (served[id(ws)], msg)
        for ws in conns:
            ws.close()
        conns.clear()

        # A master killed with SIGKILL takes its workers with it (they ask for it, congweb.web.UvicornWorker), and
        # the launcher starts a new web tier.
        os.kill(master, signal.SIGKILL)
        wait_until(lambda: not any(alive(w) for w in workers), 20, f"workers {workers} to die with their master")
        lr.wait_console(r"^congweb \| web: restarted \(pid \d+\), restart 1")
        wait_until(lr.healthy, 60, f"/healthz after the web restart\n{lr.report()}")
    finally:
        for ws in conns:
            ws.close()
        lr.stop()


def test_the_web_app_loads_without_torch():
    """A web process imports its URLs and ASGI app without torch or transformers (each costs seconds and hundreds of
    MB per process): the params schema that names ml's stage configs is built when the OpenAPI document is."""
    code = (
        "import sys, django; django.setup(); import congweb.urls, congweb.asgi; "
        "print(sorted(m for m in ('torch', 'transformers', 'trl') if m in sys.modules))"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "congweb.settings"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
