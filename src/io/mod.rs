//! Files: atomic writes, checkpoints.

pub mod atomic;
pub mod checkpoint;
