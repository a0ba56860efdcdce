//! `memtune demo`: synthesise a world, train a tokenizer, pretrain a tiny model, and report
//! closed-book QA on the pretraining world: on people whose QA pairs were in the training stream,
//! and on people seen only through biographies (the transfer that makes facts learned as
//! statements answerable as questions).

use crate::config::ExperimentConfig;
use crate::data::synthetic::{Split, World};
use crate::eval::qa::{evaluate, sample_items, world_items, QaReport};
use crate::io::checkpoint::Checkpoint;
use crate::model::pretrained::load_model_dir;
use crate::train::pretrain::{self, CHECKPOINT_DIR};
use anyhow::Result;
use candle_core::Device;
use std::path::Path;

/// The demo's built-in config.
pub const DEMO_TOML: &str = include_str!("../../configs/demo.toml");

/// The demo config with `overrides` applied.
pub fn default_config(overrides: &[String]) -> Result<ExperimentConfig> {
    ExperimentConfig::from_toml_str(DEMO_TOML, "configs/demo.toml (built in)", overrides)
}

pub fn run(cfg: &ExperimentConfig) -> Result<()> {
    let dir = Path::new(&cfg.run.dir);
    let ckpt = dir.join(CHECKPOINT_DIR);
    if reusable(&ckpt, cfg) {
        tracing::info!("reusing the finished pretraining run in {}", dir.display());
    } else {
        if Checkpoint::exists(&ckpt) {
            anyhow::bail!(
                "{} holds a different or unfinished run; remove it or pass --set run.dir=OTHER",
                dir.display()
            );
        }
        pretrain::run(cfg, false)?;
    }
    let m = load_model_dir(&ckpt, &Device::Cpu)?;
    let world = World::generate(&cfg.data.world);
    let n = cfg.eval.max_questions;
    let mut rows: Vec<(&str, QaReport)> = vec![];
    for (label, split) in [("qa (QA pairs trained on)", Split::Qa), ("bio-only (QA held out)", Split::BioOnly)] {
        let items = sample_items(world_items(&world, split), n, cfg.train.seed);
        rows.push((label, evaluate(&m.model, &m.tokenizer, &items)?.0));
    }
    println!("\nClosed-book QA on the pretraining world ({}):\n", dir.display());
    println!("| people | questions | exact match | token F1 |");
    println!("|---|---:|---:|---:|");
    for (label, r) in &rows {
        println!("| {label} | {} | {:.3} ± {:.3} | {:.3} |", r.n, r.em, r.em_stderr, r.f1);
    }
    let json = serde_json::json!({
        "qa": rows[0].1, "bio_only": rows[1].1,
    });
    crate::io::atomic::write_atomic(&dir.join("demo_results.json"), serde_json::to_string_pretty(&json)?.as_bytes())?;
    println!("\nmodel: {}  (try: memtune generate --model {} --prompt \"Q: ...\")", ckpt.display(), dir.display());
    Ok(())
}

/// A finished checkpoint of exactly this config.
fn reusable(ckpt: &Path, cfg: &ExperimentConfig) -> bool {
    let Ok(text) = std::fs::read_to_string(ckpt.join("experiment.toml")) else { return false };
    let Ok(state) = std::fs::read_to_string(ckpt.join("trainer_state.json")) else { return false };
    let step = serde_json::from_str::<serde_json::Value>(&state).ok().and_then(|v| v["step"].as_u64());
    text == cfg.to_toml() && step == Some(cfg.train.steps as u64)
}
