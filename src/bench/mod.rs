//! Benchmarks: training-step and generation speed, the memory layer alone, and the
//! learning-vs-forgetting benchmark with its probes.

pub mod forgetting;
pub mod generate;
pub mod machine;
pub mod matmul;
pub mod memory;
pub mod probes;
pub mod step;
