"""Format bench/gpu_check.sh's raw outputs as a Markdown section for docs/BENCHMARKS.md.

    python bench/gpu_report.py --dir RESULTS_DIR --ran cross|self|toy|none --size gpu --seconds N
Reads gpu.txt, versions.json, gpu_tests.txt, cd_throughput.json and cong_results.json from RESULTS_DIR (any
may be missing: the section then says so instead of failing)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def _load(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _f(x, d=1):
    return "–" if x is None else (f"{x:.{d}f}" if isinstance(x, (int, float)) else str(x))


def cd_section(cd: dict | None) -> list[str]:
    if not cd:
        return ["CD throughput: no result (see gpu_check.log)."]
    lines = [
        f"CD throughput ({cd.get('models')}, {cd.get('device')} {cd.get('dtype')}, {cd.get('prompts')} prompts x "
        f"{cd.get('max_new_tokens')} new tokens, EOS ignored, {cd.get('repeats')} rounds):",
        "",
        "| variant | tokens/s |",
        "|---|---:|",
        f"| reference-style loop (batch 1) | {_f(cd.get('reference_tok_s'))} |",
    ]
    for bs, v in (cd.get("batched_tok_s") or {}).items():
        lines.append(f"| ml.contrastive batched, batch {bs} | {_f(v)} |")
    lines += [
        f"| two-model bound (plain generate x2) at batch {cd.get('batch_size_for_ratios')} "
        f"| {_f(cd.get('bound_tok_s'))} |",
        "",
        f"Speed-up over the reference loop: {_f(cd.get('speedup_vs_reference'), 2)}x; fraction of the "
        f"two-model bound: {_f(cd.get('fraction_of_bound'), 2)}.",
    ]
    return lines


PAIRS = {
    "cross": "SmolLM2-135M-Instruct pair -> Gemma 3 270M base (cross-family)",
    "self": "SmolLM2-135M-Instruct pair -> SmolLM2-135M-Instruct (self-alignment)",
}


def cong_section(res: dict | None, ran: str, size: str) -> list[str]:
    if ran == "none":
        return ["", "ConG run: skipped (SKIP_CONG)."]
    if not res:
        return ["", "ConG run: no result (see gpu_check.log)."]
    if ran in PAIRS and "methods" in res:
        cfg = res.get("config", {})  # the run's own record of its prompt caps (None = every prompt)
        prompts = f"{cfg.get('max_prompts') or 'all'} train / {cfg.get('max_eval_prompts') or 'all'} held-out prompts"
        lines = [
            "",
            f"ConG run on the real models (preset `{size}`, {prompts}; {PAIRS[ran]}; gold `if:judge` "
            f"on held-out prompts), {res.get('seconds', 0):.0f} s in all:",
            "",
            "| method | gold mean | 95% CI | implicit reward | win vs WeakSFT | n |",
            "|---|---:|---|---:|---:|---:|",
        ]
        for m in res["methods"].values():
            lo, hi = m["gold_ci"]
            lines.append(
                f"| {m['label']} | {_f(m['gold_mean'], 3)} | [{_f(lo, 3)}, {_f(hi, 3)}] "
                f"| {_f(m.get('implicit_mean'), 3)} | {_f(m.get('win_rate_vs_weak_sft'), 2)} | {m['n']} |"
            )
        lines += [
            "",
            "Stage seconds: " + ", ".join(f"{k} {v['seconds']:.0f}" for k, v in res.get("stages", {}).items()),
        ]
        return lines
    return [
        "",
        f"ConG run: one toy-world seed (python -m ml toyworld report --worlds review --seeds 1) in "
        f"{_f(res.get('seconds'), 0)} s; no real-model run finished here. Raw report in cong_results.json.",
    ]


def tests_line(d: Path) -> list[str]:
    p = d / "gpu_tests.txt"
    if not p.exists():
        return []
    tail = [ln for ln in p.read_text().splitlines() if ln.strip()]
    return [
        "GPU-marked tests (`pytest -m gpu`, tests/ml/test_contrastive.py + test_pipeline.py): "
        f"{tail[-1].strip('= ') if tail else 'no output'}.",
        "",
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--ran", default="toy", help="which ConG run produced cong_results.json")
    ap.add_argument("--size", default="gpu")
    ap.add_argument("--seconds", type=float, default=None)
    a = ap.parse_args()
    d = Path(a.dir)
    gpu = (d / "gpu.txt").read_text().strip() if (d / "gpu.txt").exists() else "unknown"
    ver = _load(d / "versions.json") or {}
    lines = [
        f"### GPU check — {gpu} ({time.strftime('%Y-%m-%d')})",
        "",
        f"torch {ver.get('torch')} (CUDA {ver.get('cuda')}), transformers {ver.get('transformers')}, "
        f"trl {ver.get('trl')}, datasets {ver.get('datasets')}; whole check {_f(a.seconds, 0)} s "
        "(`bash bench/gpu_check.sh`).",
        "",
    ]
    lines += tests_line(d)
    lines += cd_section(_load(d / "cd_throughput.json"))
    lines += cong_section(_load(d / "cong_results.json"), a.ran, a.size)
    print("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
