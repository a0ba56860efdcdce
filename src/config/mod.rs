//! Experiment configs: TOML files whose sections override built-in defaults, plus
//! `--set key=value` overrides. Unknown or ill-typed keys are errors that name the key and file.
//! One file per section; every type is re-exported here.

mod background;
mod data;
mod finetune;
mod forgetting;
mod init;
mod overrides;
mod seal;
mod train;

pub use background::*;
pub use data::*;
pub use finetune::*;
pub use forgetting::*;
pub use init::*;
pub use seal::*;
pub use train::*;

use crate::model::LlamaConfig;
use crate::MemtuneError;
use anyhow::Result;
use overrides::{apply_override, snippet};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ExperimentConfig {
    pub model: LlamaConfig,
    pub train: TrainConfig,
    pub data: DataConfig,
    pub eval: EvalConfig,
    pub run: RunConfig,
    /// `memtune background`: the TF-IDF background index.
    pub background: BackgroundConfig,
    /// `memtune finetune`: learning new facts with one method.
    pub finetune: FinetuneConfig,
    /// `memtune bench forgetting`: the learning-vs-forgetting grid.
    pub forgetting: ForgettingConfig,
    /// `memtune pretrain` from a trained model (continued pretraining, memory retrofit).
    pub init: InitConfig,
    /// `memtune seal`: self-edits, inner-loop rewards, ReST-EM, continual SEAL.
    pub seal: SealConfig,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// Questions asked per split (a seeded sample; 0 = all).
    pub max_questions: usize,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self { max_questions: 300 }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// Run directory: checkpoints, metrics.jsonl, the resolved config.
    pub dir: String,
    /// "cpu", "cuda" (= cuda:0) or "cuda:N" (the CUDA build); `--device` on the command line.
    pub device: String,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self { dir: "runs/default".into(), device: "cpu".into() }
    }
}

impl ExperimentConfig {
    /// Load `path` (if given) over the defaults and apply `key=value` overrides.
    pub fn load(path: Option<&Path>, overrides: &[String]) -> Result<Self> {
        let (file, text) = match path {
            Some(p) => {
                let text =
                    std::fs::read_to_string(p).map_err(|e| MemtuneError::Other(format!("cannot read config {}: {e}", p.display())))?;
                (p.display().to_string(), text)
            }
            None => ("<defaults>".to_string(), String::new()),
        };
        Self::from_toml_str(&text, &file, overrides)
    }

    pub fn from_toml_str(text: &str, file: &str, overrides: &[String]) -> Result<Self> {
        let mut value: toml::Table = text.parse().map_err(|e: toml::de::Error| MemtuneError::BadConfigValue {
            file: file.into(),
            key: e.span().map(|s| snippet(text, s)).unwrap_or_default(),
            msg: e.message().to_string(),
        })?;
        for o in overrides {
            apply_override(&mut value, o, file)?;
        }
        let cfg: ExperimentConfig = serde_path_to_error::deserialize(toml::Value::Table(value)).map_err(|e| {
            let key = e.path().to_string();
            let msg = e.inner().to_string();
            if let Some(rest) = msg.strip_prefix("unknown field `") {
                let name = rest.split('`').next().unwrap_or("");
                // serde_path_to_error's path already ends at the unknown field.
                let full = if key.is_empty() || key == "." {
                    name.to_string()
                } else if key == name || key.ends_with(&format!(".{name}")) {
                    key.clone()
                } else {
                    format!("{key}.{name}")
                };
                let hint = rest
                    .split_once(", expected")
                    .map(|(_, h)| format!(" (expected{})", h.lines().next().unwrap_or("")))
                    .unwrap_or_default();
                MemtuneError::UnknownConfigKey { file: file.into(), key: full, hint }
            } else {
                MemtuneError::BadConfigValue { file: file.into(), key, msg }
            }
        })?;
        // With `[init] model` the architecture comes from that model's config.json; it is checked
        // once known (`pretrain::with_init_model`).
        if cfg.init.model.is_empty() {
            cfg.model.validate().map_err(|m| MemtuneError::BadConfigValue { file: file.into(), key: "model".into(), msg: m })?;
        }
        cfg.validate().map_err(|(key, msg)| MemtuneError::BadConfigValue { file: file.into(), key, msg })?;
        Ok(cfg)
    }

    fn validate(&self) -> std::result::Result<(), (String, String)> {
        let t = &self.train;
        let bad = |k: &str, m: &str| Err((k.to_string(), m.to_string()));
        if let Err(m) = crate::device::DeviceSpec::parse(&self.run.device) {
            return Err(("run.device".into(), m));
        }
        if t.batch_size == 0 {
            return bad("train.batch_size", "must be > 0");
        }
        if t.seq_len < 2 {
            return bad("train.seq_len", "must be ≥ 2");
        }
        if t.seq_len > self.model.max_position_embeddings && self.init.model.is_empty() {
            return bad("train.seq_len", "exceeds model.max_position_embeddings");
        }
        if t.grad_accum == 0 {
            return bad("train.grad_accum", "must be ≥ 1");
        }
        if !(t.lr.is_finite() && t.lr >= 0.0) {
            return bad("train.lr", "must be a finite number ≥ 0");
        }
        if !(0.0..=1.0).contains(&t.min_lr_ratio) {
            return bad("train.min_lr_ratio", "must be in [0, 1]");
        }
        if !(0.0..1.0).contains(&t.beta1) || !(0.0..1.0).contains(&t.beta2) {
            return bad("train.beta1", "betas must be in [0, 1)");
        }
        if let Err(m) = self.data.world.validate() {
            return Err(("data.world".into(), m));
        }
        if !(0.0..=1.0).contains(&self.data.qa_fraction) {
            return bad("data.qa_fraction", "must be in [0, 1]");
        }
        self.data.reading.validate()?;
        if !self.data.reading.is_off() && self.data.world.total_people() >= crate::data::synthetic::MAX_PEOPLE {
            return bad("data.reading", "its documents are about strangers, but the world's people use every name");
        }
        self.finetune.validate()?;
        if self.background.batches == 0 || self.background.batch_size == 0 {
            return bad("background.batches", "background.batches and background.batch_size must be > 0");
        }
        if self.background.seq_len == 1 || (self.background.seq_len > self.model.max_position_embeddings && self.init.model.is_empty()) {
            return bad("background.seq_len", "must be 0 (train.seq_len) or in [2, model.max_position_embeddings]");
        }
        let f = &self.forgetting;
        if f.methods.is_empty() {
            return bad("forgetting.methods", "lists no method");
        }
        if !(0.0..=1.0).contains(&f.match_tolerance) {
            return bad("forgetting.match_tolerance", "must be in [0, 1]");
        }
        f.runs(&self.finetune)?;
        self.seal.validate()?;
        Ok(())
    }

    /// The resolved config as TOML (written into every run directory).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises")
    }
}
