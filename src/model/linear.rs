//! y = x Wᵀ + b on 2-D activations (N, in) -> (N, out). Weight layout (out, in) as in PyTorch/HF.

use super::lora::LoraAdapter;
use super::params::{Init, ParamBuilder};
use anyhow::Result;
use candle_core::Tensor;

#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    /// A LoRA adapter, when the builder's LoRA config targets this layer.
    pub lora: Option<LoraAdapter>,
}

impl Linear {
    pub fn new(pb: &ParamBuilder, in_dim: usize, out_dim: usize, bias: bool, init: Init) -> Result<Self> {
        let weight = pb.get((out_dim, in_dim), "weight", init)?;
        let bias = if bias { Some(pb.get(out_dim, "bias", Init::Zeros)?) } else { None };
        let lora = match pb.lora() {
            Some(cfg) if cfg.targets_module(pb.name()) => Some(LoraAdapter::new(pb, cfg, in_dim, out_dim)?),
            _ => None,
        };
        Ok(Self { weight, bias, lora })
    }

    /// x: (N, in). Activations stay 2-D so every matmul is one plain GEMM (no broadcast batch).
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = x.matmul(&self.weight.t()?)?;
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        match &self.lora {
            Some(l) => y + l.delta(x)?,
            None => Ok(y),
        }
    }
}
