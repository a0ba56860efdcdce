//! Files: atomic writes, checkpoints, staged folders, GGUF import.

pub mod atomic;
pub mod checkpoint;
pub mod files;
pub mod gguf;
pub mod staged_dir;
