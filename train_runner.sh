#!/usr/bin/env bash
# Train a LoRA adapter with `ex2 train` under `accelerate launch`, after EX2's train_runner.sh.
#
#   ./train_runner.sh [TRAIN_CONFIG] [ACCELERATE_CONFIG] [extra ex2 train flags...]
#
# Defaults: configs/train_default.yaml (smollm2 + conse + samples, minutes on a CPU) and
# configs/accelerate/single_gpu.yaml with a GPU, configs/accelerate/cpu.yaml without. DATA_ROOT,
# when set, is passed as --data-root. Examples:
#   ./train_runner.sh
#   ./train_runner.sh configs/train_default.yaml configs/accelerate/cpu.yaml --max-steps 5
#   DATA_ROOT=/data/oxford-iiit-pet ./train_runner.sh configs/train_ex2_pets.yaml configs/accelerate/multi_gpu.yaml
#   ./train_runner.sh configs/train_default.yaml "" --resume        # continue the newest checkpoint
set -euo pipefail

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    DEFAULT_ACCELERATE=configs/accelerate/single_gpu.yaml
else
    DEFAULT_ACCELERATE=configs/accelerate/cpu.yaml
fi
TRAIN_CONFIG="${1:-${TRAIN_CONFIG:-configs/train_default.yaml}}"
ACCELERATE_CONFIG="${2:-${ACCELERATE_CONFIG:-$DEFAULT_ACCELERATE}}"
shift $(( $# < 2 ? $# : 2 ))

ACCELERATE="${EX2_VENV:-.venv}/bin/accelerate"
[[ -x "$ACCELERATE" ]] || ACCELERATE=accelerate
PORT="${MAIN_PROCESS_PORT:-$(shuf -i 20000-29999 -n 1)}"

args=(train --config "$TRAIN_CONFIG")
if [[ -n "${DATA_ROOT:-}" ]]; then
    args+=(--data-root "$DATA_ROOT")
fi
ulimit -Sn "$(ulimit -Hn)" 2>/dev/null || true
exec "$ACCELERATE" launch --config_file "$ACCELERATE_CONFIG" --main_process_port "$PORT" \
    -m ex2.cli "${args[@]}" "$@"
