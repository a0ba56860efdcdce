//! `[init]`: continued pretraining from a trained model (a memory retrofit).

use serde::{Deserialize, Serialize};

/// What continued pretraining from `[init] model` trains.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum InitTrainable {
    /// Every weight.
    #[default]
    All,
    /// Only the memory layers (query, keys, W1, W2, gate, values): the pretrained weights stay
    /// bit-identical.
    Memory,
    /// The memory layers without their addressing: values, W1, W2 and the gate train; the query
    /// and keys keep their initial (with `query_stats_batches`, standardised) projection, so
    /// training cannot collapse every token onto a few slots (docs/design.md, "Memory retrofit").
    #[serde(rename = "memory-values")]
    MemoryValues,
}

/// `[init]`: start `memtune pretrain` from a trained model instead of random weights. The
/// architecture and tokenizer come from the model's folder (its `config.json` and
/// `tokenizer.json`); of the experiment's `[model]` only `[model.memory]` is used, so a memory
/// layer can be added (`placement = "parallel"` keeps the outputs unchanged at step 0). Tensors
/// the model lacks (the memory's) are initialised from `train.seed`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct InitConfig {
    /// A model folder, a run directory, or an hf-hub repo id in the local cache; empty: random
    /// initialisation from `[model]`.
    pub model: String,
    pub trainable: InitTrainable,
    /// Retrofit: before training, standardise each new memory layer's query projection against
    /// its input's per-channel mean and std over this many training batches (0: off). A trained
    /// model's hidden states share a large common direction, so a random query sends nearly every
    /// token to the same few slots (docs/design.md, "Memory retrofit").
    pub query_stats_batches: usize,
}
