"""Training on 1 vs 2 processes: the same SFT and DPO stage run by one process and by two (DDP over gloo on CPU).

``python -m ml stage sft|dpo --config C --nproc N`` re-launches itself through torch.distributed.run
(ml.distributed). ``per_device_train_batch_size`` is per process, so one process at batch 2B and two at batch B
take the same global batch: same data, steps, seed and learning rate, so both runs should end at the same loss
(the "loss agreement" column: what DDP changes is the float summation order, and the data order if the sampler
shards differently). Threads: 2 for the single process, 1 for each of the two (--threads-total), so both
settings use the same cores. The runs alternate (1, 2, then 2, 1 in the next repeat) so both see the same
machine; medians over --repeats.

The model is a randomly initialised GPT-2 built here (nothing downloaded), sized so compute dominates the
processes' start-up (the defaults: ~20-60 s a run on 2 cores). Per run it reports:
  - train s: DONE.json's ``seconds`` (Trainer.train, reference log-probs for DPO and the end-of-run checkpoint
    included; model loading and imports not), and steps/s = steps / train s;
  - wall s: the whole command, launch, imports, model loading and saving included.

    python bench/scale_train.py                    # markdown table; results.json in the output folder
    python bench/scale_train.py --stages sft --repeats 1 --steps 4    # quick look
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Word vocabulary of the toy model and its data: big enough that the LM head is real work.
WORDS = [f"w{i}" for i in range(500)]


def build_model(path: Path, layers: int, embd: int, heads: int, positions: int) -> int:
    """Save a random GPT-2 + word tokenizer at ``path``; its parameter count."""
    from ml.tiny import tiny_gpt2, word_tokenizer

    tok = word_tokenizer(WORDS)
    model = tiny_gpt2(len(tok), n_layer=layers, n_embd=embd, n_head=heads, n_positions=positions, seed=0)
    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return sum(p.numel() for p in model.parameters())


def write_data(folder: Path, n: int, prompt_words: int, response_words: int) -> dict[str, str]:
    """SFT pairs and DPO preferences of ``n`` rows. Every prompt and response has the same word count (one word =
    one token), so each process's mean loss weighs its examples as the one-process mean does."""
    from ml.io import write_jsonl

    rng = random.Random(0)

    def text(k: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(k))

    prompts = [text(prompt_words) for _ in range(n)]
    pairs = folder / "pairs.jsonl"
    prefs = folder / "prefs.jsonl"
    write_jsonl(pairs, [{"prompt": p, "response": text(response_words)} for p in prompts])
    write_jsonl(
        prefs, [{"prompt": p, "chosen": text(response_words), "rejected": text(response_words)} for p in prompts]
    )
    return {"sft": str(pairs), "dpo": str(prefs)}


def run_stage(stage: str, cfg: dict[str, Any], folder: Path, nproc: int, threads_total: int) -> dict[str, Any]:
    """One ``python -m ml stage`` run; its DONE.json plus the command's wall time."""
    import yaml

    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump({**cfg, "output_dir": str(folder / "out")}), encoding="utf-8")
    threads = str(max(1, threads_total // nproc))
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": threads, "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "ml", "stage", stage, "--config", str(path), "--quiet", "--nproc", str(nproc)]
    t0 = time.monotonic()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    wall = time.monotonic() - t0
    if done.returncode != 0:
        raise SystemExit(
            f"{stage} --nproc {nproc} exited {done.returncode}:\n{done.stdout[-2000:]}{done.stderr[-3000:]}"
        )
    summary = json.loads((folder / "out" / "DONE.json").read_text(encoding="utf-8"))
    shutil.rmtree(folder / "out")  # model/ and checkpoints/: not needed once DONE.json is read
    return {
        "nproc": nproc,
        "threads_each": int(threads),
        "world_size": summary["world_size"],
        "steps": summary["steps"],
        "train_s": summary["seconds"],
        "steps_per_s": summary["steps"] / summary["seconds"],
        "wall_s": round(wall, 3),
        "final_loss": summary["final_loss"],
        "train_loss": summary["train_loss"],
    }


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def table(out: dict[str, Any]) -> str:
    lines = [
        "| stage | processes x threads | train s (runs) | median steps/s | median wall s (launch incl.) "
        "| final loss | train loss |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for stage, by_n in out["runs"].items():
        for n, runs in by_n.items():
            med = out["median"][stage][n]
            train = ", ".join(f"{r['train_s']:.1f}" for r in runs)
            final = ", ".join(f"{r['final_loss']:.5f}" for r in runs)
            lines.append(
                f"| {stage} | {n} x {runs[0]['threads_each']} | {train} | {med['steps_per_s']:.3f} "
                f"| {med['wall_s']:.1f} | {final} | {runs[0]['train_loss']:.5f} |"
            )
    lines.append("")
    for stage, r in out["ratio"].items():
        lines.append(
            f"- {stage}: 2 processes / 1 process, steps/s **{r['steps_per_s']:.2f}x**, wall (launch incl.) "
            f"{r['wall']:.2f}x (above 1: two processes faster); final-loss difference, max over repeats "
            f"{r['max_final_loss_diff']:.2e} (relative {r['max_final_loss_rel']:.2e})"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stages", default="sft,dpo", help="comma-separated: sft, dpo")
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--embd", type=int, default=384)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--prompt-words", type=int, default=32)
    ap.add_argument("--response-words", type=int, default=32)
    ap.add_argument("--global-batch", type=int, default=16, help="examples per optimizer step, all processes")
    ap.add_argument("--steps", type=int, default=24, help="SFT optimizer steps")
    ap.add_argument("--dpo-steps", type=int, default=16, help="DPO optimizer steps (a DPO step costs ~2 SFT steps)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads-total", type=int, default=2, help="torch threads: all to 1 process, split over 2")
    ap.add_argument("--out", type=Path, default=ROOT / "var" / "bench" / "scale_train", help="work + results")
    args = ap.parse_args()
    if args.global_batch % 2:
        raise SystemExit("--global-batch must be even (it is split over 2 processes)")

    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    args.out.mkdir(parents=True, exist_ok=True)
    positions = args.prompt_words + 2 * args.response_words + 8
    params = build_model(args.out / "model", args.layers, args.embd, args.heads, positions)
    # Each step takes the next global batch of the seeded shuffle, in both settings (SFT: one epoch).
    steps = {"sft": args.steps, "dpo": args.dpo_steps}
    data = write_data(args.out, args.global_batch * max(steps.values()), args.prompt_words, args.response_words)
    common = {
        "model": str(args.out / "model"),
        "use_chat_template": False,
        "warmup_ratio": 0.0,
        "lr_scheduler_type": "constant",
        "seed": 0,
        "logging_steps": 1,
        "max_length": positions,
    }
    lr = {"sft": 1e-4, "dpo": 1e-5}
    load_before = load_average()
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {s: {1: [], 2: []} for s in stages}
    for rep in range(args.repeats):
        order = (1, 2) if rep % 2 == 0 else (2, 1)  # alternate which goes first, against drift
        for stage in stages:
            for n in order:
                # save_steps = max_steps: one checkpoint, at the end, in both settings.
                cfg = {**common, "data": data[stage], "learning_rate": lr[stage], "max_steps": steps[stage]}
                cfg["save_steps"] = steps[stage]
                cfg["per_device_train_batch_size"] = args.global_batch // n
                r = run_stage(stage, cfg, args.out / f"{stage}-{n}", n, args.threads_total)
                r["load_after"] = load_average()
                runs[stage][n].append(r)
                # Every run's numbers as they come, so a run that fails later does not lose the earlier ones.
                (args.out / "runs.json").write_text(json.dumps(runs, indent=2), encoding="utf-8")
                print(
                    f"repeat {rep + 1} {stage} nproc={n}: train {r['train_s']:.1f} s, wall {r['wall_s']:.1f} s, "
                    f"final loss {r['final_loss']:.5f}, load {r['load_after']}",
                    file=sys.stderr,
                )
    median = {
        s: {
            n: {k: statistics.median(r[k] for r in rs) for k in ("steps_per_s", "wall_s", "train_s")}
            for n, rs in by.items()
        }
        for s, by in runs.items()
    }
    ratio = {}
    for s, by in runs.items():
        diffs = [abs(a["final_loss"] - b["final_loss"]) for a, b in zip(by[1], by[2], strict=True)]
        rel = [d / abs(a["final_loss"]) for d, a in zip(diffs, by[1], strict=True)]
        ratio[s] = {
            "steps_per_s": median[s][2]["steps_per_s"] / median[s][1]["steps_per_s"],
            "wall": median[s][1]["wall_s"] / median[s][2]["wall_s"],
            "max_final_loss_diff": max(diffs),
            "max_final_loss_rel": max(rel),
        }
    out = {
        "command": " ".join(["OMP_WAIT_POLICY=PASSIVE", ".venv/bin/python", "bench/scale_train.py", *sys.argv[1:]]),
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "cpus": os.cpu_count(),
        "load_before": load_before,
        "load_after": load_average(),
        "model": {
            "layers": args.layers,
            "embd": args.embd,
            "heads": args.heads,
            "vocab": len(WORDS) + 4,
            "params": params,
        },
        "tokens_per_example": {"prompt": args.prompt_words, "response": args.response_words},
        "global_batch": args.global_batch,
        "steps": steps,
        "repeats": args.repeats,
        "runs": runs,
        "median": median,
        "ratio": ratio,
    }
    (args.out / "results.json").write_text(json.dumps(out, indent=2), encoding="utf-8")
    print(f"`{out['command']}` ({out['date_utc']} UTC, {out['cpus']} CPUs, load average before {load_before}, "
          f"after {out['load_after']})")  # fmt: skip
    print(f"model: GPT-2 {args.layers} layers, d={args.embd}, {params / 1e6:.1f}M parameters; {args.global_batch} "
          f"examples x ({args.prompt_words} prompt + {args.response_words} response tokens) per step, "
          f"SFT {args.steps} steps, DPO {args.dpo_steps}\n")  # fmt: skip
    print(table(out))
    print(f"\nresults: {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
