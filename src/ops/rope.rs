//! Rotary position embedding, rotate-half convention (HF Llama). (placeholder: reference)
use candle_core::{Device, Result, Tensor};

/// cos/sin tables for positions 0..max_pos, each (max_pos, head_dim/2).
#[derive(Clone, Debug)]
pub struct RopeTables {
    pub cos: Tensor,
    pub sin: Tensor,
    pub head_dim: usize,
}

impl RopeTables {
    pub fn new(head_dim: usize, max_pos: usize, theta: f64, device: &Device) -> Result<Self> {
        let half = head_dim / 2;
        let inv: Vec<f64> = (0..half).map(|i| 1.0 / theta.powf(2.0 * i as f64 / head_dim as f64)).collect();
        let mut cos = Vec::with_capacity(max_pos * half);
        let mut sin = Vec::with_capacity(max_pos * half);
        for p in 0..max_pos {
            for f in &inv {
                let a = p as f64 * f;
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        }
        Ok(Self {
            cos: Tensor::from_vec(cos, (max_pos, half), device)?,
            sin: Tensor::from_vec(sin, (max_pos, half), device)?,
            head_dim,
        })
    }
}

/// x: (B, T, H, Dh) at positions offset..offset+T.
pub fn rope(x: &Tensor, tables: &RopeTables, offset: usize) -> Result<Tensor> {
    let t = x.dim(1)?;
    let cos = tables.cos.narrow(0, offset, t)?;
    let sin = tables.sin.narrow(0, offset, t)?;
    super::reference::rope(x, &cos, &sin)
}
