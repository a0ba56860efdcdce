//! `memtune demo`: the quick learning-vs-forgetting benchmark, end to end on built-in defaults
//! (`memtune bench forgetting --quick` with configs/forgetting.toml): synthesise a world, train a
//! tokenizer, pretrain a small memory model (or reuse it), build its background index, learn the
//! same new facts with sparse memory finetuning, LoRA and full finetuning, and print the table of
//! learning against forgetting and where the Pareto plot is. Needs nothing but the Rust toolchain.

use crate::bench::forgetting::{self, ForgettingOutcome};
use crate::config::ExperimentConfig;
use anyhow::Result;
use candle_core::Device;
use std::path::Path;

/// The demo's config: `path` (default: the built-in configs/forgetting.toml) with its `--quick`
/// preset and then `overrides` applied.
pub fn config(path: Option<&Path>, overrides: &[String]) -> Result<ExperimentConfig> {
    forgetting::load_config(path, true, overrides)
}

/// Run the quick benchmark and print its table and the paths of its results.
pub fn run(cfg: &ExperimentConfig, device: &Device) -> Result<ForgettingOutcome> {
    let out = forgetting::run(cfg, true, device)?;
    println!("\n{}", out.table);
    println!("results: {}", out.out.join("results.jsonl").display());
    println!("table:   {}", out.out.join("results.md").display());
    println!("plot:    {} (and pareto.svg)", out.out.join("pareto.png").display());
    println!("\nthe full benchmark: memtune bench forgetting (configs/forgetting.toml)");
    Ok(out)
}
