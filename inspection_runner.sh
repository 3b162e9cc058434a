#!/usr/bin/env bash
# Label generated descriptions as spurious, visual or non-visual and write the report.
#
#   ./inspection_runner.sh DESCRIPTIONS.jsonl [DATASET] [OUTPUT.jsonl] [extra ex2 inspect flags...]
#   ./inspection_runner.sh runs/gen/descriptions.jsonl cub runs/gen/categories.jsonl
#   BACKEND=openai ./inspection_runner.sh d.jsonl cub out.jsonl --model gpt-4o-mini   # key: $OPENAI_API_KEY
#
# BACKEND (embedded | openai | hf, default embedded) picks the judge; the report goes to
# inspect_report/ beside the output.
set -euo pipefail

if [[ $# -lt 1 || "$1" == "-h" || "$1" == "--help" ]]; then
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
input=$1
dataset=${2:-}
output=${3:-$(dirname "$input")/categories.jsonl}
shift $(( $# < 3 ? $# : 3 ))

venv=${EX2_VENV:-.venv}
if [[ -x "$venv/bin/ex2" ]]; then ex2="$venv/bin/ex2"; else ex2=ex2; fi

args=(inspect --input "$input" --output "$output" --backend "${BACKEND:-embedded}")
if [[ -n "$dataset" ]]; then args+=(--dataset "$dataset"); fi
exec "$ex2" "${args[@]}" "$@"
