//! SwiGLU gate: silu(gate) * up. (placeholder: reference)
use candle_core::{Result, Tensor};

pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    super::reference::swiglu(gate, up)
}
