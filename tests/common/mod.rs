//! Shared by the integration tests: the tiny config in a fresh run directory, and random inputs
//! of one memory layer. Not every test binary uses every item.
#![allow(dead_code)]

use candle_core::Tensor;
use memtune::config::ExperimentConfig;
use memtune::model::memory::MemoryLayer;
use memtune::model::{Linear, MemoryConfig};
use memtune::ops::gradcheck::randn;
use std::path::Path;

pub const TINY: &str = include_str!("../../configs/tiny-test.toml");

/// configs/tiny-test.toml with its run directory inside `dir` and extra overrides.
pub fn tiny_config(dir: &Path, overrides: &[&str]) -> ExperimentConfig {
    let mut all = vec![format!("run.dir=\"{}\"", dir.join("run").display())];
    all.extend(overrides.iter().map(|s| s.to_string()));
    ExperimentConfig::from_toml_str(TINY, "configs/tiny-test.toml", &all).unwrap()
}

/// (step, loss) of every line of a run's metrics.jsonl.
pub fn losses(run_dir: &Path) -> Vec<(u64, f32)> {
    std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap() as f32)
        })
        .collect()
}

/// Random inputs of one memory layer of config `m`: x (n_tok, d), W_q, b_q, keys, W1, b1, W2, b2,
/// value table; each seeded from `seed`.
pub fn memory_layer_inputs(m: &MemoryConfig, n_tok: usize, d: usize, seed: u64) -> Vec<Tensor> {
    let r = |shape: &[usize], s: u64, scale: f64| (randn(shape.to_vec(), seed * 100 + s).unwrap() * scale).unwrap();
    vec![
        r(&[n_tok, d], 0, 1.0),
        r(&[m.heads * m.k_dim, d], 1, 0.5),
        r(&[m.heads * m.k_dim], 2, 0.1),
        r(&[m.heads, 2, m.n_keys, m.k_dim / 2], 3, 0.5),
        r(&[m.v_dim, d], 4, 0.3),
        r(&[m.v_dim], 5, 0.1),
        r(&[d, m.v_dim], 6, 0.3),
        r(&[d], 7, 0.1),
        r(&[m.n_slots(), m.v_dim], 8, 0.5),
    ]
}

/// The memory layer over inputs laid out as [`memory_layer_inputs`] returns them (x unused).
pub fn memory_layer(m: &MemoryConfig, a: &[Tensor]) -> MemoryLayer {
    let lin = |w: &Tensor, b: &Tensor| Linear::from_weights(w.clone(), Some(b.clone()));
    MemoryLayer::from_parts(0, m.clone(), lin(&a[1], &a[2]), a[3].clone(), lin(&a[4], &a[5]), lin(&a[6], &a[7]), a[8].clone(), 1e-5)
        .unwrap()
}
