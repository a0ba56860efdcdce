#!/usr/bin/env bash
# Training-step speed of memtune against PyTorch eager on the same shape, measured alternately
# in one run so that machine noise hits both. Prints each measurement and the median ratio.
#
#   scripts/step-vs-pytorch.sh [ROUNDS] [CONFIG] [-- extra args for pytorch_step.py]
#   e.g. scripts/step-vs-pytorch.sh 5 configs/bench-reference.toml
#        scripts/step-vs-pytorch.sh 5 configs/bench-reference-memory.toml -- --memory-layers 2
#   On a GPU (the CUDA build): MEMTUNE_BIN=target-cuda/release/memtune DEVICE=cuda scripts/step-vs-pytorch.sh 3 configs/bench-gpu.toml -- ...
# Needs: cargo build --release; python3 -m pip install torch. Env: MEMTUNE_BIN (default
# target/release/memtune), DEVICE (cpu | cuda | cuda:N, default cpu: both sides run there).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
config=${2:-configs/bench-reference.toml}
shift $(( $# >= 2 ? 2 : $# ))
[ "${1:-}" = "--" ] && shift
anchor=${ANCHOR:-../shared/anchors/pytorch_step.py}
bin=${MEMTUNE_BIN:-target/release/memtune}
device=${DEVICE:-cpu}
[ -x "$bin" ] || cargo build --release
python3 -c "import torch" 2>/dev/null || { echo "needs PyTorch: python3 -m pip install torch" >&2; exit 1; }
ours=(); theirs=()
for r in $(seq 1 "$rounds"); do
  m=$("$bin" bench step --config "$config" --device "$device" --warmup 2 --steps 10 2>/dev/null)
  p=$(python3 "$anchor" --mode pretrain --steps 10 --device "$device" "$@" 2>/dev/null | tail -1)
  echo "round $r memtune: $m"
  echo "round $r pytorch: $p"
  ours+=("$(echo "$m" | python3 -c 'import json,sys; print(json.load(sys.stdin)["tokens_per_s"])')")
  theirs+=("$(echo "$p" | python3 -c 'import json,sys; print(json.load(sys.stdin)["tokens_per_s"])')")
done
python3 - "${ours[*]}" "${theirs[*]}" <<'PY'
import statistics, sys
o = [float(x) for x in sys.argv[1].split()]; t = [float(x) for x in sys.argv[2].split()]
ratios = [a / b for a, b in zip(o, t)]
print(f"memtune tokens/s median {statistics.median(o):.0f}, pytorch eager median {statistics.median(t):.0f}, "
      f"ratio per round {[round(r, 2) for r in ratios]}, median ratio {statistics.median(ratios):.2f}")
PY
