#!/usr/bin/env bash
# Packs what a GPU machine needs to run issue 7's measurements (it has no Rust toolchain and no
# network) into a git-ignored folder that a device run carries: the CUDA build of memtune and of
# tests/cuda.rs (stripped and gzipped: together they stay under the 64 MiB carry limit), the
# loader setup for PyTorch's CUDA libraries, the PyTorch anchor and scripts/gpu-measure.sh.
#
#   scripts/gpu-pack.sh [DIR]        (default gpu-bin; run scripts/build-cuda.sh --tests first)
# Then on the GPU machine, from the checkout: bash DIR/gpu-measure.sh  (results under $OUT).
# Env: CARGO_TARGET_DIR (where the CUDA build went, default target-cuda), SHARED (default ../shared).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-gpu-bin}
target=${CARGO_TARGET_DIR:-target-cuda}
shared=${SHARED:-../shared}
bin=$target/release/memtune
tests=$(ls -t "$target"/release/deps/cuda-* 2>/dev/null | grep -v '\.d$' | head -1 || true)
[ -x "$bin" ] || { echo "no CUDA build at $bin: run CARGO_TARGET_DIR=$target scripts/build-cuda.sh --tests" >&2; exit 1; }
[ -n "$tests" ] || { echo "no tests/cuda.rs binary under $target/release/deps: run scripts/build-cuda.sh --tests" >&2; exit 1; }
rm -rf "$dir" && mkdir -p "$dir"
for pair in "$bin:memtune" "$tests:cuda-tests"; do
  strip -o "$dir/${pair#*:}" "${pair%%:*}"
  gzip -1 "$dir/${pair#*:}"
done
cp "$shared/gpu/device-env.sh" "$shared/anchors/pytorch_step.py" scripts/gpu-measure.sh "$dir/"
size=$(du -sm "$dir" | cut -f1)
echo "packed $dir: ${size} MiB (carry limit 64 MiB)"
[ "$size" -lt 64 ] || { echo "too large to carry" >&2; exit 1; }
