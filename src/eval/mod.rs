//! Evaluation: generation with a KV cache, per-token scoring, closed-book QA metrics.

pub mod generate;
pub mod inspect;
pub mod metrics;
pub mod qa;
pub mod score;

pub use generate::{generate, sample_many, GenerateOptions};
pub use metrics::{exact_match, normalize_answer, token_f1};
