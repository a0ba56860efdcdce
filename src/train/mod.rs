//! Training: optimisers, schedules, clipping, the training loop.

pub mod optim;
pub mod schedule;
pub mod pretrain;
pub mod progress;
pub mod trainer;
