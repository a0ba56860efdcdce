#!/usr/bin/env bash
# Build memtune with `--features cuda` (README "GPU (CUDA)").
#
#   scripts/build-cuda.sh [cargo args]      e.g. scripts/build-cuda.sh --tests
#
# With a CUDA toolkit installed (nvcc on PATH, or CUDA_HOME set) this is just
# `cargo build --release --features cuda`. Without one (a build machine with no GPU), nvcc, the
# headers and the CUDA runtime libraries are installed from PyPI into a venv, pinned to CUDA 13.0
# (a newer nvcc emits PTX that a CUDA 13.0 driver cannot load), and the driver library libcuda.so,
# which only a GPU machine has, is replaced at link time by a stub exporting the symbols the
# binary references; the linker's undefined-symbol errors say which, so the stub grows until the
# link succeeds. At run time the real driver is found on the GPU machine.
# Env: MEMTUNE_CUDA_VENV (default ~/.cache/memtune-cuda), CUDA_COMPUTE_CAP (default 90: H100/H200).
set -euo pipefail
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
if command -v nvcc >/dev/null || [ -n "${CUDA_HOME:-}" ]; then
  exec cargo build --release --features cuda "$@"
fi

venv="${MEMTUNE_CUDA_VENV:-$HOME/.cache/memtune-cuda}"
if [ ! -e "$venv/.cuda-13.0" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "nvidia-cuda-nvcc==13.0.88" "nvidia-nvvm==13.0.88" "nvidia-cuda-runtime==13.0.*" \
    "nvidia-cuda-crt==13.0.*" "nvidia-cuda-cccl==13.0.*" "nvidia-cuda-nvrtc==13.0.*" "nvidia-cublas==13.0.*" "nvidia-curand==10.4.0.*"
  touch "$venv/.cuda-13.0"
fi
nvcc_path=$(find "$venv" -path '*nvidia/cu13/bin/nvcc' -type f | head -1)
[ -n "$nvcc_path" ] || { echo "no nvcc under $venv (delete it to reinstall)" >&2; exit 1; }
root=$(dirname "$(dirname "$nvcc_path")")
export PATH="$root/bin:$PATH" CUDA_HOME="$root" CUDA_ROOT="$root" CUDA_PATH="$root"

# Unversioned names for the linker, and the libcuda stub.
libs="$venv/link"; mkdir -p "$libs"
for l in cudart.so.13 cublas.so.13 cublasLt.so.13 curand.so.10 nvrtc.so.13; do ln -sf "$root/lib/lib$l" "$libs/lib${l%%.so*}.so"; done
syms="$libs/libcuda.symbols"; touch "$syms"
export RUSTFLAGS="${RUSTFLAGS:-} -L $libs"
log="$libs/build.log"
for _ in $(seq 1 30); do
  sed 's/.*/void &(void) {}/' "$syms" > "$libs/stub.c"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 "$libs/stub.c" -o "$libs/libcuda.so"
  if cargo build --release --features cuda "$@" >"$log" 2>&1; then
    echo "built with --features cuda (libcuda stub: $(wc -l <"$syms") symbols; log: $log)" >&2
    exit 0
  fi
  missing=$(grep -o "undefined symbol: cu[A-Za-z0-9_]*" "$log" | awk '{print $3}' | sort -u)
  if [ -z "$missing" ]; then tail -40 "$log" >&2; exit 1; fi
  printf '%s\n' $missing >> "$syms"
  sort -u "$syms" -o "$syms"
done
echo "the link still fails after 30 rounds; see $log" >&2
exit 1
