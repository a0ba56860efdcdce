//! The trainable transformer: a Llama-style decoder (`llama`), its building blocks (the
//! product-key memory layer in `memory`), and the named-parameter store they are built from.

pub mod config;
pub mod hub_cache;
pub mod kv_cache;
pub mod linear;
pub mod lora;
pub mod llama;
pub mod memory;
pub mod params;
pub mod pretrained;
pub mod rope_scaling;

pub use config::{LlamaConfig, MemoryConfig, MemoryPlacement, ValueOptimizerKind};
pub use kv_cache::KvCache;
pub use linear::Linear;
pub use llama::{FeedForward, ForwardCtx, Llama, SwiGluMlp};
pub use memory::{access_counts, AccessCounts, MemoryLayer, MemoryTrace, VALUES_NAME};
pub use params::{Init, ParamBuilder, ParamStore};
