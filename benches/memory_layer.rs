//! Criterion wrapper around `memtune bench memory`: forward + backward of one memory layer
//! (1024 tokens, d 256, heads 4, knn 32, k_dim 128, v_dim 256) for 64K and 1M slots.
//! Run: `cargo bench --bench memory_layer` (the 4M-slot point: `memtune bench memory`).

use criterion::{criterion_group, criterion_main, Criterion};
use memtune::bench::memory::{LayerBench, MemoryBenchOptions};

fn memory_layer(c: &mut Criterion) {
    let mut g = c.benchmark_group("memory_layer");
    g.sample_size(10);
    for n_keys in [256usize, 1024] {
        let o = MemoryBenchOptions {
            n_keys: vec![n_keys],
            tokens: 1024,
            d_model: 256,
            heads: 4,
            knn: 32,
            k_dim: 128,
            v_dim: 256,
            warmup: 0,
            reps: 1,
            device: candle_core::Device::Cpu,
        };
        let bench = LayerBench::new(&o, n_keys).expect("memory layer");
        g.bench_function(format!("fwd_bwd_n_keys_{n_keys}"), |b| b.iter(|| bench.fwd_bwd().expect("step")));
    }
    g.finish();
}

criterion_group!(benches, memory_layer);
criterion_main!(benches);
