"""API and live-event load benchmark (loopback only, bounded in count and time).

Starts its own stack in a temporary VAR_DIR (SQLite + embedded Redis unless DATABASE_URL/REDIS_URL
are set, and a daphne ASGI server), then measures:
  1. GET  /api/v1/jobs/  latency at --clients concurrent clients (keep-alive, --requests each);
  2. POST /api/v1/jobs/  latency at --clients concurrent clients (--posts each, cd_generate jobs);
  3. event latency: --ws-clients websocket clients subscribed to one job; --events events are
     written by the worker-side ProgressReporter (DB row, then channel-layer group_send) and each
     client records receipt time minus send time.

    python bench/api_load.py            # human summary
    python bench/api_load.py --json     # one JSON object

The load generator runs on the same 2-core machine as the server, so numbers include its cost.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


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


def http_load(port: int, token: str, clients: int, per_client: int, method: str, body: dict | None) -> list[float]:
    lat: list[float] = []
    lock = threading.Lock()
    payload = json.dumps(body).encode() if body else None
    headers = {"Authorization": f"Token {token}", "Accept": "application/json"}
    if payload:
        headers["Content-Type"] = "application/json"
    errors: list[str] = []
    barrier = threading.Barrier(clients)

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        barrier.wait()
        mine = []
        for _ in range(per_client):
            t0 = time.perf_counter()
            conn.request(method, "/api/v1/jobs/", body=payload, headers=headers)
            resp = conn.getresponse()
            resp.read()
            mine.append((time.perf_counter() - t0) * 1000)
            if resp.status >= 400:
                errors.append(f"{method} -> {resp.status}")
        conn.close()
        with lock:
            lat.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    if errors:
        raise SystemExit(f"{len(errors)} failed requests, e.g. {errors[0]}")
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
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--requests", type=int, default=20, help="GET requests per client")
    ap.add_argument("--posts", type=int, default=4, help="POST requests per client")
    ap.add_argument("--ws-clients", type=int, default=100)
    ap.add_argument("--events", type=int, default=40)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    var = Path(tempfile.mkdtemp(prefix="congweb-bench-"))
    redis_proc = setup_env(var)
    user, token, base, aligned, ds = seed_data(var)
    port = free_port()
    web = subprocess.Popen(
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "congweb.asgi:application"],
        cwd=ROOT,
        env=dict(os.environ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        body = {
            "kind": "cd_generate",
            "weak_base": base,
            "weak_aligned": aligned,
            "prompts": ds,
            "alpha": 0.4,
            # The tiny models hold 128 positions: cd_generate's default 256 new tokens would be a 400.
            "params": {"max_prompts": 4, "max_new_tokens": 32},
        }
        post = http_load(port, token, args.clients, args.posts, "POST", body)
        get = http_load(port, token, args.clients, args.requests, "GET", None)

        from django.test import Client

        from jobs.models import Job

        c = Client()
        c.force_login(user)
        job_id = Job.objects.filter(owner=user).values_list("pk", flat=True).first()
        ws = asyncio.run(ws_latency(port, c.cookies["sessionid"].value, job_id, args.ws_clients, args.events))
    finally:
        web.terminate()
        web.wait(timeout=30)
        if redis_proc is not None:
            redis_proc.terminate()
    out = {
        "clients": args.clients,
        "ws_clients": args.ws_clients,
        "get_jobs": summary(get),
        "post_jobs": summary(post),
        "event_latency": summary(ws),
        "targets": {"get_p95_ms": 100, "event_p95_ms": 300},
        "met": {"get_p95": pct(get, 0.95) < 100, "event_p95": pct(ws, 0.95) < 300},
        "database": os.environ.get("DATABASE_URL", "sqlite (embedded)"),
    }
    if args.json:
        print(json.dumps(out))
    else:
        for k in ("get_jobs", "post_jobs", "event_latency"):
            s = out[k]
            print(f"{k:>14}: p50 {s['p50_ms']:8.1f} ms   p95 {s['p95_ms']:8.1f} ms   n={s['n']}")
        print(f"targets met: {out['met']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
