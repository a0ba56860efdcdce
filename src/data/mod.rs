//! Data: tokenizers, the synthetic world, text corpora, packed and padded batches.

pub mod batches;
pub mod facts;
pub mod synthetic;
pub mod text;
pub mod tokenizer;
