#!/usr/bin/env bash
# Issue 7's measurements on a GPU machine, from a folder packed by scripts/gpu-pack.sh (run from
# the checkout's root): tests/cuda.rs, then `bench memory` and the training step against PyTorch
# eager (f32 and memtune's bf16 mixed precision) at configs/bench-gpu.toml's shape, alternating
# memtune and PyTorch in each round. Everything is printed and written under $OUT (default
# gpu-results).
#
#   bash gpu-bin/gpu-measure.sh [ROUNDS]      (default 3)
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT:-gpu-results}
rounds=${1:-3}
mkdir -p "$out"
work=$(mktemp -d)
gunzip -c "$here/memtune.gz" > "$work/memtune" && gunzip -c "$here/cuda-tests.gz" > "$work/cuda-tests"
chmod +x "$work/memtune" "$work/cuda-tests"
# shellcheck disable=SC1091
source "$here/device-env.sh"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"

echo "== tests/cuda.rs"
"$work/cuda-tests" --test-threads 1 --nocapture 2>&1 | tee "$out/cuda-tests.txt"

echo "== bench memory (1M slots, GPU-sized)"
"$work/memtune" bench memory --device cuda --n-keys 256,1024 --tokens 8192 --d-model 1024 --heads 4 \
  --knn 32 --k-dim 256 --v-dim 1024 2>&1 | tee "$out/bench-memory.jsonl"

dense=(--d 1024 --layers 8 --heads 16 --d-ff 2752 --seq 1024 --batch 8)
memory=(--memory-layers 4 --n-keys 1024 --k-dim 256 --v-dim 1024)
for r in $(seq 1 "$rounds"); do
  for p in f32 bf16; do
    echo "== round $r memtune $p"
    "$work/memtune" bench step --config configs/bench-gpu.toml --device cuda --set "train.precision=\"$p\"" \
      --warmup 2 --steps 10 2>/dev/null | tail -1 | tee -a "$out/step-memtune-$p.jsonl"
  done
  echo "== round $r pytorch eager"
  python3 "$here/pytorch_step.py" --mode pretrain --steps 10 --device cuda "${dense[@]}" "${memory[@]}" 2>/dev/null | tail -1 | tee -a "$out/step-pytorch.jsonl"
  echo "== round $r dense only (no memory layer): memtune f32, pytorch"
  "$work/memtune" bench step --config configs/bench-gpu.toml --device cuda --set 'model.memory.layers=[]' \
    --warmup 2 --steps 10 2>/dev/null | tail -1 | tee -a "$out/step-memtune-dense.jsonl"
  python3 "$here/pytorch_step.py" --mode pretrain --steps 10 --device cuda "${dense[@]}" 2>/dev/null | tail -1 | tee -a "$out/step-pytorch-dense.jsonl"
done
python3 - "$out" <<'PY'
import json, statistics, sys, pathlib
out = pathlib.Path(sys.argv[1])
def tps(name):
    p = out / name
    return [json.loads(l)["tokens_per_s"] for l in p.read_text().splitlines() if l.strip().startswith("{")] if p.exists() else []
for ours, theirs in [("step-memtune-f32.jsonl", "step-pytorch.jsonl"), ("step-memtune-bf16.jsonl", "step-pytorch.jsonl"),
                     ("step-memtune-dense.jsonl", "step-pytorch-dense.jsonl")]:
    o, t = tps(ours), tps(theirs)
    if o and t:
        r = [a / b for a, b in zip(o, t)]
        print(f"{ours}: memtune {statistics.median(o):.0f} tok/s, pytorch {statistics.median(t):.0f}, ratios {[round(x, 2) for x in r]}, median {statistics.median(r):.2f}")
PY
rm -rf "$work"
