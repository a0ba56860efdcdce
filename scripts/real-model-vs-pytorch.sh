#!/usr/bin/env bash
# Training-step and generation speed of a real model folder: memtune against PyTorch eager
# (transformers, f32, same threads), alternating in one run so machine noise hits both.
#
#   scripts/real-model-vs-pytorch.sh [MODEL_DIR] [ROUNDS]
#   e.g. scripts/real-model-vs-pytorch.sh models/smollm2-135m-instruct 3
# Needs: cargo build --release; python3 -m pip install torch transformers; the model folder
# (scripts/get-smollm2.sh). Step shape: batch 1 × seq 256, AdamW on every weight; generation:
# 128 prompt tokens, 64 new tokens, batch 1, greedy with the KV cache.
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-models/smollm2-135m-instruct}
rounds=${2:-3}
bin=target/release/memtune
[ -x "$bin" ] || cargo build --release
[ -f "$model/config.json" ] || { echo "no model folder $model (run scripts/get-smollm2.sh)" >&2; exit 1; }
python3 -c "import torch, transformers" 2>/dev/null || { echo "needs: python3 -m pip install torch transformers" >&2; exit 1; }
export RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-2}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
# memtune's bench step takes an experiment config: the model folder's architecture via [init].
cat > "$tmp/step.toml" <<TOML
[init]
model = "$model"
[train]
batch_size = 1
seq_len = 256
lr = 1e-4
weight_decay = 0.0
TOML
field() { python3 -c "import json,sys; print(json.loads(sys.stdin.read().strip().splitlines()[-1])['$1'])"; }
for r in $(seq 1 "$rounds"); do
  ms=$("$bin" bench step --config "$tmp/step.toml" --warmup 1 --steps 3 2>/dev/null)
  ps=$(python3 scripts/pytorch_hf.py step --model "$model" --batch 1 --seq 256 --steps 3 2>/dev/null | tail -1)
  mg=$("$bin" bench generate --model "$model" --prompt-tokens 128 --new-tokens 64 --runs 3 2>/dev/null)
  pg=$(python3 scripts/pytorch_hf.py generate --model "$model" --prompt-tokens 128 --new-tokens 64 --runs 3 2>/dev/null | tail -1)
  echo "round $r step     memtune $(echo "$ms" | field tokens_per_s) tok/s, pytorch $(echo "$ps" | field tokens_per_s) tok/s"
  echo "round $r prefill  memtune $(echo "$mg" | field prefill_tokens_per_s) tok/s, pytorch $(echo "$pg" | field prefill_tokens_per_s) tok/s"
  echo "round $r decode   memtune $(echo "$mg" | field decode_tokens_per_s) tok/s, pytorch $(echo "$pg" | field decode_tokens_per_s) tok/s"
  echo "$ms" >> "$tmp/ms"; echo "$ps" >> "$tmp/ps"; echo "$mg" >> "$tmp/mg"; echo "$pg" >> "$tmp/pg"
done
python3 - "$tmp" <<'PY'
import json, statistics, sys, os
d = sys.argv[1]
load = lambda f: [json.loads(l) for l in open(os.path.join(d, f)) if l.strip()]
ms, ps, mg, pg = load("ms"), load("ps"), load("mg"), load("pg")
for name, a, b, key in [("step", ms, ps, "tokens_per_s"), ("prefill", mg, pg, "prefill_tokens_per_s"), ("decode", mg, pg, "decode_tokens_per_s")]:
    ratios = [x[key] / y[key] for x, y in zip(a, b)]
    print(f"{name}: memtune median {statistics.median(x[key] for x in a):.1f} tok/s, pytorch median {statistics.median(y[key] for y in b):.1f} tok/s, "
          f"ratio per round {[round(r, 2) for r in ratios]}, median ratio {statistics.median(ratios):.2f}")
PY
