//! Benchmarks and end-to-end pipelines (step speed, demo).
