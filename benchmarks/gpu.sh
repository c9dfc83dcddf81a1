#!/usr/bin/env bash
# The whole benchmark suite on one GPU: SAM ViT-B at 1024 px, bf16 autocast (fp32 weights), batch 2.
# Usage: benchmarks/gpu.sh [output folder, default runs/benchmarks/gpu]. About 5 minutes on one H100 (estimate:
# not yet run). Each script's stdout (a JSON record, then a markdown table) goes to <folder>/<script>.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/benchmarks/gpu}"
mkdir -p "$out"
python -c "import torch; assert torch.cuda.is_available(), 'benchmarks/gpu.sh needs a CUDA GPU'"
gpu=(--device cuda --image-size 1024 --dtype bf16 --threads 8)
run() { echo "== $1" >&2; timeout 300 python "benchmarks/$1.py" "${@:2}" | tee "$out/$1.txt"; }
run parameter_counts
run training "${gpu[@]}" --repeats 10 --checkpointing "Med-SA paper" "Med-SA official-code" "Med-SA encoder-only" \
    "LoRA r=4 + decoder" "full fine-tuning"
run inference "${gpu[@]}" --warmup 3 --repeats 20
run depth "${gpu[@]}" --warmup 3 --repeats 10
