"""Where the time of one job-list request goes, in-process (no server, no network): the dashboard page (GET /)
and the API's list (GET /api/v1/jobs/), with --jobs jobs in the database.

For each: response size, the number of SQL queries, and the median time per request over --rounds rounds of
--requests requests, wall and CPU (process) time: CPU time is what to compare on a machine other work shares.
Django's test client, DEBUG as settings have it; its request_started/finished handlers do not run, so
database connection setup is not counted. --profile also prints a pyinstrument profile (if installed) or
a cProfile one.

    python bench/web_profile.py --json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from api_load import JOB_BODY, seed_data, setup_env  # noqa: E402

PAGES = {"dashboard": "/", "api_list": "/api/v1/jobs/"}


def profile(fn, n: int) -> str:
    try:
        from pyinstrument import Profiler
    except ImportError:
        import cProfile
        import io
        import pstats

        prof = cProfile.Profile()
        prof.runcall(lambda: [fn() for _ in range(n)])
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(40)
        return out.getvalue()
    p = Profiler(interval=0.0005)
    p.start()
    for _ in range(n):
        fn()
    p.stop()
    return p.output_text(color=False, unicode=False, show_all=bool(os.environ.get("PROFILE_ALL")))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--requests", type=int, default=20)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    var = Path(tempfile.mkdtemp(prefix="congweb-profile-"))
    os.environ.setdefault("ALLOWED_HOSTS", "testserver")
    redis_proc = setup_env(var)
    try:
        from django.db import connection
        from django.test import Client
        from django.test.utils import CaptureQueriesContext

        user, token, base, aligned, ds = seed_data(var)
        page = Client()
        page.force_login(user)
        api = Client(headers={"authorization": f"Token {token}"})
        body = json.dumps(JOB_BODY | {"weak_base": base, "weak_aligned": aligned, "prompts": ds})
        for _ in range(args.jobs):
            r = api.post("/api/v1/jobs/", data=body, content_type="application/json")
            assert r.status_code == 201, r.content[:300]
        out: dict = {"jobs": args.jobs}
        for name, url in PAGES.items():
            client = api if name.startswith("api") else page
            with CaptureQueriesContext(connection) as q:
                r = client.get(url)
            assert r.status_code == 200, (url, r.status_code)
            n_queries = len(q)  # now: the next request's request_started resets the query log it reads
            times, cpu = [], []
            for _ in range(args.rounds):
                t0, c0 = time.perf_counter(), time.process_time()
                for _ in range(args.requests):
                    client.get(url)
                times.append((time.perf_counter() - t0) / args.requests * 1000)
                cpu.append((time.process_time() - c0) / args.requests * 1000)
            out[name] = {
                "url": url,
                "bytes": len(r.content),
                "queries": n_queries,
                "ms_per_request": round(statistics.median(times), 2),
                "cpu_ms_per_request": round(statistics.median(cpu), 2),
                "rounds_ms": [round(t, 2) for t in times],
            }
            if args.profile:
                print(f"=== {url} ===\n{profile(lambda c=client, u=url: c.get(u), args.requests * 2)}", file=sys.stderr)
    finally:
        if redis_proc is not None:
            redis_proc.terminate()
    if args.json:
        print(json.dumps(out))
    else:
        for name in PAGES:
            s = out[name]
            print(
                f"{s['url']:>15}: {s['ms_per_request']:6.1f} ms/request ({s['cpu_ms_per_request']:.1f} ms CPU), "
                f"{s['queries']} queries, {s['bytes']} bytes"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
