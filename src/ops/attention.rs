//! Causal grouped-query attention, softmax included. (placeholder: reference)
use candle_core::{Result, Tensor};

/// q: (B, T, Hq, Dh), k/v: (B, S, Hkv, Dh), S ≥ T, query i at position S-T+i. -> (B, T, Hq, Dh)
pub fn causal_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    super::reference::causal_attention(q, k, v, scale)
}
