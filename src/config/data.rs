//! `[data]`: what pretraining reads.

use crate::data::reading::ReadingConfig;
use crate::data::synthetic::WorldConfig;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DataSource {
    /// The built-in synthetic world (docs/design.md, "The synthetic world").
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
    /// Reader-world documents (`[data.reading]`, synthetic world; off by default, and then left
    /// out of the resolved config so that the pretraining hash of existing runs is unchanged).
    #[serde(skip_serializing_if = "ReadingConfig::is_off")]
    pub reading: ReadingConfig,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            source: DataSource::Synthetic,
            world: WorldConfig::default(),
            text_files: vec![],
            tokenizer: String::new(),
            qa_fraction: 0.3,
            reading: ReadingConfig::default(),
        }
    }
}
