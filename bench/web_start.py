"""What a web process pays to start: importing the URLs and the ASGI app, in a fresh interpreter, as each gunicorn
worker (congweb.web) does; and the same start plus building ml's job-kind registry, which the app did at import
until the params schema became lazy (jobs.api.serializers.ParamsFieldExtension), since the registry imports the
stage modules and with them torch and transformers.

The two are run alternately, --rounds times each, so the machine's noise falls on both; printed: the median wall
time, the median peak resident memory of the child process, and the ratio.

    python bench/web_start.py --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START = "import django; django.setup(); import congweb.urls, congweb.asgi"
CASES = {
    "web start (now)": START,
    "web start + ml registry (before)": START + "; from ml.spec import registry; registry()",
}


def run_once(code: str) -> tuple[float, float]:
    """(wall seconds, the child's peak RSS in MiB) of one fresh interpreter running ``code``."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "congweb.settings", "OMP_WAIT_POLICY": "PASSIVE"}
    script = (
        "import resource, time; t = time.perf_counter(); "
        + code
        + "; print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    wall, rss = out.stdout.split()[-2:]
    return float(wall), float(rss)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    got: dict[str, list[tuple[float, float]]] = {k: [] for k in CASES}
    t0 = time.time()
    for _ in range(args.rounds):
        for name, code in CASES.items():  # alternately
            got[name].append(run_once(code))
    res = {
        name: {
            "median_s": round(statistics.median(w for w, _ in xs), 2),
            "median_peak_rss_mib": round(statistics.median(r for _, r in xs)),
        }
        for name, xs in got.items()
    }
    now, before = (res[k] for k in CASES)
    res["ratio_before_over_now"] = {
        "time": round(before["median_s"] / now["median_s"], 2),
        "rss": round(before["median_peak_rss_mib"] / now["median_peak_rss_mib"], 2),
    }
    res["rounds"], res["bench_seconds"] = args.rounds, round(time.time() - t0, 1)
    print(json.dumps(res, indent=2) if args.json else "\n".join(f"{k}: {v}" for k, v in res.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
