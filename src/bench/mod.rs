//! Benchmarks and end-to-end pipelines: training-step and generation speed, the memory layer
//! alone, finetuning, the forgetting benchmark, the demo.

pub mod demo;
pub mod finetune;
pub mod forgetting;
pub mod generate;
pub mod machine;
pub mod matmul;
pub mod memory;
pub mod probes;
pub mod step;
