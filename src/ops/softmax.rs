//! Softmax over the last dim, y = e^(x − max) / Σ e^(x − max), as a candle `CustomOp1` with an
//! analytic backward (candle's fused `softmax_last_dim` has none).
//!
//! Layout: x (..., D) contiguous f32, viewed as rows of D; processed in rayon tasks of whole rows.
//! Backward from the output y: dx = y ⊙ (g − Σ g⊙y) per row.
//! Correctness reference: `reference::softmax` (candle primitives), forward and gradient, plus
//! finite differences (tests below).

use super::kernels::{self, contiguous_grad, expect_f32, rows_per_task, storage_f32};
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

const TASK_ELEMS: usize = 16 * 1024;

struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "softmax-last-dim"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = super::access::slice_f32(s, l)?;
        let d = l.dims().last().copied().unwrap_or(1).max(1);
        let mut y = vec![0f32; x.len()];
        let rpt = rows_per_task(d, TASK_ELEMS);
        y.par_chunks_mut(rpt * d).zip(x.par_chunks(rpt * d)).for_each(|(y, x)| {
            for (y, x) in y.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
                let m = kernels::max(x);
                let inv = 1.0 / kernels::sum_exp_sub(x, m);
                kernels::exp_sub_scale(x, m, inv, y);
            }
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &candle_core::CudaStorage, l: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        let d = l.dims().last().copied().unwrap_or(1).max(1);
        let y = super::cuda::dense::softmax_fwd(&s.device, &super::cuda::input_f32(s, l)?, l.shape().elem_count() / d, d)?;
        Ok((candle_core::CudaStorage::wrap_cuda_slice(y, s.device.clone()), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        #[cfg(feature = "cuda")]
        if res.device().is_cuda() {
            return Ok(Some(super::cuda::dense::softmax_bwd(res, grad)?));
        }
        let g = contiguous_grad(grad)?;
        let res = res.contiguous()?;
        let d = res.dims().last().copied().unwrap_or(1).max(1);
        let (ys, yl) = res.storage_and_layout();
        let (gs, gl) = g.storage_and_layout();
        let (y, g) = (storage_f32(&ys, yl)?, storage_f32(&gs, gl)?);
        let mut dx = vec![0f32; y.len()];
        let rpt = rows_per_task(d, TASK_ELEMS);
        dx.par_chunks_mut(rpt * d).zip(y.par_chunks(rpt * d)).zip(g.par_chunks(rpt * d)).for_each(|((dx, y), g)| {
            for ((dx, y), g) in dx.chunks_exact_mut(d).zip(y.chunks_exact(d)).zip(g.chunks_exact(d)) {
                let s = kernels::dot(g, y);
                for ((dx, &y), &g) in dx.iter_mut().zip(y).zip(g) {
                    *dx = y * (g - s);
                }
            }
        });
        drop((ys, gs));
        Ok(Some(Tensor::from_vec(dx, res.shape().clone(), res.device())?))
    }
}

/// Softmax over the last dim of x (any rank ≥ 1), with an analytic backward (unlike candle's fused
/// `softmax_last_dim`).
pub fn softmax_rows(x: &Tensor) -> Result<Tensor> {
    expect_f32("softmax_rows", "x", x)?;
    if x.elem_count() == 0 {
        return Ok(x.clone());
    }
    // On another accelerator (no kernel of ours): the differentiable composition of candle primitives.
    if !(x.device().is_cpu() || x.device().is_cuda()) {
        return super::reference::softmax(x);
    }
    x.contiguous()?.apply_op1(Softmax)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::{assert_close, assert_grads, randn, GradCheckOpts};
    use crate::ops::reference;
    use candle_core::Var;

    #[test]
    fn softmax_finite_differences() {
        let x = (randn((3, 2, 5), 40).unwrap() * 2.0).unwrap();
        assert_grads("softmax_rows", |a| softmax_rows(&a[0]), &[x], &[0], &GradCheckOpts { tol: 2e-3, ..Default::default() });
    }

    #[test]
    fn softmax_matches_reference() {
        // Many rows (several tasks), a width that is not a multiple of 16, large logits.
        let x = (randn((300, 4, 37), 41).unwrap() * 10.0).unwrap();
        let gy = randn((300, 4, 37), 42).unwrap();
        let run = |f: &dyn Fn(&Tensor) -> Result<Tensor>| {
            let xv = Var::from_tensor(&x).unwrap();
            let y = f(xv.as_tensor()).unwrap();
            let g = (&y * &gy).unwrap().sum_all().unwrap().backward().unwrap();
            (y, g.get(xv.as_tensor()).unwrap().clone())
        };
        let (y, dx) = run(&|x| softmax_rows(x));
        let (ry, rdx) = run(&|x| reference::softmax(x));
        assert_close(&y, &ry, 1e-5, "softmax forward");
        assert_close(&dx, &rdx, 1e-4, "softmax dx");
        // A stride-0 gradient (from sum_all) and a non-contiguous input.
        let xv = Var::from_tensor(&randn((4, 6), 43).unwrap()).unwrap();
        let g = softmax_rows(&xv.as_tensor().t().unwrap()).unwrap().sum_all().unwrap().backward().unwrap();
        let s: f32 = g.get(xv.as_tensor()).unwrap().abs().unwrap().sum_all().unwrap().to_scalar().unwrap();
        assert!(s < 1e-5, "softmax rows sum to 1, so d(sum)/dx = 0; got {s}");
    }
}
