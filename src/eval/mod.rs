//! Evaluation: generation, scoring, QA metrics.
