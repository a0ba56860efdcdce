//! RMSNorm over the last dim, y = x · rstd · w with rstd = 1/sqrt(mean(x²) + eps), as a candle
//! `CustomOp2` with an analytic backward.
//!
//! Layout: x (..., D) contiguous f32, viewed as N = numel/D rows of D; w (D,). The forward keeps
//! rstd per row (N floats) in the op for the backward:
//!   dx = rstd · (g⊙w) − x · rstd³/D · Σ(g⊙w⊙x)        dw = Σ_rows g ⊙ x · rstd
//! Rows are split into rayon tasks; dw is summed from per-task partial vectors.
//! Correctness reference: `reference::rms_norm` (candle primitives), forward and both gradients,
//! plus finite differences (tests below).

use super::kernels::{self, contiguous_grad, expect_f32, rows_per_task, simd_fn, storage_f32};
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Mutex;

const TASK_ELEMS: usize = 16 * 1024;

struct RmsNorm {
    eps: f32,
    /// rstd per row, written by the forward.
    rstd: Mutex<Vec<f32>>,
}

simd_fn! {
    fn fwd_row(x: &[f32], w: &[f32], eps: f32, y: &mut [f32]) -> f32 {
        let d = x.len();
        let rstd = 1.0 / (kernels::sum_sq(x) / d as f32 + eps).sqrt();
        for ((y, &x), &w) in y.iter_mut().zip(x).zip(w) {
            *y = x * rstd * w;
        }
        rstd
    }
}

simd_fn! {
    /// dx for one row, and dw += g ⊙ x · rstd.
    fn bwd_row(x: &[f32], w: &[f32], g: &[f32], rstd: f32, dx: &mut [f32], dw: &mut [f32]) {
        let d = x.len();
        // Σ g⊙w⊙x
        let mut acc = [0f32; 16];
        let n16 = d / 16 * 16;
        for j in (0..n16).step_by(16) {
            for l in 0..16 {
                acc[l] += g[j + l] * w[j + l] * x[j + l];
            }
        }
        let mut s: f32 = acc.iter().sum();
        for j in n16..d {
            s += g[j] * w[j] * x[j];
        }
        let c = s * rstd * rstd * rstd / d as f32;
        for j in 0..d {
            dx[j] = rstd * g[j] * w[j] - x[j] * c;
            dw[j] += g[j] * x[j] * rstd;
        }
    }
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = super::access::slice_f32(s1, l1)?;
        let w = super::access::slice_f32(s2, l2)?;
        let d = w.len();
        let n = x.len() / d;
        let mut y = vec![0f32; x.len()];
        let mut rstd = vec![0f32; n];
        let rpt = rows_per_task(d, TASK_ELEMS);
        y.par_chunks_mut(rpt * d).zip(rstd.par_chunks_mut(rpt)).zip(x.par_chunks(rpt * d)).for_each(|((y, r), x)| {
            for ((y, x), r) in y.chunks_exact_mut(d).zip(x.chunks_exact(d)).zip(r.iter_mut()) {
                *r = fwd_row(x, w, self.eps, y);
            }
        });
        *self.rstd.lock().unwrap() = rstd;
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (x, w) = (super::cuda::input_f32(s1, l1)?, super::cuda::input_f32(s2, l2)?);
        let d = l2.shape().elem_count();
        let y = super::cuda::dense::rms_norm_fwd(&s1.device, &x, &w, l1.shape().elem_count() / d.max(1), d, self.eps)?;
        Ok((candle_core::CudaStorage::wrap_cuda_slice(y, s1.device.clone()), l1.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        #[cfg(feature = "cuda")]
        if x.device().is_cuda() {
            let (dx, dw) = super::cuda::dense::rms_norm_bwd(x, w, grad, self.eps)?;
            return Ok((Some(dx), Some(dw)));
        }
        let g = contiguous_grad(grad)?;
        let rstd = self.rstd.lock().unwrap();
        let (xs, xl) = x.storage_and_layout();
        let (ws, wl) = w.storage_and_layout();
        let (gs, gl) = g.storage_and_layout();
        let (xd, wd, gd) = (storage_f32(&xs, xl)?, storage_f32(&ws, wl)?, storage_f32(&gs, gl)?);
        let d = wd.len();
        let mut dx = vec![0f32; xd.len()];
        let rpt = rows_per_task(d, TASK_ELEMS);
        let partials: Vec<Vec<f32>> = dx
            .par_chunks_mut(rpt * d)
            .zip(xd.par_chunks(rpt * d))
            .zip(gd.par_chunks(rpt * d))
            .zip(rstd.par_chunks(rpt))
            .map(|(((dx, x), g), r)| {
                let mut dw = vec![0f32; d];
                for (((dx, x), g), &r) in dx.chunks_exact_mut(d).zip(x.chunks_exact(d)).zip(g.chunks_exact(d)).zip(r) {
                    bwd_row(x, wd, g, r, dx, &mut dw);
                }
                dw
            })
            .collect();
        let mut dw = vec![0f32; d];
        for p in &partials {
            for (a, b) in dw.iter_mut().zip(p) {
                *a += b;
            }
        }
        drop((xs, ws, gs));
        let dx = Tensor::from_vec(dx, x.shape().clone(), x.device())?;
        let dw = Tensor::from_vec(dw, w.shape().clone(), w.device())?;
        Ok((Some(dx), Some(dw)))
    }
}

/// x: (..., D), w: (D,)
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    expect_f32("rms_norm", "x", x)?;
    expect_f32("rms_norm", "w", w)?;
    let d = x.dims().last().copied().unwrap_or(1);
    if w.dims() != [d] {
        candle_core::bail!("rms_norm: w has shape {:?}, expected ({d},) for x of shape {:?}", w.dims(), x.dims());
    }
    if d == 0 {
        return Ok(x.clone());
    }
    // On another accelerator (no kernel of ours): the differentiable composition of candle primitives.
    if !(x.device().is_cpu() || x.device().is_cuda()) {
        return super::reference::rms_norm(x, w, eps);
    }
    let op = RmsNorm { eps: eps as f32, rstd: Mutex::new(Vec::new()) };
    x.contiguous()?.apply_op2(&w.contiguous()?, op)
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

    fn inputs(shape: (usize, usize, usize), seed: u64) -> (Tensor, Tensor) {
        let x = randn(shape, seed).unwrap();
        let w = ((randn(shape.2, seed + 1).unwrap() * 0.5).unwrap() + 1.0).unwrap();
        (x, w)
    }

    #[test]
    fn rmsnorm_finite_differences() {
        let (x, w) = inputs((2, 3, 8), 10);
        assert_grads("rms_norm", |a| rms_norm(&a[0], &a[1], 1e-5), &[x, w], &[0, 1], &strict());
    }

    #[test]
    fn rmsnorm_matches_reference() {
        // D not a multiple of 16, to exercise the kernels' tails.
        for (shape, seed) in [((2, 5, 37), 20u64), ((3, 7, 64), 21)] {
            let (x, w) = inputs(shape, seed);
            let gy = randn(shape, seed + 7).unwrap();
            let run = |f: &dyn Fn(&Tensor, &Tensor) -> Result<Tensor>| {
                let xv = Var::from_tensor(&x).unwrap();
                let wv = Var::from_tensor(&w).unwrap();
                let y = f(xv.as_tensor(), wv.as_tensor()).unwrap();
                let g = (&y * &gy).unwrap().sum_all().unwrap().backward().unwrap();
                (y, g.get(xv.as_tensor()).unwrap().clone(), g.get(wv.as_tensor()).unwrap().clone())
            };
            let (y, dx, dw) = run(&|x, w| rms_norm(x, w, 1e-6));
            let (ry, rdx, rdw) = run(&|x, w| reference::rms_norm(x, w, 1e-6));
            assert_close(&y, &ry, 1e-5, "rms_norm forward");
            assert_close(&dx, &rdx, 1e-4, "rms_norm dx");
            assert_close(&dw, &rdw, 1e-4, "rms_norm dw");
        }
    }

    #[test]
    fn rmsnorm_broadcast_grad_and_noncontiguous_input() {
        // sum_all hands the op a stride-0 gradient; x arrives transposed.
        let x = randn((6, 4), 30).unwrap();
        let w = randn(6, 31).unwrap();
        let xv = Var::from_tensor(&x).unwrap();
        let y = rms_norm(&xv.as_tensor().t().unwrap(), &w, 1e-5).unwrap();
        let g = y.sum_all().unwrap().backward().unwrap();
        let ry = reference::rms_norm(&xv.as_tensor().t().unwrap(), &w, 1e-5).unwrap();
        let rg = ry.sum_all().unwrap().backward().unwrap();
        assert_close(&y, &ry, 1e-5, "forward");
        assert_close(g.get(xv.as_tensor()).unwrap(), rg.get(xv.as_tensor()).unwrap(), 1e-4, "dx");
    }

    #[test]
    fn rmsnorm_rejects_bad_inputs() {
        let x = randn((2, 8), 1).unwrap();
        assert!(rms_norm(&x, &randn(7, 2).unwrap(), 1e-5).is_err());
        assert!(rms_norm(&x.to_dtype(candle_core::DType::F64).unwrap(), &randn(8, 2).unwrap(), 1e-5).is_err());
    }

    #[test]
    #[ignore]
    fn timing_rmsnorm() {
        let (x, w) = inputs((8, 128, 256), 1);
        let g = randn((8, 128, 256), 2).unwrap();
        let t = crate::ops::timing::time_op(|| {
            let op = RmsNorm { eps: 1e-5, rstd: Mutex::new(Vec::new()) };
            let y = x.apply_op2_no_bwd(&w, &op)?;
            op.bwd(&x, &w, &y, &g)?;
            Ok(())
        });
        println!("rms_norm (8,128,256) fwd+bwd: {t}");
    }
}
