//! Load a model folder: a memtune run directory, a Hugging Face-style folder holding
//! `config.json`, `model.safetensors` (or shards listed in `model.safetensors.index.json`) and
//! `tokenizer.json`, or a repo id (`org/name[@revision]`) found in the local hub cache
//! (`hub_cache`; never the network).

use super::{hub_cache, Llama, LlamaConfig, ParamBuilder, ParamStore};
use crate::data::tokenizer::Tokenizer;
use crate::io::files::{CONFIG_FILE, MODEL_FILE, TOKENIZER_FILE, WEIGHT_INDEX_FILE};
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

/// The shard files `model.safetensors.index.json` lists (its `weight_map` values), sorted.
fn index_shards(index: &Path) -> Result<Vec<String>> {
    let bad = |msg: String| MemtuneError::BadCheckpoint { path: index.to_path_buf(), msg };
    let text = std::fs::read_to_string(index).map_err(|e| bad(format!("cannot read: {e}")))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let map = v["weight_map"].as_object().ok_or_else(|| bad("no \"weight_map\" object".into()))?;
    let mut files = map
        .iter()
        .map(|(name, f)| f.as_str().map(String::from).ok_or_else(|| bad(format!("weight_map.{name} is not a file name"))))
        .collect::<Result<Vec<String>, _>>()?;
    files.sort();
    files.dedup();
    Ok(files)
}

/// The safetensors files holding a folder's weights.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join(MODEL_FILE);
    if single.exists() {
        return Ok(vec![single]);
    }
    let index = dir.join(WEIGHT_INDEX_FILE);
    if index.exists() {
        return Ok(index_shards(&index)?.into_iter().map(|f| dir.join(f)).collect());
    }
    Err(MemtuneError::BadCheckpoint { path: dir.to_path_buf(), msg: "no model.safetensors or model.safetensors.index.json".into() }.into())
}

/// Every file a model folder lacks (shards named by the index included); empty when complete.
/// A hub-cache link whose blob is gone counts as missing.
pub fn missing_files(dir: &Path) -> Result<Vec<String>> {
    let mut missing = vec![];
    if !dir.join(CONFIG_FILE).exists() {
        missing.push(CONFIG_FILE.to_string());
    }
    let index = dir.join(WEIGHT_INDEX_FILE);
    let single = dir.join(MODEL_FILE).exists();
    if !single && index.exists() {
        missing.extend(index_shards(&index)?.into_iter().filter(|f| !dir.join(f).exists()));
    } else if !single {
        missing.push("model.safetensors (or model.safetensors.index.json)".to_string());
    }
    if !dir.join(TOKENIZER_FILE).exists() {
        missing.push(TOKENIZER_FILE.to_string());
    }
    Ok(missing)
}

/// Check a folder has what a model needs; the error lists every missing file.
pub fn check_model_dir(dir: &Path) -> Result<()> {
    if !dir.is_dir() {
        return Err(MemtuneError::BadCheckpoint { path: dir.to_path_buf(), msg: "not a directory".into() }.into());
    }
    let missing = missing_files(dir)?;
    if missing.is_empty() {
        Ok(())
    } else {
        Err(MemtuneError::BadCheckpoint { path: dir.to_path_buf(), msg: format!("missing {}", missing.join(", ")) }.into())
    }
}

pub fn load_config(dir: &Path) -> Result<LlamaConfig> {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    LlamaConfig::from_hf_json(&text).map_err(|e| MemtuneError::BadCheckpoint { path, msg: e.to_string() }.into())
}

/// Load config, weights and tokenizer from `dir` (a folder, run directory or cached repo id).
pub fn load_model_dir(dir: &Path, device: &Device) -> Result<LoadedModel> {
    let dir = &resolve_model_dir(dir)?;
    check_model_dir(dir)?;
    let cfg = load_config(dir)?;
    let tokenizer = Tokenizer::from_file(dir.join(TOKENIZER_FILE))?;
    let tensors = super::params::load_safetensors(&weight_files(dir)?, device)?;
    let names: Vec<String> = tensors.keys().cloned().collect();
    let store = ParamStore::new();
    // Frozen: a loaded model is for inference (frozen products skip the weight gradient and take
    // the few-row path while decoding); training methods build their own model over `store`.
    let model = Llama::new(&cfg, &ParamBuilder::from_tensors(&store, tensors, device).with_trainable(|_| false))
        .map_err(|e| MemtuneError::BadCheckpoint { path: dir.to_path_buf(), msg: format!("{e:#}") })?;
    let unused = unused_weights(&names, &store);
    if !unused.is_empty() {
        return Err(MemtuneError::BadCheckpoint {
            path: dir.to_path_buf(),
            msg: format!("weights memtune's decoder has no place for (another architecture?): {}", unused.join(", ")),
        }
        .into());
    }
    Ok(LoadedModel { model, store, tokenizer, dir: dir.to_path_buf() })
}

/// Checkpoint weights of the transformer (`model.*`, `lm_head.bias`) that the built model did
/// not take: a sign that the file is of an architecture memtune would compute differently (e.g.
/// Qwen3's q/k norms). Not counted: a stored `lm_head.weight` beside tied embeddings, RoPE
/// tables some exporters keep, and memtune's own non-parameter tensors outside `model.`.
fn unused_weights(names: &[String], store: &ParamStore) -> Vec<String> {
    let mut unused: Vec<String> = names
        .iter()
        .filter(|n| n.starts_with("model.") || n.as_str() == "lm_head.bias")
        .filter(|n| !n.ends_with("rotary_emb.inv_freq") && store.get(n).is_none())
        .cloned()
        .collect();
    unused.sort();
    unused
}

/// The folder a `--model` argument stands for, with the hub cache at `hub_cache::cache_root()`.
pub fn resolve_model_dir(arg: &Path) -> Result<PathBuf> {
    resolve_model_dir_in(arg, &hub_cache::cache_root())
}

/// The folder a `--model` argument stands for: an existing path is itself (a run directory
/// stands for its checkpoint folder); otherwise an `org/name[@revision]` argument is looked up
/// in the hub cache at `cache_root`, and the snapshot found must hold every file a model needs
/// (the error lists what is missing and where it looked). Anything else is returned as is, for
/// `check_model_dir` to report.
pub fn resolve_model_dir_in(arg: &Path, cache_root: &Path) -> Result<PathBuf> {
    if arg.exists() {
        let ck = arg.join("checkpoint");
        return Ok(if !arg.join(CONFIG_FILE).exists() && ck.join(CONFIG_FILE).exists() { ck } else { arg.to_path_buf() });
    }
    let Some(repo) = arg.to_str().and_then(hub_cache::RepoRef::parse) else {
        return Ok(arg.to_path_buf());
    };
    let snap = hub_cache::snapshot_dir(&repo, cache_root).map_err(|e| anyhow::anyhow!("no folder {} here, and {e:#}", arg.display()))?;
    let missing = missing_files(&snap)?;
    if !missing.is_empty() {
        return Err(MemtuneError::Other(format!(
            "model {repo} in the hub cache ({}) is missing {}; download them, e.g. `huggingface-cli download {}`",
            snap.display(),
            missing.join(", "),
            repo.repo_id
        ))
        .into());
    }
    Ok(snap)
}
