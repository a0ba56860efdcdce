//! Packed-sequence batching.
