//! Shared by the integration tests: the tiny config in a fresh run directory.

use memtune::config::ExperimentConfig;
use std::path::Path;

pub const TINY: &str = include_str!("../../configs/tiny-test.toml");

/// configs/tiny-test.toml with its run directory inside `dir` and extra overrides.
pub fn tiny_config(dir: &Path, overrides: &[&str]) -> ExperimentConfig {
    let mut all = vec![format!("run.dir=\"{}\"", dir.join("run").display())];
    all.extend(overrides.iter().map(|s| s.to_string()));
    ExperimentConfig::from_toml_str(TINY, "configs/tiny-test.toml", &all).unwrap()
}

#[allow(dead_code)] // not every test binary uses it
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
