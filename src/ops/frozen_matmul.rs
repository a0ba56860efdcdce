//! y = x Wᵀ for a weight that does not train: the backward returns dx = g W and nothing for W.
//!
//! candle's matmul backward always computes the right-hand side's gradient (Wᵀ's: gᵀ x), even
//! when W is a detached, frozen tensor, and then drops it. For LoRA and sparse memory finetuning,
//! where every dense weight is frozen, that is a third of each linear layer's backward and, at the
//! LM head, the largest product of the step (docs/design.md, "Frozen weights cost nothing").
//! Forward and dx are candle's own GEMM calls on the same layouts, so the results are bit-identical
//! to `x.matmul(&w.t())` (tested below), except for a few rows (decoding: one row per sequence),
//! where the forward is a dot product of each x row with each weight row instead: the GEMM packs
//! the whole weight for every call, which at a handful of rows cost more than the product
//! (docs/design.md, "Decoding products").

use super::access::slice_f32;
use super::kernels::dot;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Storage, Tensor};
use rayon::prelude::*;

/// At most this many rows take the dot-product path.
pub const SMALL_ROWS: usize = 8;
/// Weight rows per rayon task on that path.
const ROWS_PER_TASK: usize = 64;

struct FrozenWeightMatmul {
    /// (out, in), any layout.
    w: Tensor,
}

impl CustomOp1 for FrozenWeightMatmul {
    fn name(&self) -> &'static str {
        "frozen-weight-matmul"
    }

    fn cpu_fwd(&self, x: &CpuStorage, xl: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, k) = xl.shape().dims2()?;
        let (out, wk) = self.w.dims2()?;
        if wk != k {
            candle_core::bail!("frozen-weight matmul: x is (.., {k}) but the weight is ({out}, {wk})");
        }
        let (ws, wl) = self.w.storage_and_layout();
        let Storage::Cpu(w) = &*ws else {
            candle_core::bail!("frozen-weight matmul: the weight is not on the CPU");
        };
        if n <= SMALL_ROWS && xl.is_contiguous() && wl.is_contiguous() {
            let y = small_rows_matmul(slice_f32(x, xl)?, slice_f32(w, wl)?, n, k, out);
            return Ok((CpuStorage::F32(y), Shape::from((n, out))));
        }
        let y = x.matmul(w, (1, n, out, k), xl, &wl.transpose(0, 1)?)?;
        Ok((y, Shape::from((n, out))))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(g.matmul(&self.w)?))
    }
}

/// y (n, out) = x (n, k) · wᵀ, w (out, k) row-major: each weight row is read once, while it is in
/// cache, for all n rows of x.
fn small_rows_matmul(x: &[f32], w: &[f32], n: usize, k: usize, out: usize) -> Vec<f32> {
    let mut yt = vec![0f32; out * n]; // (out, n): each task writes whole rows of it
    yt.par_chunks_mut(ROWS_PER_TASK * n).enumerate().for_each(|(c, ys)| {
        for (r, y) in ys.chunks_mut(n).enumerate() {
            let o = c * ROWS_PER_TASK + r;
            let wo = &w[o * k..(o + 1) * k];
            for (i, y) in y.iter_mut().enumerate() {
                *y = dot(&x[i * k..(i + 1) * k], wo);
            }
        }
    });
    let mut y = vec![0f32; n * out];
    for o in 0..out {
        for i in 0..n {
            y[i * out + o] = yt[o * n + i];
        }
    }
    y
}

/// Whether `w` takes part in no gradient: neither a variable nor computed from one.
pub fn is_frozen(w: &Tensor) -> bool {
    !w.track_op()
}

/// x (N, in) · wᵀ for a frozen `w` (out, in) on the CPU; other devices take candle's matmul.
pub fn frozen_weight_matmul(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if !x.device().is_cpu() || !is_frozen(w) {
        return x.matmul(&w.t()?);
    }
    x.apply_op1(FrozenWeightMatmul { w: w.clone() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::{assert_grads, randn, GradCheckOpts};
    use candle_core::Var;

    #[test]
    fn frozen_weight_matmul_finite_differences() {
        let w = randn((5, 7), 71).unwrap();
        let x = randn((4, 7), 70).unwrap();
        assert_grads(
            "frozen-weight matmul",
            |a| frozen_weight_matmul(&a[0], &w),
            &[x],
            &[0],
            &GradCheckOpts { tol: 2e-3, ..Default::default() },
        );
    }

    #[test]
    fn equals_candles_matmul_bit_for_bit_and_gives_the_weight_no_gradient() {
        let x = Var::from_tensor(&randn((37, 48), 72).unwrap()).unwrap();
        let w = randn((29, 48), 73).unwrap();
        let gy = randn((37, 29), 74).unwrap();
        let run = |y: Tensor| {
            let g = (&y * &gy).unwrap().sum_all().unwrap().backward().unwrap();
            (
                y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                g.get(x.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                g,
            )
        };
        let (y, dx, grads) = run(frozen_weight_matmul(x.as_tensor(), &w).unwrap());
        let (ry, rdx, _) = run(x.as_tensor().matmul(&w.t().unwrap()).unwrap());
        assert_eq!(y, ry, "forward differs from candle's matmul");
        assert_eq!(dx, rdx, "dx differs from candle's matmul backward");
        assert!(grads.get(&w).is_none(), "the frozen weight got a gradient");
    }

    #[test]
    fn few_rows_take_dot_products_that_agree_with_the_gemm() {
        for n in [1, 3, SMALL_ROWS] {
            let x = randn((n, 100), 80 + n as u64).unwrap();
            let w = randn((130, 100), 90).unwrap();
            let y = frozen_weight_matmul(&x, &w).unwrap();
            crate::ops::gradcheck::assert_close(&y, &x.matmul(&w.t().unwrap()).unwrap(), 1e-5, "few-row product");
        }
    }

    #[test]
    fn a_trainable_weight_still_gets_its_gradient() {
        let x = randn((3, 4), 75).unwrap();
        let w = Var::from_tensor(&randn((2, 4), 76).unwrap()).unwrap();
        assert!(!is_frozen(w.as_tensor()) && is_frozen(&x));
        let g = frozen_weight_matmul(&x, w.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(g.get(w.as_tensor()).is_some(), "a variable weight must keep candle's full backward");
    }

    #[test]
    fn a_mismatched_weight_is_a_named_error() {
        let e = frozen_weight_matmul(&randn((3, 4), 77).unwrap(), &randn((2, 5), 78).unwrap()).unwrap_err().to_string();
        assert!(e.contains("frozen-weight matmul") && e.contains("(2, 5)"), "{e}");
    }
}
