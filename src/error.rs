//! Errors a user can cause (bad config, bad files, diverging training). Each names what was wrong.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum MemtuneError {
    #[error("config {file}: unknown key `{key}`{hint}")]
    UnknownConfigKey { file: String, key: String, hint: String },
    #[error("config {file}: key `{key}`: {msg}")]
    BadConfigValue { file: String, key: String, msg: String },
    #[error("tokenizer {path} has a vocabulary of {tokenizer_vocab} tokens but the model's vocab_size is {model_vocab}")]
    VocabMismatch { path: PathBuf, tokenizer_vocab: usize, model_vocab: usize },
    #[error("checkpoint {path}: {msg}")]
    BadCheckpoint { path: PathBuf, msg: String },
    #[error("non-finite loss ({loss}) at step {step}; the last good checkpoint is left as it was")]
    NonFiniteLoss { step: usize, loss: f32 },
    #[error("{0}")]
    Other(String),
}
