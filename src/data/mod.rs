//! Data: tokenizers, the synthetic world, packed batches.

pub mod batches;
pub mod synthetic;
pub mod tokenizer;
