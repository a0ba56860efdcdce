//! `memtune background`: build the TF-IDF background index of a checkpoint (docs/design.md, "Sparse memory finetuning") and
//! store it there: `memory.background_df` (u32, one entry per slot: the number of background
//! batches that accessed it) in `model.safetensors`, B in its header metadata
//! (`background_batches`).
//!
//! Background data is the run's own pretraining distribution (the synthetic world's stream or
//! its text corpus) from a seed of its own, cut into `[background]` batches of `batch_size`
//! sequences.

use super::pretrain::{run_tokenizer, training_stream};
use super::tfidf::{BackgroundIndex, BACKGROUND_BATCHES_KEY, BACKGROUND_DF_NAME};
use crate::config::{BackgroundConfig, DataSource, ExperimentConfig};
use crate::data::synthetic::World;
use crate::io::checkpoint::{Checkpoint, LoadedCheckpoint};
use crate::io::files::EXPERIMENT_FILE;
use crate::model::{Llama, ParamBuilder, ParamStore};
use crate::MemtuneError;
use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Seed offset of the background stream (same distribution as pretraining, other documents).
pub const BACKGROUND_SEED: u64 = 0xbac6_0000;

/// What `memtune background` reports.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BackgroundReport {
    pub checkpoint: String,
    pub batches: u64,
    pub slots: usize,
    /// Fraction of slots accessed by at least one background batch.
    pub coverage: f64,
    pub seconds: f64,
}

/// The index stored in a checkpoint, if it has one.
pub fn stored_index(model: &HashMap<String, Tensor>, metadata: &BTreeMap<String, String>, path: &Path) -> Result<Option<BackgroundIndex>> {
    let Some(df) = model.get(BACKGROUND_DF_NAME) else { return Ok(None) };
    let bad = |msg: String| MemtuneError::BadCheckpoint { path: path.to_path_buf(), msg };
    let b: u64 = metadata
        .get(BACKGROUND_BATCHES_KEY)
        .ok_or_else(|| bad(format!("has `{BACKGROUND_DF_NAME}` but no `{BACKGROUND_BATCHES_KEY}` in its metadata")))?
        .parse()
        .map_err(|e| bad(format!("`{BACKGROUND_BATCHES_KEY}` is not a number: {e}")))?;
    Ok(Some(BackgroundIndex::from_tensor(df, b).map_err(|e| bad(format!("`{BACKGROUND_DF_NAME}`: {e:#}")))?))
}

/// Optimiser steps of the checkpoint in `dir` (read from its `trainer_state.json` alone).
pub fn checkpoint_step(dir: &Path) -> Result<usize> {
    let p = dir.join(crate::io::checkpoint::TRAINER_STATE_FILE);
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?)
        .map_err(|e| MemtuneError::BadCheckpoint { path: p.clone(), msg: e.to_string() })?;
    v["step"].as_u64().map(|s| s as usize).ok_or_else(|| MemtuneError::BadCheckpoint { path: p, msg: "no step".into() }.into())
}

/// The experiment config a checkpoint was trained with.
pub fn checkpoint_config(ck: &LoadedCheckpoint) -> Result<ExperimentConfig> {
    ExperimentConfig::from_toml_str(&ck.meta.experiment_toml, &ck.dir.join(EXPERIMENT_FILE).display().to_string(), &[])
}

/// Build the background index of the checkpoint in `ckpt_dir` (a memtune checkpoint folder, or a
/// run directory holding one) and write it into that checkpoint. `progress(done, total)`.
pub fn build_and_store(
    ckpt_dir: &Path,
    bg: &BackgroundConfig,
    device: &Device,
    mut progress: impl FnMut(usize, usize),
) -> Result<BackgroundReport> {
    let dir = crate::model::pretrained::resolve_model_dir(ckpt_dir)?;
    let t0 = std::time::Instant::now();
    let mut ck = Checkpoint::load(&dir, device)?;
    let cfg = checkpoint_config(&ck)?;
    if cfg.model.memory.as_ref().is_none_or(|m| m.layers.is_empty()) {
        return Err(
            MemtuneError::BadCheckpoint { path: dir.clone(), msg: "the model has no memory layer, so no background index".into() }.into()
        );
    }
    let world = matches!(cfg.data.source, DataSource::Synthetic).then(|| World::generate(&cfg.data.world));
    let tok = run_tokenizer(&cfg, &dir, world.as_ref())?;
    let store = ParamStore::new();
    let tensors: HashMap<String, Tensor> =
        ck.model.iter().filter(|(k, _)| k.as_str() != BACKGROUND_DF_NAME).map(|(k, v)| (k.clone(), v.clone())).collect();
    let model = Llama::new(&cfg.model, &ParamBuilder::from_tensors(&store, tensors, device))?;
    let mut scfg = cfg.clone();
    scfg.train.batch_size = bg.batch_size;
    if bg.seq_len > 0 {
        scfg.train.seq_len = bg.seq_len;
    }
    let mut source = training_stream(&scfg, world.as_ref(), &tok, cfg.train.seed ^ BACKGROUND_SEED, None)?;
    let index = BackgroundIndex::build(&model, source.as_mut(), bg.batches, |b| progress(b, bg.batches))?;
    drop(model);
    ck.model.insert(BACKGROUND_DF_NAME.to_string(), index.to_tensor()?);
    ck.meta.model_metadata.insert(BACKGROUND_BATCHES_KEY.to_string(), index.batches.to_string());
    // The tokenizer file, config and the rest are written back as they were.
    Checkpoint::save(&dir, &ck.model, &ck.optimizer, &ck.meta)
        .with_context(|| format!("cannot write the background index into {}", dir.display()))?;
    Ok(BackgroundReport {
        checkpoint: dir.display().to_string(),
        batches: index.batches,
        slots: index.df.len(),
        coverage: index.coverage(),
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// `memtune background`: as [`build_and_store`], with a progress bar.
pub fn background_command(model_dir: &Path, bg: &BackgroundConfig, device: &Device) -> Result<BackgroundReport> {
    let bar = crate::util::progress_bar("background", bg.batches);
    let r = build_and_store(model_dir, bg, device, |done, _| bar.set_position(done as u64))?;
    bar.finish_and_clear();
    Ok(r)
}
