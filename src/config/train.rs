//! `[train]`: the pretraining loop's optimiser, schedule and batches.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    Adamw,
    Sgd,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    Cosine,
    Linear,
    Constant,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    pub seed: u64,
    /// Optimiser steps.
    pub steps: usize,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    pub seq_len: usize,
    /// Micro-batches whose gradients are summed (averaged) into one optimiser step.
    pub grad_accum: usize,
    pub optimizer: OptimizerKind,
    pub lr: f64,
    pub schedule: ScheduleKind,
    pub warmup_steps: usize,
    /// Final lr as a fraction of `lr` (cosine and linear schedules).
    pub min_lr_ratio: f64,
    /// Decoupled weight decay for matrices; norms, biases and embeddings of size 1-D get none.
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// SGD momentum.
    pub momentum: f64,
    /// Global-norm gradient clipping; 0 disables.
    pub grad_clip: f64,
    pub log_every: usize,
    /// Write a checkpoint every N steps (0: only at the end).
    pub checkpoint_every: usize,
    /// Held-out loss every N steps (0: never during training).
    pub eval_every: usize,
    pub eval_batches: usize,
    /// Precision of the matrix multiplies (`f32`, or `bf16` on bf16 copies of f32 master
    /// weights); every training loop built from this config uses it. Written only when not f32,
    /// so f32 configs keep their pretraining hash.
    #[serde(skip_serializing_if = "Precision::is_f32")]
    pub precision: Precision,
}

pub use crate::model::params::Precision;

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            steps: 1000,
            batch_size: 16,
            seq_len: 128,
            grad_accum: 1,
            optimizer: OptimizerKind::Adamw,
            lr: 2e-3,
            schedule: ScheduleKind::Cosine,
            warmup_steps: 100,
            min_lr_ratio: 0.1,
            weight_decay: 0.1,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            momentum: 0.0,
            grad_clip: 1.0,
            log_every: 10,
            checkpoint_every: 0,
            eval_every: 0,
            eval_batches: 8,
            precision: Precision::F32,
        }
    }
}
