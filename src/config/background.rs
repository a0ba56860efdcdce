//! `[background]`: the TF-IDF background index.

use serde::{Deserialize, Serialize};

/// `[background]`: the background index of sparse memory finetuning (docs/design.md, "Sparse memory finetuning").
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BackgroundConfig {
    /// B, the number of background batches.
    pub batches: usize,
    /// Sequences per background batch.
    pub batch_size: usize,
    /// Tokens per sequence (0: the run's train.seq_len).
    pub seq_len: usize,
}

impl Default for BackgroundConfig {
    fn default() -> Self {
        Self { batches: 1000, batch_size: 1, seq_len: 0 }
    }
}
