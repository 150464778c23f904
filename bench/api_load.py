"""Web tier load benchmark (loopback only, bounded in time).

Starts its own stack in a temporary VAR_DIR (SQLite + embedded Redis unless DATABASE_URL/REDIS_URL are
set) and the web tier as `make serve` runs it (congweb.web: gunicorn with uvicorn workers), then measures:
  1. POST /api/v1/jobs/: --jobs cd_generate jobs from 50 clients (no worker runs, so they stay queued:
     the job list below has --jobs rows to page through);
  2. for 1 web process and for --processes (default settings.WEB_CONCURRENCY), GET /api/v1/jobs/ (a page
     of 50): closed loop at 1, 10 and 50 clients (each client sends its next request when the last one
     answered; --seconds each): requests/s, p50, p95; then an open loop at a fixed --rate requests/s for
     --open-seconds (requests leave on schedule whether or not earlier ones answered; latency counts from
     the scheduled time, so a queue shows up): p50, p95 and whether p95 < 100 ms;
  3. GET / (the dashboard page, 200 rows) at 1 client, --processes processes;
  4. event latency: --ws-clients websocket clients subscribed to one job, spread over the web processes;
     --events events are written by the worker-side ProgressReporter in this process (DB row, then
     channel-layer group_send through Redis) and each client records receipt time minus send time.

    python bench/api_load.py            # human summary
    python bench/api_load.py --json     # one JSON object

The load generator (asyncio, one thread) runs on the same machine as the server, so on a small machine it
takes CPU the server would otherwise have; the numbers include that.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CLOSED_LOOP_CLIENTS = (1, 10, 50)
TARGET_P95_MS = 100.0
TARGET_EVENT_P95_MS = 300.0
# The job each POST creates. The tiny models hold 128 positions: cd_generate's default 256 new tokens would be a 400.
JOB_BODY = {
    "kind": "cd_generate",
    "alpha": 0.4,
    "params": {"max_prompts": 4, "max_new_tokens": 32},
}


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(q * (len(s) - 1)))))]


def summary(ms: list[float]) -> dict:
    return {
        "n": len(ms),
        "p50_ms": round(pct(ms, 0.5), 2),
        "p95_ms": round(pct(ms, 0.95), 2),
        "mean_ms": round(statistics.fmean(ms), 2),
        "max_ms": round(max(ms), 2),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setup_env(var: Path) -> subprocess.Popen | None:
    os.environ["VAR_DIR"] = str(var)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "congweb.settings")
    os.environ["MODEL_ROOTS"] = str(var / "models")
    os.environ["JOB_MAX_ACTIVE_PER_USER"] = "0"  # one user submits them all, and no worker runs them
    redis_proc = None
    if "REDIS_URL" not in os.environ:
        from congweb import embedded_redis

        sock = var / "redis" / "redis.sock"
        redis_proc = embedded_redis.start(sock)
        os.environ["REDIS_URL"] = f"unix://{sock}"
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)
    return redis_proc


def seed_data(var: Path):
    """A user with a token, a tiny weak pair and a prompt set, through the same services users hit."""
    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token

    from jobs import services
    from ml.tiny import tiny_gpt2, word_tokenizer

    user = get_user_model().objects.create_user("bench", password="bench-password-1")
    token = Token.objects.create(user=user).key
    tok = word_tokenizer("a b c d e review good bad :".split())
    ids = []
    for name, seed in (("base", 0), ("aligned", 1)):
        path = var / "models" / name
        tok.save_pretrained(path)
        tiny_gpt2(len(tok), seed=seed).save_pretrained(path)
        ids.append(services.model_register(name=f"bench-{name}", path=str(path), kind="weak").pk)
    rows = b"".join(json.dumps({"prompt": f"review a b {i} :"}).encode() + b"\n" for i in range(32))
    ds = services.dataset_create(name="bench-prompts", chunks=[rows], owner=user)
    return user, token, ids[0], ids[1], ds.pk


class WebTier:
    """`python -m congweb.web` with ``workers`` processes on a free loopback port, as the launcher runs it."""

    def __init__(self, workers: int, log: Path) -> None:
        self.port = free_port()
        self.log = log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "congweb.web", "--bind", f"127.0.0.1:{self.port}", "--workers", str(workers)],
            cwd=ROOT,
            env=dict(os.environ),
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2)
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the web tier did not start; see {log}") from None
                time.sleep(0.2)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)
        self.log.close()


class Conn:
    """One keep-alive HTTP/1.1 connection, as light as a client can be (the load generator shares the CPUs)."""

    def __init__(self, port: int, headers: dict[str, str]) -> None:
        self.port = port
        self.head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes = b"") -> int:
        if self.writer is not None:
            try:
                return await self._request(method, path, body)
            except (asyncio.IncompleteReadError, ConnectionError):
                # The server closed the idle connection (keep-alive timeout) before it read this request: it
                # was not served, so sending it again on a new connection is the same request, not a retry.
                self.close()
        return await self._request(method, path, body)

    async def _request(self, method: str, path: str, body: bytes) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None and self.writer is not None
        length = f"Content-Length: {len(body)}\r\nContent-Type: application/json\r\n" if body else ""
        self.writer.write(f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{self.head}{length}\r\n".encode() + body)
        head = await self.reader.readuntil(b"\r\n\r\n")
        m = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
        if m is None:
            raise RuntimeError(f"no Content-Length in {head[:200]!r}")
        await self.reader.readexactly(int(m.group(1)))
        if re.search(rb"(?i)\r\nconnection: *close", head):
            self.close()
        return int(head[9:12])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def closed_loop(port: int, headers: dict, path: str, clients: int, seconds: float, warmup: float = 1.0) -> dict:
    """``clients`` clients, each sending its next request as soon as the last one answered."""
    lat: list[float] = []
    errors: list[int] = []
    t_start = time.perf_counter() + warmup
    t_end = t_start + seconds

    async def client() -> None:
        conn = Conn(port, headers)
        while True:
            t0 = time.perf_counter()
            if t0 >= t_end:
                break
            code = await conn.request("GET", path)
            t1 = time.perf_counter()
            if t0 >= t_start and t1 <= t_end:  # only requests wholly inside the measured window
                lat.append((t1 - t0) * 1000)
                if code != 200:
                    errors.append(code)
        conn.close()

    await asyncio.gather(*(client() for _ in range(clients)))
    if errors:
        raise SystemExit(f"{len(errors)} failed requests, e.g. {errors[0]}")
    return {"clients": clients, "rps": round(len(lat) / seconds, 1), **summary(lat)}


async def open_loop(port: int, headers: dict, path: str, rate: float, seconds: float) -> dict:
    """Requests leave at a fixed ``rate`` whatever the server does; each takes an idle connection or opens one.
    Latency counts from the scheduled departure, so time spent waiting behind a slow server is counted."""
    idle: list[Conn] = []
    lat: list[float] = []
    errors: list[int] = []
    n = int(rate * seconds)
    start = time.perf_counter() + 0.2

    async def one(scheduled: float) -> None:
        conn = idle.pop() if idle else Conn(port, headers)
        code = await conn.request("GET", path)
        lat.append((time.perf_counter() - scheduled) * 1000)
        if code != 200:
            errors.append(code)
        idle.append(conn)

    tasks = []
    for i in range(n):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(scheduled)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    for c in idle:
        c.close()
    if errors:
        raise SystemExit(f"{len(errors)} failed requests, e.g. {errors[0]}")
    s = summary(lat)
    return {
        "rate_rps": rate,
        "achieved_rps": round(n / elapsed, 1),
        "connections": len(idle),
        **s,
        "p95_under_100ms": s["p95_ms"] < TARGET_P95_MS,
    }


async def post_jobs(port: int, headers: dict, body: bytes, total: int, clients: int = 50) -> list[float]:
    lat: list[float] = []
    left = [total]

    async def client() -> None:
        conn = Conn(port, headers)
        while left[0] > 0:
            left[0] -= 1
            t0 = time.perf_counter()
            code = await conn.request("POST", "/api/v1/jobs/", body)
            lat.append((time.perf_counter() - t0) * 1000)
            if code != 201:
                raise SystemExit(f"POST /api/v1/jobs/ -> {code}")
        conn.close()

    await asyncio.gather(*(client() for _ in range(clients)))
    return lat


async def ws_latency(port: int, session: str, job_id: int, n_clients: int, n_events: int) -> list[float]:
    import websockets

    from jobs.progress import ProgressReporter

    url = f"ws://127.0.0.1:{port}/ws/jobs/{job_id}/"
    hdrs = {"Cookie": f"sessionid={session}", "Origin": f"http://127.0.0.1:{port}"}
    conns = [
        await websockets.connect(url, additional_headers=hdrs, open_timeout=60, max_queue=None)
        for _ in range(n_clients)
    ]
    await asyncio.sleep(1.0)  # let every consumer join the group
    lat: list[float] = []

    async def reader(ws) -> None:
        got = 0
        while got < n_events:
            msg = json.loads(await asyncio.wait_for(ws.recv(), timeout=60))
            sent = (msg.get("data") or {}).get("bench_sent")
            if sent is not None:
                lat.append((time.time() - sent) * 1000)
                got += 1

    def emit() -> None:
        rep = ProgressReporter(job_id)
        for i in range(n_events):
            rep.emit("log", {"message": f"bench {i}", "bench_sent": time.time()})
            time.sleep(0.05)

    readers = [asyncio.create_task(reader(ws)) for ws in conns]
    await asyncio.get_running_loop().run_in_executor(None, emit)
    await asyncio.wait_for(asyncio.gather(*readers), timeout=120)
    for ws in conns:
        await ws.close()
    return lat


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--processes", type=int, default=None, help="N web processes (default: WEB_CONCURRENCY)")
    ap.add_argument("--jobs", type=int, default=200, help="jobs POSTed before the GETs")
    ap.add_argument("--seconds", type=float, default=8.0, help="each closed-loop level")
    ap.add_argument("--rate", type=float, default=100.0, help="open loop: requests per second")
    ap.add_argument("--open-seconds", type=float, default=20.0)
    ap.add_argument("--ws-clients", type=int, default=100)
    ap.add_argument("--events", type=int, default=40)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    var = Path(tempfile.mkdtemp(prefix="congweb-bench-"))
    redis_proc = setup_env(var)
    from django.conf import settings

    n_procs = args.processes or settings.WEB_CONCURRENCY
    user, token, base, aligned, ds = seed_data(var)
    api = {"Authorization": f"Token {token}", "Accept": "application/json"}
    from django.test import Client

    c = Client()
    c.force_login(user)
    session = c.cookies["sessionid"].value
    body = json.dumps(JOB_BODY | {"weak_base": base, "weak_aligned": aligned, "prompts": ds}).encode()
    out: dict = {
        "web_processes": n_procs,
        "cpus": os.cpu_count(),
        "jobs": args.jobs,
        "seconds_per_level": args.seconds,
        "closed_loop": [],
        "open_loop": [],
        "database": os.environ.get("DATABASE_URL", "sqlite (embedded)"),
    }
    web = None
    try:
        for procs in dict.fromkeys((1, n_procs)):  # 1, then N (once when N is 1)
            web = WebTier(procs, var / f"web-{procs}.log")
            if not out.get("post_jobs"):
                out["post_jobs"] = summary(asyncio.run(post_jobs(web.port, api, body, args.jobs)))
            asyncio.run(closed_loop(web.port, api, "/api/v1/jobs/", procs, 2.0, warmup=0))  # warm every process
            for clients in CLOSED_LOOP_CLIENTS:
                row = asyncio.run(closed_loop(web.port, api, "/api/v1/jobs/", clients, args.seconds))
                out["closed_loop"].append({"processes": procs, **row})
            ol = asyncio.run(open_loop(web.port, api, "/api/v1/jobs/", args.rate, args.open_seconds))
            out["open_loop"].append({"processes": procs, **ol})
            if procs == n_procs:
                page = {"Cookie": f"sessionid={session}"}
                out["dashboard"] = asyncio.run(closed_loop(web.port, page, "/", 1, args.seconds / 2))
                job_id = user.jobs.values_list("pk", flat=True).first()
                ws = asyncio.run(ws_latency(web.port, session, job_id, args.ws_clients, args.events))
                out["event_latency"] = {"ws_clients": args.ws_clients, **summary(ws)}
            web.stop()
            web = None
    finally:
        if web is not None:
            web.stop()
        if redis_proc is not None:
            redis_proc.terminate()
    top = out["open_loop"][-1]
    out["targets"] = {"open_loop_p95_ms": TARGET_P95_MS, "event_p95_ms": TARGET_EVENT_P95_MS}
    out["met"] = {
        "open_loop_p95": top["p95_under_100ms"],
        "event_p95": out["event_latency"]["p95_ms"] < TARGET_EVENT_P95_MS,
    }
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"POST /api/v1/jobs/ x{args.jobs}: p50 {out['post_jobs']['p50_ms']} ms, p95 {out['post_jobs']['p95_ms']} ms")
    for r in out["closed_loop"]:
        print(
            f"GET /api/v1/jobs/ closed loop, {r['processes']} proc, {r['clients']:>2} clients: "
            f"{r['rps']:7.1f} req/s  p50 {r['p50_ms']:7.1f} ms  p95 {r['p95_ms']:7.1f} ms"
        )
    for r in out["open_loop"]:
        print(
            f"GET /api/v1/jobs/ open loop {r['rate_rps']:.0f}/s, {r['processes']} proc: achieved {r['achieved_rps']}/s "
            f"p50 {r['p50_ms']:.1f} ms  p95 {r['p95_ms']:.1f} ms  (< {TARGET_P95_MS:.0f}: {r['p95_under_100ms']})"
        )
    d, e = out["dashboard"], out["event_latency"]
    print(f"GET / (dashboard), 1 client: p50 {d['p50_ms']} ms  p95 {d['p95_ms']} ms")
    print(f"event latency, {e['ws_clients']} websockets: p50 {e['p50_ms']} ms  p95 {e['p95_ms']} ms")
    print(f"targets met: {out['met']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
