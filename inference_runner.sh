#!/usr/bin/env bash
# Sample 25 descriptions per concept (one per query template: ex2's own describe25 set unless
# --templates names another, e.g. EX2's data_files/mult_template_v1.json) from a base LLM, alone or
# with a LoRA adapter written by `ex2 train`; a thin wrapper over `ex2 generate`, after EX2's runner.
#
#   ./inference_runner.sh [ADAPTER] [BASE_MODEL] [OUTPUT] [DATASET] [extra ex2 generate flags...]
#
# Each positional argument may also come from the environment (ADAPTER, BASE_MODEL, OUTPUT,
# DATASET); an empty ADAPTER (or "none") samples the base model alone. Defaults: the embedded
# smollm2 on the embedded samples dataset, offline. Examples:
#   ./inference_runner.sh
#   ./inference_runner.sh runs/train/pets mistralai/Mistral-7B-v0.1 runs/gen/pets.jsonl pets:/data/pets --sampler vllm
#   SAMPLER=vllm ADAPTER=runs/train/cub BASE_MODEL=meta-llama/Llama-2-7b-hf DATASET=cub:/data/CUB ./inference_runner.sh
set -euo pipefail

ADAPTER="${1-${ADAPTER-}}"
BASE_MODEL="${2:-${BASE_MODEL:-smollm2}}"
OUTPUT="${3:-${OUTPUT:-runs/generate/descriptions.jsonl}}"
DATASET="${4:-${DATASET:-samples}}"
SAMPLER="${SAMPLER:-transformers}"
shift $(( $# < 4 ? $# : 4 ))

EX2="${EX2_VENV:-.venv}/bin/ex2"
[[ -x "$EX2" ]] || EX2=ex2

args=(generate --llm "$BASE_MODEL" --dataset "$DATASET" --output "$OUTPUT" --sampler "$SAMPLER")
if [[ -n "$ADAPTER" && "$ADAPTER" != none ]]; then
    args+=(--adapter "$ADAPTER")
fi
exec "$EX2" "${args[@]}" "$@"
