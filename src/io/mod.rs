//! Files: atomic writes, checkpoints.
