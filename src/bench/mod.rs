//! Benchmarks and end-to-end pipelines: training-step speed, the demo.

pub mod demo;
pub mod step;
