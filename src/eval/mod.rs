//! Evaluation: generation with a KV cache, per-token scoring, closed-book QA metrics,
//! multiple-choice tasks by log-likelihood, held-out perplexity.

pub mod choice;
pub mod generate;
pub mod inspect;
pub mod metrics;
pub mod perplexity;
pub mod qa;
pub mod score;

pub use generate::{generate, sample_many, GenerateOptions};
pub use metrics::{exact_match, normalize_answer, token_f1};
