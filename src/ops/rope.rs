//! Rotary position embedding, rotate-half convention (Hugging Face Llama), as a candle
//! `CustomOp1` with an analytic backward.
//!
//! Layout: x (B, T, H, Dh) contiguous f32 at positions offset..offset+T; cos/sin tables
//! (max_pos, Dh/2). With x = [x1, x2] split at Dh/2 and (c, s) the table row of the position:
//!   y1 = x1·c − x2·s,   y2 = x2·c + x1·s.
//! The map is a rotation, so the backward is the inverse rotation (the same with −s):
//!   dx1 = g1·c + g2·s,  dx2 = g2·c − g1·s.
//! Parallel over (b, t) rows with rayon. Correctness reference: `reference::rope`, forward and
//! gradient, plus finite differences (tests below).

use super::kernels::{contiguous_grad, expect_f32, rows_per_task, simd_fn, storage_f32};
use candle_core::{CpuStorage, CustomOp1, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// cos/sin tables for positions 0..max_pos, each (max_pos, head_dim/2).
#[derive(Clone, Debug)]
pub struct RopeTables {
    pub cos: Tensor,
    pub sin: Tensor,
    pub head_dim: usize,
}

impl RopeTables {
    pub fn new(head_dim: usize, max_pos: usize, theta: f64, device: &Device) -> Result<Self> {
        let inv: Vec<f64> = (0..head_dim / 2).map(|i| 1.0 / theta.powf(2.0 * i as f64 / head_dim as f64)).collect();
        Self::from_inv_freq(&inv, max_pos, device)
    }

    /// Tables for given inverse frequencies (head_dim/2 of them), e.g. scaled ones.
    pub fn from_inv_freq(inv: &[f64], max_pos: usize, device: &Device) -> Result<Self> {
        let (half, head_dim) = (inv.len(), 2 * inv.len());
        let mut cos = Vec::with_capacity(max_pos * half);
        let mut sin = Vec::with_capacity(max_pos * half);
        for p in 0..max_pos {
            for f in inv {
                let a = p as f64 * f;
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        }
        Ok(Self { cos: Tensor::from_vec(cos, (max_pos, half), device)?, sin: Tensor::from_vec(sin, (max_pos, half), device)?, head_dim })
    }
}

struct Rope {
    /// (T, Dh/2) rows of the tables for this call's positions.
    cos: Vec<f32>,
    sin: Vec<f32>,
    t: usize,
    h: usize,
    dh: usize,
}

simd_fn! {
    /// Rotate every (b, t) row of `x` (rows of H·Dh, starting at time `t0`) into `y`;
    /// `sign` = 1 for the forward rotation, −1 for its inverse.
    fn rotate_rows(x: &[f32], y: &mut [f32], cos: &[f32], sin: &[f32], t0: usize, t: usize, h: usize, dh: usize, sign: f32) {
        let half = dh / 2;
        let row = h * dh;
        for (r, (xr, yr)) in x.chunks_exact(row).zip(y.chunks_exact_mut(row)).enumerate() {
            let tt = (t0 + r) % t;
            let c = &cos[tt * half..(tt + 1) * half];
            let s = &sin[tt * half..(tt + 1) * half];
            for (xh, yh) in xr.chunks_exact(dh).zip(yr.chunks_exact_mut(dh)) {
                let (x1, x2) = xh.split_at(half);
                let (y1, y2) = yh.split_at_mut(half);
                for j in 0..half {
                    let sj = s[j] * sign;
                    y1[j] = x1[j] * c[j] - x2[j] * sj;
                    y2[j] = x2[j] * c[j] + x1[j] * sj;
                }
            }
        }
    }
}

impl Rope {
    fn apply(&self, x: &[f32], sign: f32) -> Vec<f32> {
        let row = self.h * self.dh;
        let mut y = vec![0f32; x.len()];
        let rpt = rows_per_task(row, 16 * 1024);
        y.par_chunks_mut(rpt * row)
            .zip(x.par_chunks(rpt * row))
            .enumerate()
            .for_each(|(i, (y, x))| rotate_rows(x, y, &self.cos, &self.sin, i * rpt, self.t, self.h, self.dh, sign));
        y
    }
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "rope"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = super::access::slice_f32(s, l)?;
        Ok((CpuStorage::F32(self.apply(x, 1.0)), l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &candle_core::CudaStorage, l: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        let x = super::cuda::input_f32(s, l)?;
        let y = super::cuda::dense::rope_rotate(&s.device, &x, &self.cos, &self.sin, l.shape().elem_count(), self.t, self.h, self.dh, 1.0)?;
        Ok((candle_core::CudaStorage::wrap_cuda_slice(y, s.device.clone()), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        #[cfg(feature = "cuda")]
        if x.device().is_cuda() {
            let g = super::cuda::contiguous_f32(grad)?;
            let (gs, gl) = g.storage_and_layout();
            let gv = super::cuda::view_f32(&gs, gl)?;
            let dev = super::cuda::device_of(x)?;
            let dx = super::cuda::dense::rope_rotate(&dev, &gv, &self.cos, &self.sin, g.elem_count(), self.t, self.h, self.dh, -1.0)?;
            return Ok(Some(super::cuda::wrap(dx, &dev, x.shape().clone())));
        }
        let g = contiguous_grad(grad)?;
        let (gs, gl) = g.storage_and_layout();
        let dx = self.apply(storage_f32(&gs, gl)?, -1.0);
        drop(gs);
        Ok(Some(Tensor::from_vec(dx, x.shape().clone(), x.device())?))
    }
}

/// x: (B, T, H, Dh) at positions offset..offset+T.
pub fn rope(x: &Tensor, tables: &RopeTables, offset: usize) -> Result<Tensor> {
    expect_f32("rope", "x", x)?;
    let (_b, t, h, dh) = x.dims4()?;
    let (max_pos, half) = tables.cos.dims2()?;
    if dh % 2 != 0 || half * 2 != dh {
        candle_core::bail!("rope: head dim {dh} does not match the tables' {} (must be even)", half * 2);
    }
    if offset + t > max_pos {
        candle_core::bail!("rope: positions {offset}..{} exceed the tables' {max_pos}", offset + t);
    }
    // On another accelerator (no kernel of ours): the differentiable composition of candle primitives.
    if !(x.device().is_cpu() || x.device().is_cuda()) {
        return super::reference::rope(x, &tables.cos.narrow(0, offset, t)?, &tables.sin.narrow(0, offset, t)?);
    }
    // The op keeps host copies of this call's table rows (T × Dh/2, small); on a GPU they are
    // uploaded with each launch.
    let table = |tb: &Tensor| tb.to_dtype(candle_core::DType::F32)?.narrow(0, offset, t)?.flatten_all()?.to_vec1::<f32>();
    let op = Rope { cos: table(&tables.cos)?, sin: table(&tables.sin)?, t, h, dh };
    x.contiguous()?.apply_op1(op)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::{assert_close, assert_grads, randn, GradCheckOpts};
    use crate::ops::reference;
    use candle_core::Var;

    /// FD errors of these ops are ~1e-5 of the gradient scale; check well below the default.
    fn strict() -> GradCheckOpts {
        GradCheckOpts { tol: 2e-3, ..Default::default() }
    }

    #[test]
    fn rope_finite_differences() {
        let tables = RopeTables::new(8, 16, 10_000.0, &Device::Cpu).unwrap();
        let x = randn((2, 3, 2, 8), 40).unwrap();
        assert_grads("rope", |a| rope(&a[0], &tables, 2), &[x], &[0], &strict());
    }

    #[test]
    fn rope_matches_reference() {
        let tables = RopeTables::new(16, 64, 10_000.0, &Device::Cpu).unwrap();
        for (shape, offset) in [((2, 5, 3, 16), 0usize), ((3, 4, 2, 16), 7), ((1, 1, 4, 16), 63)] {
            let x = randn(shape, 41 + offset as u64).unwrap();
            let gy = randn(shape, 42).unwrap();
            let run = |f: &dyn Fn(&Tensor) -> Result<Tensor>| {
                let xv = Var::from_tensor(&x).unwrap();
                let y = f(xv.as_tensor()).unwrap();
                let g = (&y * &gy).unwrap().sum_all().unwrap().backward().unwrap();
                (y, g.get(xv.as_tensor()).unwrap().clone())
            };
            let t = shape.1;
            let cos = tables.cos.narrow(0, offset, t).unwrap();
            let sin = tables.sin.narrow(0, offset, t).unwrap();
            let (y, dx) = run(&|x| rope(x, &tables, offset));
            let (ry, rdx) = run(&|x| reference::rope(x, &cos, &sin));
            assert_close(&y, &ry, 1e-5, "rope forward");
            assert_close(&dx, &rdx, 1e-5, "rope dx");
        }
    }

    #[test]
    fn rope_noncontiguous_input_and_bounds() {
        let tables = RopeTables::new(8, 8, 10_000.0, &Device::Cpu).unwrap();
        // (B, H, T, Dh) transposed to (B, T, H, Dh): a strided view.
        let x = randn((2, 3, 5, 8), 43).unwrap().transpose(1, 2).unwrap();
        let cos = tables.cos.narrow(0, 1, 5).unwrap();
        let sin = tables.sin.narrow(0, 1, 5).unwrap();
        assert_close(&rope(&x, &tables, 1).unwrap(), &reference::rope(&x, &cos, &sin).unwrap(), 1e-5, "strided");
        assert!(rope(&x, &tables, 4).is_err());
    }

    #[test]
    #[ignore]
    fn timing_rope() {
        let tables = RopeTables::new(64, 256, 10_000.0, &Device::Cpu).unwrap();
        let x = randn((8, 128, 4, 64), 1).unwrap();
        let g = randn((8, 128, 4, 64), 2).unwrap();
        let op_t = crate::ops::timing::time_op(|| {
            let table = |tb: &Tensor| crate::ops::access::with_f32(&tb.narrow(0, 0, 128)?, |s| s.to_vec());
            let op = Rope { cos: table(&tables.cos)?, sin: table(&tables.sin)?, t: 128, h: 4, dh: 64 };
            let y = x.apply_op1_no_bwd(&op)?;
            op.bwd(&x, &y, &g)?;
            Ok(())
        });
        println!("rope (8,128,4,64) fwd+bwd: {op_t}");
    }
}
