//! Fused log-softmax + negative log-likelihood (mean over non-ignored targets) as a candle
//! `CustomOp2` with an analytic backward for the logits; and per-token log-probabilities.
//!
//! Layout: logits (N, V) contiguous f32, targets (N,) u32 with `IGNORE_INDEX` (u32::MAX) for
//! positions that do not count. Per row: lse = max + ln Σ e^(x − max); loss_row = lse − x[t].
//! loss = Σ loss_row / count over the count rows with a real target (0 when count = 0).
//! The forward keeps lse per row; the backward recomputes the softmax:
//!   d logits[r] = (softmax(x[r]) − onehot(t[r])) · g / count,  0 for ignored rows.
//! Rows are split into rayon tasks. Correctness reference: `reference::cross_entropy`, forward
//! and gradient, plus finite differences (tests below); `token_logprobs` against log_softmax.

use super::kernels::{self, expect_f32, rows_per_task, storage_f32, storage_u32};
use super::IGNORE_INDEX;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Mutex;

const TASK_ELEMS: usize = 64 * 1024;

struct CrossEntropy {
    /// (lse per row, number of counted rows), written by the forward.
    saved: Mutex<(Vec<f32>, usize)>,
}

fn check_targets(t: &[u32], v: usize) -> Result<()> {
    if let Some(&bad) = t.iter().find(|&&x| x != IGNORE_INDEX && x as usize >= v) {
        candle_core::bail!("cross_entropy: target {bad} out of range for a vocabulary of {v}");
    }
    Ok(())
}

/// lse per row, in parallel.
fn row_lse(x: &[f32], v: usize) -> Vec<f32> {
    let n = x.len() / v;
    let mut lse = vec![0f32; n];
    let rpt = rows_per_task(v, TASK_ELEMS);
    lse.par_chunks_mut(rpt).zip(x.par_chunks(rpt * v)).for_each(|(l, x)| {
        for (l, row) in l.iter_mut().zip(x.chunks_exact(v)) {
            *l = kernels::logsumexp(row);
        }
    });
    lse
}

impl CustomOp2 for CrossEntropy {
    fn name(&self) -> &'static str {
        "cross-entropy"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = super::access::slice_f32(s1, l1)?;
        let t = super::access::slice_u32(s2, l2)?;
        let v = l1.dims()[1];
        check_targets(t, v)?;
        let lse = row_lse(x, v);
        let mut count = 0usize;
        let mut total = 0f64;
        for (r, &tr) in t.iter().enumerate() {
            if tr != IGNORE_INDEX {
                count += 1;
                total += (lse[r] - x[r * v + tr as usize]) as f64;
            }
        }
        let loss = if count > 0 { (total / count as f64) as f32 } else { 0.0 };
        *self.saved.lock().unwrap() = (lse, count);
        Ok((CpuStorage::F32(vec![loss]), Shape::from(())))
    }

    /// On a GPU: the per-row NLL by a kernel, their mean in f64 by another; the targets are read
    /// back (N u32) to check them and count the real ones.
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (x, t) = (super::cuda::input_f32(s1, l1)?, super::cuda::input_u32(s2, l2)?);
        let (n, v) = (l1.dims()[0], l1.dims()[1]);
        let dev = &s1.device;
        let host_t: Vec<u32> = dev.clone_dtoh(&t)?;
        check_targets(&host_t, v)?;
        let count = host_t.iter().filter(|&&x| x != IGNORE_INDEX).count();
        let rows = super::cuda::dense::ce_rows(dev, &x, &t, n, v, 1.0)?;
        let loss = super::cuda::dense::ce_mean(dev, &rows, n, count)?;
        Ok((candle_core::CudaStorage::wrap_cuda_slice(loss, dev.clone()), Shape::from(())))
    }

    fn bwd(&self, logits: &Tensor, targets: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = grad.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?[0];
        #[cfg(feature = "cuda")]
        if logits.device().is_cuda() {
            let count = targets.to_vec1::<u32>()?.iter().filter(|&&x| x != IGNORE_INDEX).count();
            let scale = if count > 0 { g / count as f32 } else { 0.0 };
            return Ok((Some(super::cuda::dense::ce_bwd(logits, targets, scale)?), None));
        }
        let saved = self.saved.lock().unwrap();
        let (lse, count) = (&saved.0, saved.1);
        let (xs, xl) = logits.storage_and_layout();
        let (ts, tl) = targets.storage_and_layout();
        let (x, t) = (storage_f32(&xs, xl)?, storage_u32(&ts, tl)?);
        let v = logits.dim(1)?;
        let mut dx = vec![0f32; x.len()];
        if count > 0 {
            let scale = g / count as f32;
            let rpt = rows_per_task(v, TASK_ELEMS);
            dx.par_chunks_mut(rpt * v).zip(x.par_chunks(rpt * v)).zip(t.par_chunks(rpt)).zip(lse.par_chunks(rpt)).for_each(
                |(((dx, x), t), lse)| {
                    for (((d, row), &tr), &l) in dx.chunks_exact_mut(v).zip(x.chunks_exact(v)).zip(t).zip(lse) {
                        if tr != IGNORE_INDEX {
                            kernels::exp_sub_scale(row, l, scale, d);
                            d[tr as usize] -= scale;
                        }
                    }
                },
            );
        }
        drop((xs, ts));
        Ok((Some(Tensor::from_vec(dx, logits.shape().clone(), logits.device())?), None))
    }
}

fn check_inputs(op: &str, logits: &Tensor, targets: &Tensor) -> Result<()> {
    expect_f32(op, "logits", logits)?;
    let (n, _v) = logits.dims2()?;
    if targets.dtype() != DType::U32 {
        candle_core::bail!("{op}: targets must be u32, got {:?}", targets.dtype());
    }
    if targets.dims() != [n] {
        candle_core::bail!("{op}: targets have shape {:?}, expected ({n},)", targets.dims());
    }
    Ok(())
}

/// Mean NLL of targets (N,) u32 under logits (N, V); IGNORE_INDEX targets are skipped.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    check_inputs("cross_entropy", logits, targets)?;
    // On another accelerator (no kernel of ours): the differentiable composition of candle primitives.
    if !(logits.device().is_cpu() || logits.device().is_cuda()) {
        return super::reference::cross_entropy(logits, targets);
    }
    let op = CrossEntropy { saved: Mutex::new((Vec::new(), 0)) };
    logits.contiguous()?.apply_op2(&targets.contiguous()?, op)
}

struct TokenLogprobs;

impl CustomOp2 for TokenLogprobs {
    fn name(&self) -> &'static str {
        "token-logprobs"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = super::access::slice_f32(s1, l1)?;
        let t = super::access::slice_u32(s2, l2)?;
        let v = l1.dims()[1];
        check_targets(t, v)?;
        let mut out = vec![0f32; t.len()];
        let rpt = rows_per_task(v, TASK_ELEMS);
        out.par_chunks_mut(rpt).zip(x.par_chunks(rpt * v)).zip(t.par_chunks(rpt)).for_each(|((o, x), t)| {
            for ((o, row), &tr) in o.iter_mut().zip(x.chunks_exact(v)).zip(t) {
                *o = if tr == IGNORE_INDEX { 0.0 } else { row[tr as usize] - kernels::logsumexp(row) };
            }
        });
        Ok((CpuStorage::F32(out), Shape::from(t.len())))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (x, t) = (super::cuda::input_f32(s1, l1)?, super::cuda::input_u32(s2, l2)?);
        let (n, v) = (l1.dims()[0], l1.dims()[1]);
        check_targets(&s1.device.clone_dtoh(&t)?, v)?;
        let out = super::cuda::dense::ce_rows(&s1.device, &x, &t, n, v, -1.0)?;
        Ok((candle_core::CudaStorage::wrap_cuda_slice(out, s1.device.clone()), Shape::from(n)))
    }
}

/// log p(target) per row, (N,), no gradient. IGNORE_INDEX rows give 0.
pub fn token_logprobs(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    check_inputs("token_logprobs", logits, targets)?;
    // On another accelerator (no kernel of ours): the differentiable composition of candle primitives.
    if !(logits.device().is_cpu() || logits.device().is_cuda()) {
        return super::reference::token_logprobs(logits, targets);
    }
    logits.contiguous()?.apply_op2_no_bwd(&targets.contiguous()?, &TokenLogprobs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::{assert_close, assert_grads, randn, GradCheckOpts};
    use crate::ops::reference;
    use candle_core::{Device, Var, D};

    const I: u32 = IGNORE_INDEX;

    /// FD errors of this op are ~1e-5 of the gradient scale; check well below the default.
    fn strict() -> GradCheckOpts {
        GradCheckOpts { tol: 2e-3, ..Default::default() }
    }

    #[test]
    fn cross_entropy_finite_differences() {
        let x = (randn((5, 7), 60).unwrap() * 2.0).unwrap();
        let t = Tensor::new(&[3u32, I, 0, 6, I], &Device::Cpu).unwrap();
        assert_grads("cross_entropy", |a| cross_entropy(&a[0], &a[1]), &[x, t], &[0], &strict());
    }

    #[test]
    fn cross_entropy_matches_reference() {
        let (n, v) = (37, 301);
        let x = (randn((n, v), 61).unwrap() * 3.0).unwrap();
        let t: Vec<u32> = (0..n as u32).map(|i| if i % 5 == 2 { I } else { (i * 97) % v as u32 }).collect();
        let t = Tensor::new(t, &Device::Cpu).unwrap();
        let run = |f: &dyn Fn(&Tensor) -> Result<Tensor>| {
            let xv = Var::from_tensor(&x).unwrap();
            let l = f(xv.as_tensor()).unwrap();
            // A non-unit upstream gradient, to check that g is applied.
            let g = (&l * 1.7).unwrap().backward().unwrap();
            (l, g.get(xv.as_tensor()).unwrap().clone())
        };
        let (l, dx) = run(&|x| cross_entropy(x, &t));
        let (rl, rdx) = run(&|x| reference::cross_entropy(x, &t));
        assert_eq!(l.dims(), rl.dims());
        assert_close(&l, &rl, 1e-5, "cross_entropy loss");
        assert_close(&dx, &rdx, 1e-4, "cross_entropy d logits");
        // Ignored rows get no gradient.
        let row2 = dx.get(2).unwrap().abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(row2, 0.0);
    }

    #[test]
    fn cross_entropy_all_ignored() {
        let x = randn((3, 4), 62).unwrap();
        let xv = Var::from_tensor(&x).unwrap();
        let t = Tensor::new(&[I, I, I], &Device::Cpu).unwrap();
        let l = cross_entropy(xv.as_tensor(), &t).unwrap();
        assert_eq!(l.to_scalar::<f32>().unwrap(), 0.0);
        let g = l.backward().unwrap();
        let dx = g.get(xv.as_tensor()).unwrap();
        assert_eq!(dx.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
    }

    #[test]
    fn cross_entropy_rejects_bad_targets() {
        let x = randn((2, 4), 63).unwrap();
        assert!(cross_entropy(&x, &Tensor::new(&[1u32, 4], &Device::Cpu).unwrap()).is_err());
        assert!(cross_entropy(&x, &Tensor::new(&[1i64, 2], &Device::Cpu).unwrap()).is_err());
        assert!(cross_entropy(&x, &Tensor::new(&[1u32], &Device::Cpu).unwrap()).is_err());
    }

    #[test]
    fn token_logprobs_matches_log_softmax() {
        let (n, v) = (9, 50);
        let x = (randn((n, v), 64).unwrap() * 3.0).unwrap();
        let t: Vec<u32> = (0..n as u32).map(|i| if i == 4 { I } else { i * 5 }).collect();
        let lp = token_logprobs(&x, &Tensor::new(t.clone(), &Device::Cpu).unwrap()).unwrap();
        let want = candle_nn::ops::log_softmax(&x, D::Minus1).unwrap().to_vec2::<f32>().unwrap();
        let got = lp.to_vec1::<f32>().unwrap();
        for (i, &ti) in t.iter().enumerate() {
            let w = if ti == I { 0.0 } else { want[i][ti as usize] };
            assert!((got[i] - w).abs() < 1e-5, "row {i}: {} vs {w}", got[i]);
        }
    }

    #[test]
    #[ignore]
    fn timing_cross_entropy() {
        let (n, v) = (1024, 4096);
        let x = randn((n, v), 1).unwrap();
        let t = Tensor::new((0..n as u32).map(|i| (i * 31) % v as u32).collect::<Vec<_>>(), &Device::Cpu).unwrap();
        let g = Tensor::new(1f32, &Device::Cpu).unwrap();
        let ms = crate::ops::timing::time_op(|| {
            let op = CrossEntropy { saved: Mutex::new((Vec::new(), 0)) };
            let l = x.apply_op2_no_bwd(&t, &op)?;
            op.bwd(&x, &t, &l, &g)?;
            Ok(())
        });
        println!("cross_entropy (1024,4096) fwd+bwd: {ms}");
        let ms = crate::ops::timing::time_op(|| token_logprobs(&x, &t).map(|_| ()));
        println!("token_logprobs (1024,4096): {ms}");
    }
}
