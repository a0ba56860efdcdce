//! Criterion wrapper around `memtune bench step`: one training step (forward, backward, AdamW)
//! of configs/bench-reference.toml. Run: `cargo bench --bench train_step`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use memtune::bench::step::StepBench;
use memtune::config::ExperimentConfig;

fn train_step(c: &mut Criterion) {
    let cfg = ExperimentConfig::from_toml_str(include_str!("../configs/bench-reference.toml"), "configs/bench-reference.toml", &[])
        .expect("bench config");
    let bench = StepBench::new(&cfg, &candle_core::Device::Cpu).expect("model");
    let mut source = bench.random_source().expect("data");
    let mut trainer = bench.trainer().expect("trainer");
    let mut step = 0;
    let mut g = c.benchmark_group("train_step");
    g.sample_size(10);
    g.throughput(Throughput::Elements((cfg.train.batch_size * cfg.train.seq_len) as u64));
    g.bench_function("bench-reference", |b| {
        b.iter(|| {
            trainer.step(source.as_mut(), step).expect("step");
            step += 1;
        })
    });
    g.finish();
}

criterion_group!(benches, train_step);
criterion_main!(benches);
