//! The trainable transformer: a Llama-style decoder (`llama`), its building blocks, and the
//! named-parameter store they are built from.

pub mod config;
pub mod kv_cache;
pub mod linear;
pub mod llama;
pub mod params;
pub mod pretrained;

pub use config::LlamaConfig;
pub use kv_cache::KvCache;
pub use linear::Linear;
pub use llama::{FeedForward, ForwardCtx, Llama, SwiGluMlp};
pub use params::{Init, ParamBuilder, ParamStore};
