//! Experiment configs: TOML files whose sections override built-in defaults, plus
//! `--set key=value` overrides. Unknown or ill-typed keys are errors that name the key and file.

use crate::data::synthetic::WorldConfig;
use crate::model::LlamaConfig;
use crate::MemtuneError;
use anyhow::Result;
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

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    Adamw,
    Sgd,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    Cosine,
    Linear,
    Constant,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    pub seed: u64,
    /// Optimiser steps.
    pub steps: usize,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    pub seq_len: usize,
    /// Micro-batches whose gradients are summed (averaged) into one optimiser step.
    pub grad_accum: usize,
    pub optimizer: OptimizerKind,
    pub lr: f64,
    pub schedule: ScheduleKind,
    pub warmup_steps: usize,
    /// Final lr as a fraction of `lr` (cosine and linear schedules).
    pub min_lr_ratio: f64,
    /// Decoupled weight decay for matrices; norms, biases and embeddings of size 1-D get none.
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// SGD momentum.
    pub momentum: f64,
    /// Global-norm gradient clipping; 0 disables.
    pub grad_clip: f64,
    pub log_every: usize,
    /// Write a checkpoint every N steps (0: only at the end).
    pub checkpoint_every: usize,
    /// Held-out loss every N steps (0: never during training).
    pub eval_every: usize,
    pub eval_batches: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            steps: 1000,
            batch_size: 16,
            seq_len: 128,
            grad_accum: 1,
            optimizer: OptimizerKind::Adamw,
            lr: 2e-3,
            schedule: ScheduleKind::Cosine,
            warmup_steps: 100,
            min_lr_ratio: 0.1,
            weight_decay: 0.1,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            momentum: 0.0,
            grad_clip: 1.0,
            log_every: 10,
            checkpoint_every: 0,
            eval_every: 0,
            eval_batches: 8,
        }
    }
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DataSource {
    /// The built-in synthetic world (DESIGN.md §4).
    Synthetic,
    /// Plain-text files (`data.text_files`).
    Text,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    pub source: DataSource,
    pub world: WorldConfig,
    /// Corpus files for `source = "text"` (one document per line for .jsonl with a "text" field,
    /// whole file otherwise).
    pub text_files: Vec<String>,
    /// A `tokenizer.json` to use; empty: train a BPE tokenizer of `model.vocab_size` on the corpus.
    pub tokenizer: String,
    /// Fraction of pretraining documents that are question/answer pairs (synthetic world).
    pub qa_fraction: f64,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self { source: DataSource::Synthetic, world: WorldConfig::default(), text_files: vec![], tokenizer: String::new(), qa_fraction: 0.3 }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// Run directory: checkpoints, metrics.jsonl, the resolved config.
    pub dir: String,
    /// "cpu", "cuda:N" or "metal".
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
                let text = std::fs::read_to_string(p)
                    .map_err(|e| MemtuneError::Other(format!("cannot read config {}: {e}", p.display())))?;
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
        cfg.model
            .validate()
            .map_err(|m| MemtuneError::BadConfigValue { file: file.into(), key: "model".into(), msg: m })?;
        cfg.validate().map_err(|(key, msg)| MemtuneError::BadConfigValue { file: file.into(), key, msg })?;
        Ok(cfg)
    }

    fn validate(&self) -> std::result::Result<(), (String, String)> {
        let t = &self.train;
        let bad = |k: &str, m: &str| Err((k.to_string(), m.to_string()));
        if t.batch_size == 0 {
            return bad("train.batch_size", "must be > 0");
        }
        if t.seq_len < 2 {
            return bad("train.seq_len", "must be ≥ 2");
        }
        if t.seq_len > self.model.max_position_embeddings {
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
        Ok(())
    }

    /// The resolved config as TOML (written into every run directory).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises")
    }
}

fn snippet(text: &str, span: std::ops::Range<usize>) -> String {
    let line_start = text[..span.start.min(text.len())].rfind('\n').map(|i| i + 1).unwrap_or(0);
    let line_end = text[line_start..].find('\n').map(|i| line_start + i).unwrap_or(text.len());
    let line_no = text[..line_start].matches('\n').count() + 1;
    format!("line {line_no}: {}", text[line_start..line_end].trim())
}

/// `a.b.c=value`: value parsed as a TOML value (number, bool, array, quoted string), else a bare string.
fn apply_override(root: &mut toml::Table, o: &str, file: &str) -> Result<()> {
    let (key, raw) = o
        .split_once('=')
        .ok_or_else(|| MemtuneError::BadConfigValue { file: file.into(), key: o.into(), msg: "--set expects key=value".into() })?;
    let key = key.trim();
    let value = match format!("v = {raw}").parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").unwrap(),
        Err(_) => toml::Value::String(raw.to_string()),
    };
    let parts: Vec<&str> = key.split('.').collect();
    let mut table = root;
    for p in &parts[..parts.len() - 1] {
        let entry = table.entry(p.to_string()).or_insert_with(|| toml::Value::Table(Default::default()));
        table = entry.as_table_mut().ok_or_else(|| MemtuneError::BadConfigValue {
            file: file.into(),
            key: key.into(),
            msg: format!("`{p}` is not a section"),
        })?;
    }
    table.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}
