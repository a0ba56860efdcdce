#!/usr/bin/env bash
# Training-step and generation speed of a real model folder: memtune against PyTorch eager
# (transformers, f32, same threads), alternating in one run so machine noise hits both.
#
#   scripts/real-model-vs-pytorch.sh [MODEL_DIR] [ROUNDS]
#   e.g. scripts/real-model-vs-pytorch.sh models/smollm2-135m-instruct 3
# Needs: cargo build --release; python3 -m pip install torch transformers; the model folder
# (scripts/get-smollm2.sh); peft for the LoRA step. Step shape: batch 1 × seq 256: AdamW on every
# weight (full), and LoRA (memtune's [finetune.lora] defaults: rank 16, alpha 32, every projection)
# against PyTorch + PEFT with the same adapters; generation: 128 prompt tokens, 64 new tokens,
# batch 1, greedy with the KV cache. memtune's sparse-memory step on the retrofit architecture
# (configs/smollm2-retrofit.toml's memory, random values) is reported beside its full step: a
# method that trains no dense weight must cost clearly less.
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
sed -e "s#^model = .*#model = \"$model\"#" configs/smollm2-retrofit.toml > "$tmp/retrofit.toml"
field() { python3 -c "import json,sys; print(json.loads(sys.stdin.read().strip().splitlines()[-1])['$1'])"; }
for r in $(seq 1 "$rounds"); do
  ms=$("$bin" bench step --config "$tmp/step.toml" --warmup 1 --steps 3 2>/dev/null)
  ps=$(python3 scripts/pytorch_hf.py step --model "$model" --batch 1 --seq 256 --steps 3 2>/dev/null | tail -1)
  ml=$("$bin" bench step --config "$tmp/step.toml" --method lora --warmup 1 --steps 3 2>/dev/null)
  pl=$(python3 scripts/pytorch_hf.py step --model "$model" --batch 1 --seq 256 --steps 3 --lora-rank 16 --lora-alpha 32 2>/dev/null | tail -1)
  msm=$("$bin" bench step --config "$tmp/retrofit.toml" --set train.batch_size=1 --set train.seq_len=256 --method sparse-memory --warmup 1 --steps 3 2>/dev/null)
  mg=$("$bin" bench generate --model "$model" --prompt-tokens 128 --new-tokens 64 --runs 3 2>/dev/null)
  pg=$(python3 scripts/pytorch_hf.py generate --model "$model" --prompt-tokens 128 --new-tokens 64 --runs 3 2>/dev/null | tail -1)
  echo "round $r step     memtune $(echo "$ms" | field tokens_per_s) tok/s, pytorch $(echo "$ps" | field tokens_per_s) tok/s"
  echo "round $r lora     memtune $(echo "$ml" | field tokens_per_s) tok/s, pytorch+peft $(echo "$pl" | field tokens_per_s) tok/s"
  echo "round $r sparse-memory step (retrofit) memtune $(echo "$msm" | field tokens_per_s) tok/s"
  echo "round $r prefill  memtune $(echo "$mg" | field prefill_tokens_per_s) tok/s, pytorch $(echo "$pg" | field prefill_tokens_per_s) tok/s"
  echo "round $r decode   memtune $(echo "$mg" | field decode_tokens_per_s) tok/s, pytorch $(echo "$pg" | field decode_tokens_per_s) tok/s"
  echo "$ms" >> "$tmp/ms"; echo "$ps" >> "$tmp/ps"; echo "$ml" >> "$tmp/ml"; echo "$pl" >> "$tmp/pl"; echo "$msm" >> "$tmp/msm"; echo "$mg" >> "$tmp/mg"; echo "$pg" >> "$tmp/pg"
done
python3 - "$tmp" <<'PY'
import json, statistics, sys, os
d = sys.argv[1]
load = lambda f: [json.loads(l) for l in open(os.path.join(d, f)) if l.strip()]
ms, ps, mg, pg, ml, pl, msm = (load(f) for f in ("ms", "ps", "mg", "pg", "ml", "pl", "msm"))
print(f"cpu: {ms[0]['cpu']}, simd {ms[0]['simd']}, threads {ms[0]['threads']}")
for name, a, b, key in [("step", ms, ps, "tokens_per_s"), ("lora step (vs peft)", ml, pl, "tokens_per_s"), ("sparse-memory step (vs memtune full step)", msm, ms, "tokens_per_s"), ("prefill", mg, pg, "prefill_tokens_per_s"), ("decode", mg, pg, "decode_tokens_per_s")]:
    ratios = [x[key] / y[key] for x, y in zip(a, b)]
    print(f"{name}: memtune median {statistics.median(x[key] for x in a):.1f} tok/s, pytorch median {statistics.median(y[key] for y in b):.1f} tok/s, "
          f"ratio per round {[round(r, 2) for r in ratios]}, median ratio {statistics.median(ratios):.2f}")
PY
