"""Scale-out benchmark: one cd_generate job run whole on one worker vs in 2 shards on 2 workers.

Starts its own stack in a temporary VAR_DIR (SQLite + embedded Redis unless DATABASE_URL/REDIS_URL are set) and
two real Celery workers (one torch thread each, as jobs.workers sets for two workers on one host), then runs
the same job (toy models, sampled CD, fixed seed) alternately with ``shards: 1`` and ``shards: 2``, --repeats
times each, interleaved so both see the same machine. Wall time is the job's own (started -> finished in the
database: claim, model loading, generation, shard hand-off, merge, pair mirror), pairs/s = N / wall.

    python bench/scale.py                 # human summary
    python bench/scale.py --json          # one JSON object
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from api_load import setup_env  # noqa: E402  (bench/ is scripts, not a package)


def start_worker(var: Path, name: str) -> subprocess.Popen:
    env = {**os.environ, "WORKER_TORCH_THREADS": "1", "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    log = open(var / f"{name}.log", "wb")
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "congweb", "worker", "-Q", "gpu,default", "-c", "1", "--pool",
         "prefork", "--loglevel", "INFO", "--without-gossip", "--without-mingle", "-n", f"{name}@%h"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip


def seed(var: Path, n: int):
    from django.contrib.auth import get_user_model

    from jobs import services
    from ml.tiny import tiny_gpt2, word_tokenizer

    user = get_user_model().objects.create_user("bench", password="bench-password-1")
    tok = word_tokenizer("a b c d e review good bad :".split())
    ids = []
    for name, s in (("base", 0), ("aligned", 1)):
        path = var / "models" / name
        tok.save_pretrained(path)
        tiny_gpt2(len(tok), n_layer=2, n_embd=64, seed=s).save_pretrained(path)
        ids.append(services.model_register(name=f"bench-{name}", path=str(path), kind="weak").pk)
    rows = b"".join(json.dumps({"prompt": f"review a b {i % 7} :"}).encode() + b"\n" for i in range(n))
    ds = services.dataset_create(name="bench-prompts", chunks=[rows], owner=user)
    return user, ids[0], ids[1], ds.pk


def run_job(user, base: int, aligned: int, ds: int, shards: int, tokens: int, batch: int) -> dict:
    from jobs import services
    from jobs.models import GeneratedPair, Job

    params = {"shards": shards, "max_new_tokens": tokens, "batch_size": batch, "cd_generate": {"ignore_eos": True}}
    job = services.job_create(
        user=user, kind="cd_generate", weak_base=base, weak_aligned=aligned, prompts=ds, alpha=0.4, params=params
    )
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        job.refresh_from_db()
        if job.status in Job.FINISHED:
            break
        time.sleep(0.2)
    if job.status != "succeeded":
        raise SystemExit(f"job {job.pk} ended {job.status}: {job.error}")
    wall = (job.finished - job.started).total_seconds()
    workers = sorted(set(GeneratedPair.objects.filter(job=job).values_list("worker", flat=True)))
    n = GeneratedPair.objects.filter(job=job).count()
    return {
        "shards": job.results.get("shards", 1),
        "wall_s": wall,
        "pairs": n,
        "pairs_per_s": n / wall,
        "workers": workers,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=512)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    var = Path(tempfile.mkdtemp(prefix="congweb-scale-"))
    os.environ.setdefault("JOB_HEARTBEAT_SECONDS", "2")
    redis_proc = setup_env(var)
    user, base, aligned, ds = seed(var, args.prompts)
    procs = [start_worker(var, f"w{i}") for i in range(2)]
    try:
        from jobs.workers import live

        deadline = time.monotonic() + 120
        while len(live()) < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
        if len(live()) < 2:
            raise SystemExit(f"workers did not start; see {var}/w0.log")
        runs: dict[int, list[dict]] = {1: [], 2: []}
        for _ in range(args.repeats):
            for shards in (1, 2):  # interleaved: both settings see the same machine
                runs[shards].append(run_job(user, base, aligned, ds, shards, args.tokens, args.batch))
    finally:
        for p in procs:
            p.kill()
        if redis_proc is not None:
            redis_proc.kill()
    med = {s: statistics.median(r["wall_s"] for r in rs) for s, rs in runs.items()}
    out = {
        "prompts": args.prompts,
        "max_new_tokens": args.tokens,
        "batch_size": args.batch,
        "repeats": args.repeats,
        "cpus": os.cpu_count(),
        "runs": runs,
        "median_wall_s": med,
        "median_pairs_per_s": {s: args.prompts / w for s, w in med.items()},
        "speedup_2_shards": med[1] / med[2],
    }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for s in (1, 2):
            walls = ", ".join(f"{r['wall_s']:.1f}" for r in runs[s])
            print(f"shards={s}: wall s {walls} (median {med[s]:.1f}), {args.prompts / med[s]:.1f} pairs/s, "
                  f"workers {runs[s][-1]['workers']}")  # fmt: skip
        print(f"speed-up of 2 shards on 2 workers: {out['speedup_2_shards']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
