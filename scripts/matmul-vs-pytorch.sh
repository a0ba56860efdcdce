#!/usr/bin/env bash
# f32 GEMM speed of memtune (candle's CPU GEMM, `memtune bench matmul`) against PyTorch's on the
# same shapes, alternating in one run so machine noise hits both; prints each shape's median
# GFLOP/s and median ratio over the rounds, with the CPU and the kernel families.
#
#   scripts/matmul-vs-pytorch.sh [ROUNDS] [SHAPES]
#   e.g. scripts/matmul-vs-pytorch.sh 3 1024x256x688,256x576x49152
# Needs: cargo build --release; python3 -m pip install torch. Threads: RAYON_NUM_THREADS (default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
shapes=${2:-1024x256x256,1024x256x688,1024x688x256,1024x256x4096,1024x4096x256,688x1024x256,4096x1024x256,256x576x1536,256x1536x576,256x576x49152}
bin=${MEMTUNE_BIN:-target/release/memtune}
export RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-2}
[ -x "$bin" ] || cargo build --release
python3 -c "import torch" 2>/dev/null || { echo "needs PyTorch: python3 -m pip install torch" >&2; exit 1; }
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
for r in $(seq 1 "$rounds"); do
  "$bin" bench matmul --shapes "$shapes" 2>/dev/null >> "$tmp/ours"
  python3 scripts/pytorch_matmul.py --shapes "$shapes" --threads "$RAYON_NUM_THREADS" 2>/dev/null >> "$tmp/theirs"
done
python3 - "$tmp" <<'PY'
import json, os, statistics, sys
d = sys.argv[1]
load = lambda f: [json.loads(l) for l in open(os.path.join(d, f)) if l.strip()]
ours, theirs = load("ours"), load("theirs")
print(f"cpu: {ours[0]['cpu']}; memtune simd {ours[0]['simd']}, pytorch {theirs[0]['simd']}; threads {ours[0]['threads']}")
print(f"{'shape MxKxN':>16} {'memtune GFLOP/s':>16} {'pytorch GFLOP/s':>16} {'ratio':>6}  rounds")
key = lambda r: (r["m"], r["k"], r["n"])
for s in dict.fromkeys(key(r) for r in ours):
    a = [r["gflop_per_s"] for r in ours if key(r) == s]; b = [r["gflop_per_s"] for r in theirs if key(r) == s]
    ratios = [x / y for x, y in zip(a, b)]
    print(f"{'x'.join(map(str, s)):>16} {statistics.median(a):16.1f} {statistics.median(b):16.1f} {statistics.median(ratios):6.2f}  {[round(x, 2) for x in ratios]}")
PY
