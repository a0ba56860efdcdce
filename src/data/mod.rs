//! Data: tokenizers, the synthetic world, text corpora, packed and padded batches, real QA data
//! (SQuAD passages, question/answer JSONL).

pub mod batches;
pub mod facts;
pub mod qa;
pub mod reading;
pub mod squad;
pub mod synthetic;
pub mod text;
pub mod tokenizer;
