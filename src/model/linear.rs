//! y = x Wᵀ + b on 2-D activations (N, in) -> (N, out). Weight layout (out, in) as in PyTorch/HF.
//!
//! Under `Precision::Bf16` the product is taken on bf16 casts of x and W (the parameter stays the
//! f32 master; the cast's backward hands its gradient back as f32) and returned as f32.

use super::lora::LoraAdapter;
use super::params::{Init, ParamBuilder};
use anyhow::Result;
use candle_core::{DType, Tensor};

#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    /// A LoRA adapter, when the builder's LoRA config targets this layer.
    pub lora: Option<LoraAdapter>,
    /// The dtype of the product (f32, or bf16 under mixed precision).
    matmul_dtype: DType,
}

impl Linear {
    pub fn new(pb: &ParamBuilder, in_dim: usize, out_dim: usize, bias: bool, init: Init) -> Result<Self> {
        let weight = pb.get((out_dim, in_dim), "weight", init)?;
        let bias = if bias { Some(pb.get(out_dim, "bias", Init::Zeros)?) } else { None };
        let lora = match pb.lora() {
            Some(cfg) if cfg.targets_module(pb.name()) => Some(LoraAdapter::new(pb, cfg, in_dim, out_dim)?),
            _ => None,
        };
        Ok(Self { weight, bias, lora, matmul_dtype: pb.precision().matmul_dtype() })
    }

    /// A plain f32 layer over given tensors (tests and gradient checks pass their own).
    pub fn from_weights(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias, lora: None, matmul_dtype: DType::F32 }
    }

    /// x: (N, in). Activations stay 2-D so every matmul is one plain GEMM (no broadcast batch).
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = matmul_t(x, &self.weight, self.matmul_dtype)?;
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

/// x Wᵀ with the product taken in `dtype` and returned in x's dtype. For `dtype` other than x's,
/// both operands are cast first (W before transposing, so the cast is contiguous). A frozen W
/// gets no gradient computed (`ops::frozen_weight_matmul`).
pub fn matmul_t(x: &Tensor, w: &Tensor, dtype: DType) -> candle_core::Result<Tensor> {
    if dtype == x.dtype() {
        return crate::ops::frozen_weight_matmul(x, w);
    }
    x.to_dtype(dtype)?.matmul(&w.to_dtype(dtype)?.t()?)?.to_dtype(x.dtype())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn max_rel(a: &Tensor, b: &Tensor) -> f32 {
        let (a, b): (Vec<f32>, Vec<f32>) = (a.flatten_all().unwrap().to_vec1().unwrap(), b.flatten_all().unwrap().to_vec1().unwrap());
        let scale = a.iter().fold(0f32, |m, x| m.max(x.abs()));
        a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
    }

    #[test]
    fn bf16_product_is_close_to_f32_and_its_gradient_reaches_the_f32_master() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (8, 48), &dev).unwrap()).unwrap();
        let w = Var::from_tensor(&Tensor::randn(0f32, 0.2, (24, 48), &dev).unwrap()).unwrap();
        let run = |dt: DType| {
            let y = matmul_t(x.as_tensor(), w.as_tensor(), dt).unwrap();
            assert_eq!(y.dtype(), DType::F32);
            let g = (y.sqr().unwrap().sum_all().unwrap()).backward().unwrap();
            (y, g.get(w.as_tensor()).unwrap().clone(), g.get(x.as_tensor()).unwrap().clone())
        };
        let (y32, gw32, gx32) = run(DType::F32);
        let (y16, gw16, gx16) = run(DType::BF16);
        assert_eq!((gw16.dtype(), gx16.dtype()), (DType::F32, DType::F32));
        // bf16 keeps 8 significant bits (relative rounding 2^-9 per operand); a 48-term dot
        // product of rounded operands lands within ~1% of the largest output.
        let (ey, egw, egx) = (max_rel(&y32, &y16), max_rel(&gw32, &gw16), max_rel(&gx32, &gx16));
        assert!(ey > 0.0, "the bf16 product equals the f32 one: it was not taken in bf16");
        assert!(ey < 1e-2 && egw < 2e-2 && egx < 2e-2, "bf16 vs f32: y {ey}, dW {egw}, dx {egx}");
    }
}
