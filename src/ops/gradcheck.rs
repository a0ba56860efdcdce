//! Finite-difference gradient checking, used by every op's tests (and by tests elsewhere).
//!
//! `grad_check(f, inputs, wrt, opts)` turns f's output into a scalar with a fixed random
//! projection, loss = Σ f(x) ⊙ W (W ~ N(0,1), seeded), takes the analytic gradient of the loss
//! with respect to the inputs listed in `wrt` through candle's backward, and compares it with
//! central differences (loss(x + ε e_i) − loss(x − ε e_i)) / 2ε, the loss being summed in f64 on
//! the host. The error of an input is max_i |analytic_i − numeric_i| divided by the larger of the
//! two gradients' max-norms, so a tolerance of ~1e-2 suits f32 ops with ε ~ 1e-2..1e-3.
//! Inputs are small: every coordinate costs two forward passes (`max_elems` caps how many are
//! checked per input; a seeded random subset is used beyond that).
//!
//! Also here: seeded random tensors and a relative closeness check, for tests.

use candle_core::{DType, Device, Result, Shape, Tensor, Var};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

/// Settings of [`grad_check`].
#[derive(Clone, Debug)]
pub struct GradCheckOpts {
    /// Finite-difference step.
    pub eps: f64,
    /// Largest acceptable relative error (see the module doc); used by [`GradCheckReport::assert_ok`].
    pub tol: f64,
    /// At most this many coordinates per input are perturbed.
    pub max_elems: usize,
    /// Seed of the projection weights and of the coordinate sample.
    pub seed: u64,
}

impl Default for GradCheckOpts {
    fn default() -> Self {
        Self { eps: 1e-2, tol: 1e-2, max_elems: 256, seed: 0 }
    }
}

/// Result for one input.
#[derive(Clone, Debug)]
pub struct InputReport {
    /// Position of the input in the `inputs` slice.
    pub index: usize,
    /// Number of coordinates compared.
    pub checked: usize,
    /// max |analytic − numeric| over the checked coordinates.
    pub max_abs_err: f64,
    /// max(|analytic|∞ over the whole input, |numeric|∞ over the checked coordinates).
    pub grad_scale: f64,
    /// max_abs_err / grad_scale (0 when both gradients are 0).
    pub rel_err: f64,
    /// Whether candle's backward produced no gradient at all for this input.
    pub missing: bool,
    /// The coordinate with the largest error, and (analytic, numeric) there.
    pub worst: Option<(usize, f64, f64)>,
}

/// What [`grad_check`] found.
#[derive(Clone, Debug)]
pub struct GradCheckReport {
    pub inputs: Vec<InputReport>,
    /// Largest `rel_err` over the inputs.
    pub max_rel_err: f64,
    /// Largest `max_abs_err` over the inputs.
    pub max_abs_err: f64,
    pub tol: f64,
}

impl GradCheckReport {
    pub fn passed(&self) -> bool {
        self.max_rel_err <= self.tol && self.inputs.iter().all(|r| !r.missing || r.grad_scale == 0.0)
    }

    /// Panic with a readable account of the failing inputs unless the check passed.
    pub fn assert_ok(&self, what: &str) {
        if !self.passed() {
            let mut msg = format!("gradient check failed for {what} (tolerance {:.1e}):\n", self.tol);
            for r in &self.inputs {
                msg += &format!(
                    "  input {}: rel err {:.3e}, max abs err {:.3e}, grad scale {:.3e}, {} coords{}{}\n",
                    r.index,
                    r.rel_err,
                    r.max_abs_err,
                    r.grad_scale,
                    r.checked,
                    if r.missing { ", NO GRADIENT from backward" } else { "" },
                    match r.worst {
                        Some((i, a, n)) => format!(", worst at {i}: analytic {a:.6e} vs numeric {n:.6e}"),
                        None => String::new(),
                    }
                );
            }
            panic!("{msg}");
        }
    }
}

/// A seeded N(0, 1) f32 tensor on the CPU.
pub fn randn(shape: impl Into<Shape>, seed: u64) -> Result<Tensor> {
    let shape = shape.into();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let v: Vec<f32> = (0..shape.elem_count()).map(|_| StandardNormal.sample(&mut rng)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu)
}

/// A seeded U(lo, hi) f32 tensor on the CPU.
pub fn rand_uniform(shape: impl Into<Shape>, lo: f32, hi: f32, seed: u64) -> Result<Tensor> {
    use rand::Rng;
    let shape = shape.into();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let v: Vec<f32> = (0..shape.elem_count()).map(|_| rng.random_range(lo..hi)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu)
}

/// max |a − b| / max(|b|∞, 1e-12): the relative distance of `a` from the reference `b`.
pub fn rel_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
    if a.shape() != b.shape() {
        candle_core::bail!("rel_diff: shapes differ, {:?} vs {:?}", a.shape(), b.shape());
    }
    let a = a.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    let b = b.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-12);
    let err = a.iter().zip(&b).fold(0f64, |m, (x, y)| m.max((x - y).abs()));
    Ok(err / scale)
}

/// Panic unless `a` is within `rtol` (relative to |b|∞) of the reference `b`.
pub fn assert_close(a: &Tensor, b: &Tensor, rtol: f64, what: &str) {
    let d = rel_diff(a, b).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(d <= rtol, "{what}: relative difference {d:.3e} exceeds {rtol:.1e}");
}

fn loss_f64(out: &Tensor, w: &[f64]) -> Result<f64> {
    let o = out.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    if o.len() != w.len() {
        candle_core::bail!("grad_check: f's output changed size ({} vs {})", o.len(), w.len());
    }
    Ok(o.iter().zip(w).map(|(a, b)| a * b).sum())
}

/// Compare the analytic gradients of `f` (through candle's backward) with central differences,
/// for the inputs whose positions are listed in `wrt` (those must be f32; the others, e.g. u32
/// targets, are passed through untouched). `f` may return any shape; it is projected to a scalar
/// with fixed random weights.
pub fn grad_check<F>(f: F, inputs: &[Tensor], wrt: &[usize], opts: &GradCheckOpts) -> Result<GradCheckReport>
where
    F: Fn(&[Tensor]) -> Result<Tensor>,
{
    for &i in wrt {
        if i >= inputs.len() {
            candle_core::bail!("grad_check: wrt index {i} out of range");
        }
        if inputs[i].dtype() != DType::F32 {
            candle_core::bail!("grad_check: input {i} is {:?}, expected f32", inputs[i].dtype());
        }
    }
    // Analytic gradients.
    let mut vars: Vec<Option<Var>> = vec![None; inputs.len()];
    let mut args: Vec<Tensor> = inputs.iter().map(|t| t.detach()).collect();
    for &i in wrt {
        let v = Var::from_tensor(&inputs[i].contiguous()?)?;
        args[i] = v.as_tensor().clone();
        vars[i] = Some(v);
    }
    let out = f(&args)?;
    let w = randn(out.shape().clone(), opts.seed ^ 0x9E37_79B9_7F4A_7C15)?;
    let w64: Vec<f64> = w.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
    let loss = (out.to_dtype(DType::F32)? * &w)?.sum_all()?;
    let grads = loss.backward()?;

    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let mut reports = Vec::new();
    for &i in wrt {
        let var = vars[i].as_ref().unwrap();
        let (analytic, missing) = match grads.get(var.as_tensor()) {
            Some(g) => (g.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?, false),
            None => (vec![0f64; inputs[i].elem_count()], true),
        };
        let base: Vec<f32> = inputs[i].flatten_all()?.to_vec1()?;
        let n = base.len();
        let coords: Vec<usize> = if n <= opts.max_elems {
            (0..n).collect()
        } else {
            let mut c = rand::seq::index::sample(&mut rng, n, opts.max_elems).into_vec();
            c.sort_unstable();
            c
        };
        let eval = |data: Vec<f32>| -> Result<f64> {
            let mut a: Vec<Tensor> = inputs.iter().map(|t| t.detach()).collect();
            a[i] = Tensor::from_vec(data, inputs[i].shape().clone(), inputs[i].device())?;
            loss_f64(&f(&a)?, &w64)
        };
        let mut max_abs_err = 0f64;
        let mut num_scale = 0f64;
        let mut worst = None;
        for &c in &coords {
            let x0 = base[c] as f64;
            let mut p = base.clone();
            p[c] = (x0 + opts.eps) as f32;
            let hp = p[c] as f64 - x0; // the step actually taken in f32
            let lp = eval(p)?;
            let mut m = base.clone();
            m[c] = (x0 - opts.eps) as f32;
            let hm = x0 - m[c] as f64;
            let lm = eval(m)?;
            let numeric = (lp - lm) / (hp + hm);
            num_scale = num_scale.max(numeric.abs());
            let err = (analytic[c] - numeric).abs();
            if err > max_abs_err || worst.is_none() {
                max_abs_err = max_abs_err.max(err);
                worst = Some((c, analytic[c], numeric));
            }
        }
        let ana_scale = analytic.iter().fold(0f64, |m, v| m.max(v.abs()));
        let grad_scale = ana_scale.max(num_scale);
        let rel_err = if grad_scale > 0.0 { max_abs_err / grad_scale } else { 0.0 };
        reports.push(InputReport { index: i, checked: coords.len(), max_abs_err, grad_scale, rel_err, missing, worst });
    }
    let max_rel_err = reports.iter().fold(0f64, |m, r| m.max(r.rel_err));
    let max_abs_err = reports.iter().fold(0f64, |m, r| m.max(r.max_abs_err));
    Ok(GradCheckReport { inputs: reports, max_rel_err, max_abs_err, tol: opts.tol })
}

/// `grad_check` followed by `assert_ok`: the one-liner for tests.
pub fn assert_grads<F>(what: &str, f: F, inputs: &[Tensor], wrt: &[usize], opts: &GradCheckOpts) -> GradCheckReport
where
    F: Fn(&[Tensor]) -> Result<Tensor>,
{
    let r = grad_check(f, inputs, wrt, opts).unwrap_or_else(|e| panic!("gradient check of {what} errored: {e}"));
    r.assert_ok(what);
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{CpuStorage, CustomOp1, Layout};

    #[test]
    fn passes_on_candle_primitives() {
        let x = randn((3, 4), 1).unwrap();
        let y = randn((4, 2), 2).unwrap();
        let r = assert_grads("tanh(x) @ y", |a| a[0].tanh()?.matmul(&a[1]), &[x, y], &[0, 1], &GradCheckOpts::default());
        assert!(r.max_rel_err < 1e-3, "{r:?}");
    }

    /// x², with a backward that is off by a factor.
    struct BadSquare(f32);
    impl CustomOp1 for BadSquare {
        fn name(&self) -> &'static str {
            "bad-square"
        }
        fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
            let x = crate::ops::access::slice_f32(s, l)?;
            Ok((CpuStorage::F32(x.iter().map(|v| v * v).collect()), l.shape().clone()))
        }
        fn bwd(&self, arg: &Tensor, _res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
            Ok(Some(((arg * g)? * (2.0 * self.0 as f64))?))
        }
    }

    #[test]
    fn catches_a_wrong_backward() {
        let x = randn(5, 3).unwrap();
        let good = grad_check(|a| a[0].apply_op1(BadSquare(1.0)), std::slice::from_ref(&x), &[0], &Default::default()).unwrap();
        assert!(good.passed(), "{good:?}");
        let bad = grad_check(|a| a[0].apply_op1(BadSquare(1.1)), std::slice::from_ref(&x), &[0], &Default::default()).unwrap();
        assert!(!bad.passed(), "{bad:?}");
        // A backward that stops the gradient is caught too.
        let stopped = grad_check(|a| a[0].detach().sqr(), &[x], &[0], &Default::default()).unwrap();
        assert!(stopped.inputs[0].missing && !stopped.passed());
    }

    #[test]
    fn non_float_inputs_pass_through() {
        let x = randn((2, 3), 4).unwrap();
        let idx = Tensor::new(&[2u32, 0], &Device::Cpu).unwrap();
        assert_grads("gather", |a| a[0].gather(&a[1].unsqueeze(1)?, 1), &[x, idx], &[0], &Default::default());
    }
}
