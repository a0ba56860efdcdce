//! Training: optimisers (dense, and sparse for the memory value table), schedules, clipping, the
//! training loop.

pub mod background;
pub mod facts;
pub mod methods;
pub mod model_dir;
pub mod optim;
pub mod pretrain;
pub mod progress;
pub mod retrofit;
pub mod schedule;
pub mod sparse_memory;
pub mod tfidf;
pub mod trainer;
pub mod values;
