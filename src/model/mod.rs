//! The trainable transformer: a Llama-style decoder (`llama`), its building blocks (the
//! product-key memory layer in `memory`), and the named-parameter store they are built from.

pub mod config;
pub mod feed_forward;
pub mod hub_cache;
pub mod kv_cache;
pub mod linear;
pub mod llama;
pub mod lora;
pub mod lora_config;
pub mod memory;
pub mod memory_trace;
pub mod params;
pub mod pretrained;
pub mod rope_scaling;

pub use config::{LlamaConfig, MemoryConfig, MemoryPlacement, ValueOptimizerKind};
pub use feed_forward::{FeedForward, ForwardCtx, SwiGluMlp};
pub use kv_cache::KvCache;
pub use linear::Linear;
pub use llama::Llama;
pub use memory::{MemoryLayer, VALUES_NAME};
pub use memory_trace::{access_counts, AccessCounts, MemoryTrace};
pub use params::{Init, ParamBuilder, ParamStore};
