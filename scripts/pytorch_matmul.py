#!/usr/bin/env python3
"""PyTorch anchor for `memtune bench matmul`: GFLOP/s of x (M, K) @ w.t() with w stored (N, K),
f32 on the CPU, median of --reps timed products; one JSON line per shape with memtune's keys.

  python3 scripts/pytorch_matmul.py --shapes 1024x256x688,1024x256x4096 [--threads 2]
"""
import argparse, json, statistics, time

import torch

p = argparse.ArgumentParser()
p.add_argument("--shapes", required=True)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--warmup", type=int, default=3)
p.add_argument("--reps", type=int, default=20)
a = p.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(0)
for spec in a.shapes.split(","):
    m, k, n = (int(v) for v in spec.split("x"))
    x, w = torch.randn(m, k), torch.randn(n, k) * 0.05
    for _ in range(a.warmup):
        x @ w.t()
    times = []
    for _ in range(a.reps):
        t0 = time.perf_counter()
        x @ w.t()
        times.append(time.perf_counter() - t0)
    s = statistics.median(times)
    print(json.dumps({"impl": "pytorch", "torch": torch.__version__, "simd": torch.backends.cpu.get_cpu_capability(),
                      "threads": a.threads, "m": m, "k": k, "n": n, "ms": s * 1e3, "gflop_per_s": 2 * m * k * n / s / 1e9}))
