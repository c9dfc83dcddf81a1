#!/usr/bin/env bash
# Every benchmark table on one GPU, at 1024 px in bf16 (autocast, fp32 weights): parameter counts; SAM ViT-B
# training steps (eager, checkpointed, bf16 base, compiled), inference (eager and compiled), peak memory (batch 1)
# and the depth branch; SAM 2.1 Hiera-T training steps and memory, Med-SA vs LoRA. Budget: 10 minutes on one
# H100/H200 (estimate, not yet run: compiling takes most of it).
# Usage: benchmarks/gpu.sh [--dry-run] [output folder, default runs/benchmarks/gpu]. Each script's stdout (a JSON
# record, then markdown tables) goes to <folder>/<name>.txt. --dry-run runs the same commands on CPU with a tiny
# model, one repeat and the aot_eager compile backend: it checks the wiring, its figures mean nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
dry=""
if [[ "${1:-}" == "--dry-run" ]]; then
    dry=1
    shift
fi
out="${1:-runs/benchmarks/gpu}"
mkdir -p "$out"
if [[ -n "$dry" ]]; then
    profile=(--tiny)
    compile=(--compile-backend aot_eager)
    repeats() { echo --warmup 1 --repeats 1; }
else
    python -c "import torch; assert torch.cuda.is_available(), 'benchmarks/gpu.sh needs a CUDA GPU'"
    profile=(--device cuda --image-size 1024 --dtype bf16 --threads 8)
    compile=()
    repeats() { echo --warmup "$1" --repeats "$2"; }
fi
paper="Med-SA paper"
lora="LoRA r=4 + decoder"
full="full fine-tuning"
# run NAME SCRIPT [ARGS...]: one script under a time limit, its stdout into <folder>/NAME.txt.
run() { echo "== $1" >&2; timeout 300 python "benchmarks/$2.py" "${@:3}" | tee "$out/$1.txt"; }
run parameter_counts parameter_counts
# shellcheck disable=SC2046 # repeats' words are meant to split
run training training "${profile[@]}" $(repeats 2 10) --bf16-base "$paper" --compile "$paper" "${compile[@]}"
# shellcheck disable=SC2046
run inference inference "${profile[@]}" $(repeats 3 20) --compile "SAM (base)" "$paper" "${compile[@]}"
run memory memory "${profile[@]}" --methods "$full" "$paper" "$lora"
# shellcheck disable=SC2046
run depth depth "${profile[@]}" $(repeats 3 10)
# shellcheck disable=SC2046
run training-sam2 training --model sam2 "${profile[@]}" $(repeats 2 10) --methods "$paper" "$lora" --checkpointing
run memory-sam2 memory --model sam2 "${profile[@]}" --methods "$full" "$paper" "$lora" --checkpointing --bf16-base
