"""The `make demo` flow, run by congweb.launcher once Redis is up and the database migrated.

Everything a first-time user needs to see congweb work, through the same doors a real user uses:
the toy world is built (cached after the first run) and registered, a demo user is created, one
ConG job is submitted over the REST API and followed from its events, and the results are printed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from congweb.supervisor import say

DEMO_USER = os.environ.get("DEMO_USER", "demo")
DEMO_PASSWORD = os.environ.get("DEMO_PASSWORD", "demo")
DEMO_WORLD = os.environ.get("DEMO_WORLD", "review")
DEMO_SEED = os.environ.get("DEMO_SEED", "0")
DEMO_METHODS = os.environ.get("DEMO_METHODS", "strong_base,weak_post,weak_sft,wspo,cong_s,cong").split(",")
TERMINAL = {"succeeded", "failed", "cancelled"}


def _have(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def missing_parts() -> list[str]:
    parts = {
        "ml.pipeline": "the ConG pipeline (issue: ml core)",
        "ml.toyworld.build": "the toy world builder (issue: toy world)",
        "jobs.api.urls": "the REST API (issue: web app)",
        "jobs.management.commands.register_toyworld": "toy-world registration (issue: web app)",
    }
    return [desc for mod, desc in parts.items() if not _have(mod)]


class Api:
    def __init__(self, base: str) -> None:
        self.base = base.rstrip("/")
        self.token: str | None = None

    def call(self, method: str, path: str, body: dict | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Token {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                raw = r.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:2000]
            raise SystemExit(f"{method} {path} -> HTTP {exc.code}: {detail}") from None
        return json.loads(raw) if raw else None


def ensure_demo_user() -> None:
    import django

    django.setup()
    from django.contrib.auth import get_user_model

    user, created = get_user_model().objects.get_or_create(username=DEMO_USER)
    if created or not user.check_password(DEMO_PASSWORD):
        user.set_password(DEMO_PASSWORD)
    # Staff so the demo user can also try the admin review of generated pairs; the server listens
    # on 127.0.0.1 only, and production deployments never run this.
    user.is_staff = True
    user.is_superuser = True
    user.save()


def follow(api: Api, job_id: int, tick: Callable[[], None] = lambda: None) -> dict:
    """Stream the job's events to the terminal (a progress bar per stage) until it ends.

    ``tick`` runs every poll: the launcher's supervision (restart a dead worker) while we wait here."""
    from tqdm import tqdm

    after, job = 0, {}
    bars: dict[str, Any] = {}
    while True:
        page = api.call("GET", f"/api/v1/jobs/{job_id}/events/?after={after}")
        events = page["results"] if isinstance(page, dict) and "results" in page else page
        for ev in events:
            after = max(after, int(ev["seq"]))
            data = ev.get("data") or {}
            if ev["type"] == "progress":
                stage, done, total = data.get("stage", "?"), int(data.get("done", 0)), int(data.get("total") or 0)
                bar = bars.get(stage)
                if bar is None:
                    bar = bars[stage] = tqdm(
                        total=total or None,
                        desc=f"{stage:>14}",
                        unit="step",
                        leave=True,
                        file=sys.stdout,
                        dynamic_ncols=True,
                    )
                if total and bar.total != total:
                    bar.total = total
                bar.n = done
                bar.refresh()
            elif ev["type"] == "log":
                tqdm.write(f"  · {data.get('message', data)}")
            elif ev["type"] == "status":
                tqdm.write(f"  status -> {data.get('status', data)}")
        job = api.call("GET", f"/api/v1/jobs/{job_id}/")
        if job["status"] in TERMINAL and not events:
            break
        tick()
        time.sleep(0.5)
    for bar in bars.values():
        bar.close()
    return job


def print_results(payload: dict) -> None:
    results = payload.get("results") or payload  # GET .../results/ wraps them with the job's status
    methods = results.get("methods") or {}
    if not methods:
        print(json.dumps(results, indent=2)[:4000])
        return
    print()
    print(f"{'method':<16} {'gold reward (95% CI)':<28} {'valid':>7} {'implicit':>9} {'n':>5}")
    print("-" * 70)
    for name, m in methods.items():
        ci = m.get("gold_ci") or [None, None]
        gold = f"{m['gold_mean']:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci[0] is not None else f"{m.get('gold_mean')}"
        imp = m.get("implicit_mean")
        print(
            f"{name:<16} {gold:<28} {m.get('valid_rate', float('nan')):>7.2%} "
            f"{(f'{imp:+.3f}' if isinstance(imp, (int, float)) else '-'):>9} {m.get('n', ''):>5}"
        )
    print("gold reward: mean over held-out prompts x samples, 95% interval; implicit: mean log pi_post/pi_pre")
    print()


def run(stack, *, exit_after: bool) -> int:
    missing = missing_parts()
    if missing:
        say("the demo cannot run a ConG job yet; missing: " + "; ".join(missing))
        stack.start_services()
        say("started what exists (web + worker + beat); nothing was submitted and no results are shown")
        return 2
    say(f"toy world '{DEMO_WORLD}' seed {DEMO_SEED}: building if not cached (first run takes a few minutes)")
    stack.run(
        "manage.py",
        "register_toyworld",
        "--world",
        DEMO_WORLD,
        "--seed",
        DEMO_SEED,
        what="toy world build/registration",
    )
    ensure_demo_user()
    stack.start_services()
    api = Api(f"http://127.0.0.1:{stack.port}")
    api.token = api.call("POST", "/api/v1/auth/token/", {"username": DEMO_USER, "password": DEMO_PASSWORD})["token"]
    presets = api.call("GET", "/api/v1/presets/")
    presets = presets.get("results", presets) if isinstance(presets, dict) else presets
    tag = f"toy-{DEMO_WORLD}-s{DEMO_SEED}:"
    cong = [p for p in presets if p["name"].startswith(tag) and p["request"].get("kind") == "cong"]
    if not cong:
        raise SystemExit(
            f"no ConG preset for {tag} among {[p['name'] for p in presets]}; was the toy world registered?"
        )
    body = dict(cong[0]["request"])
    # The demo shows the paper's whole comparison on held-out prompts, not just ConG.
    body["methods"] = DEMO_METHODS
    say(f"submitting a ConG job over REST: POST /api/v1/jobs/ {json.dumps(body)}")
    job = api.call("POST", "/api/v1/jobs/", body)
    say(
        f"job {job['id']} queued; follow it in the browser at http://127.0.0.1:{stack.port}/jobs/{job['id']}/ "
        f"(login {DEMO_USER} / {DEMO_PASSWORD})"
    )
    job = follow(api, job["id"], tick=stack.tick)
    say(f"job {job['id']} {job['status']}" + (f": {job.get('error')}" if job.get("error") else ""))
    if job["status"] == "succeeded":
        print_results(api.call("GET", f"/api/v1/jobs/{job['id']}/results/"))
    return 0 if job["status"] == "succeeded" else 1
