#!/usr/bin/env bash
# Runs the CUDA kernels of kernels/*.cu on the CPU, one std::thread per CUDA thread
# (kernels/emulate/shim.h: block barriers for __syncthreads, per-warp barriers for the shuffles),
# and checks them against plain loops (kernels/emulate/check.cpp): product-key selection against
# brute force (ties included), the embedding bag forward and backward, lazy AdamW (both variants),
# sparse SGD, scaling and the dense AdamW (kernels/memory.cu); RMSNorm, softmax, SwiGLU, RoPE and
# cross-entropy / token log-probs, forward and backward (kernels/dense.cu). A check of the kernels' logic where no GPU is at hand;
# it says nothing of their speed, nor of GPU-only behaviour (memory model, launch limits).
# Needs g++ with C++20. Usage: scripts/check-kernels-on-cpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# The kernel source as host C++: the shim instead of the CUDA headers, dynamic shared memory as a
# global buffer.
sed 's/extern __shared__ float sh\[\];/float* sh = g_dyn_shared;/; s/#include <stdint.h>/#include "shim.h"/' kernels/memory.cu > "$tmp/memory_emu.cpp"
sed 's/#include <stdint.h>/#include "shim.h"/' kernels/dense.cu > "$tmp/dense_emu.cpp"
cp kernels/emulate/shim.h kernels/emulate/check.cpp "$tmp/"
g++ -std=c++20 -O1 -pthread "$tmp/check.cpp" -o "$tmp/check"
"$tmp/check"
