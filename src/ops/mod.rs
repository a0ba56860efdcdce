//! Differentiable ops with hand-written backward passes.
//!
//! candle's fused `rms_norm`, `softmax_last_dim` and `rope*` have no backward, and its generic
//! autodiff is slow on CPU (see docs/design.md, "The memory layer"). Each file here implements one coarse op as a
//! `CustomOp` with an analytic `bwd`, works on contiguous f32 buffers in parallel with rayon,
//! and carries its finite-difference test. `reference` holds slow compositions of candle
//! primitives that backprop correctly; they are the tests' oracle, and the path tensors on a GPU
//! take where an op has no kernel of its own (see `cuda`, built with `--features cuda`).

pub mod access;
pub mod attention;
pub mod cross_entropy;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod embedding_bag;
pub mod frozen_matmul;
pub mod gradcheck;
pub mod kernels;
pub mod product_keys;
pub mod reference;
pub mod rmsnorm;
pub mod rope;
pub mod slots;
pub mod softmax;
pub mod swiglu;
#[cfg(test)]
pub(crate) mod timing;

pub use attention::{causal_attention, causal_attention_left_padded};
pub use cross_entropy::{cross_entropy, token_logprobs};
pub use embedding_bag::{embedding_bag, embedding_bag_from_table};
pub use frozen_matmul::frozen_weight_matmul;
pub use product_keys::product_key_topk;
pub use rmsnorm::rms_norm;
pub use rope::{rope, RopeTables};
pub use slots::SlotHandle;
pub use softmax::softmax_rows;
pub use swiglu::swiglu;

/// Targets equal to this are ignored by the loss (padding).
pub const IGNORE_INDEX: u32 = u32::MAX;
