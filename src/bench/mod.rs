//! Benchmarks and end-to-end pipelines: training-step speed, the memory layer alone, the demo.

pub mod demo;
pub mod finetune;
pub mod forgetting;
pub mod memory;
pub mod plot;
pub mod step;
