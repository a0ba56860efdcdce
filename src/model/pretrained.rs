//! Load a model folder: a memtune run directory or a Hugging Face-style folder holding
//! `config.json`, `model.safetensors` (or shards listed in `model.safetensors.index.json`) and
//! `tokenizer.json`.

use super::{Llama, LlamaConfig, ParamBuilder, ParamStore};
use crate::data::tokenizer::Tokenizer;
use crate::MemtuneError;
use anyhow::{Context, Result};
use candle_core::Device;
use std::path::{Path, PathBuf};

pub struct LoadedModel {
    pub model: Llama,
    pub store: ParamStore,
    pub tokenizer: Tokenizer,
    pub dir: PathBuf,
}

/// The safetensors files holding a folder's weights.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index)?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| MemtuneError::BadCheckpoint { path: index.clone(), msg: e.to_string() })?;
        let map = v["weight_map"]
            .as_object()
            .ok_or_else(|| MemtuneError::BadCheckpoint { path: index.clone(), msg: "no weight_map".into() })?;
        let mut files: Vec<String> = map.values().filter_map(|f| f.as_str().map(String::from)).collect();
        files.sort();
        files.dedup();
        return Ok(files.into_iter().map(|f| dir.join(f)).collect());
    }
    Err(MemtuneError::BadCheckpoint { path: dir.to_path_buf(), msg: "no model.safetensors or model.safetensors.index.json".into() }.into())
}

/// Check a folder has what a model needs; the error lists every missing file.
pub fn check_model_dir(dir: &Path) -> Result<()> {
    if !dir.is_dir() {
        return Err(MemtuneError::BadCheckpoint { path: dir.to_path_buf(), msg: "not a directory".into() }.into());
    }
    let mut missing = vec![];
    if !dir.join("config.json").exists() {
        missing.push("config.json");
    }
    if !dir.join("model.safetensors").exists() && !dir.join("model.safetensors.index.json").exists() {
        missing.push("model.safetensors (or model.safetensors.index.json)");
    }
    if !dir.join("tokenizer.json").exists() {
        missing.push("tokenizer.json");
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(MemtuneError::BadCheckpoint { path: dir.to_path_buf(), msg: format!("missing {}", missing.join(", ")) }.into())
    }
}

pub fn load_config(dir: &Path) -> Result<LlamaConfig> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    LlamaConfig::from_hf_json(&text).map_err(|e| MemtuneError::BadCheckpoint { path, msg: e.to_string() }.into())
}

/// Load config, weights and tokenizer from `dir`.
pub fn load_model_dir(dir: &Path, device: &Device) -> Result<LoadedModel> {
    let dir = &resolve_model_dir(dir);
    check_model_dir(dir)?;
    let cfg = load_config(dir)?;
    let tokenizer = Tokenizer::from_file(&dir.join("tokenizer.json"))?;
    let tensors = super::params::load_safetensors(&weight_files(dir)?, device)?;
    let store = ParamStore::new();
    let model = Llama::new(&cfg, &ParamBuilder::from_tensors(&store, tensors, device))
        .map_err(|e| MemtuneError::BadCheckpoint { path: dir.to_path_buf(), msg: format!("{e:#}") })?;
    Ok(LoadedModel { model, store, tokenizer, dir: dir.to_path_buf() })
}

/// A run directory stands for its checkpoint folder.
pub fn resolve_model_dir(dir: &Path) -> PathBuf {
    let ck = dir.join("checkpoint");
    if !dir.join("config.json").exists() && ck.join("config.json").exists() {
        ck
    } else {
        dir.to_path_buf()
    }
}
