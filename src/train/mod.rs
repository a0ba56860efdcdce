//! Training: optimisers (dense, and sparse for the memory value table), schedules, clipping, the
//! training loop.

pub mod background;
#[cfg(feature = "cuda")]
pub mod device_rows;
pub mod methods;
pub mod optim;
pub mod schedule;
pub mod pretrain;
pub mod progress;
pub mod retrofit;
pub mod sparse_memory;
pub mod sparse_values;
pub mod trainer;
pub mod tfidf;
