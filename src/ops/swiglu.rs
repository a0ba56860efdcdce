//! SwiGLU gate, y = silu(gate) · up = gate · σ(gate) · up, as a candle `CustomOp2` with an
//! analytic backward for both inputs.
//!
//! Layout: gate and up of the same shape (any rank), contiguous f32, processed as flat buffers in
//! rayon chunks. With s = σ(gate):
//!   d gate = g · up · s · (1 + gate · (1 − s)),    d up = g · gate · s.
//! Correctness reference: `reference::swiglu`, forward and both gradients, plus finite
//! differences (tests below).

use super::kernels::{contiguous_grad, expect_f32, sigmoid_m, simd_fn, storage_f32};
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

const CHUNK: usize = 16 * 1024;

struct SwiGlu;

simd_fn! {
    fn fwd_chunk(g: &[f32], u: &[f32], y: &mut [f32]) {
        for ((y, &g), &u) in y.iter_mut().zip(g).zip(u) {
            *y = g * sigmoid_m::<M>(g) * u;
        }
    }
}

simd_fn! {
    fn bwd_chunk(g: &[f32], u: &[f32], dy: &[f32], dg: &mut [f32], du: &mut [f32]) {
        for i in 0..g.len() {
            let (x, s) = (g[i], sigmoid_m::<M>(g[i]));
            du[i] = dy[i] * x * s;
            dg[i] = dy[i] * u[i] * s * (1.0 + x * (1.0 - s));
        }
    }
}

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "swiglu"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = super::access::slice_f32(s1, l1)?;
        let u = super::access::slice_f32(s2, l2)?;
        let mut y = vec![0f32; g.len()];
        y.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK)).zip(u.par_chunks(CHUNK)).for_each(|((y, g), u)| fwd_chunk(g, u, y));
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
        let (g, u) = (super::cuda::input_f32(s1, l1)?, super::cuda::input_f32(s2, l2)?);
        let y = super::cuda::dense::swiglu_fwd(&s1.device, &g, &u, l1.shape().elem_count())?;
        Ok((candle_core::CudaStorage::wrap_cuda_slice(y, s1.device.clone()), l1.shape().clone()))
    }

    fn bwd(&self, gate: &Tensor, up: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        #[cfg(feature = "cuda")]
        if gate.device().is_cuda() {
            let (dg, du) = super::cuda::dense::swiglu_bwd(gate, up, grad)?;
            return Ok((Some(dg), Some(du)));
        }
        let dy = contiguous_grad(grad)?;
        let (gs, gl) = gate.storage_and_layout();
        let (us, ul) = up.storage_and_layout();
        let (ds, dl) = dy.storage_and_layout();
        let (g, u, d) = (storage_f32(&gs, gl)?, storage_f32(&us, ul)?, storage_f32(&ds, dl)?);
        let mut dg = vec![0f32; g.len()];
        let mut du = vec![0f32; g.len()];
        dg.par_chunks_mut(CHUNK)
            .zip(du.par_chunks_mut(CHUNK))
            .zip(g.par_chunks(CHUNK))
            .zip(u.par_chunks(CHUNK))
            .zip(d.par_chunks(CHUNK))
            .for_each(|((((dg, du), g), u), d)| bwd_chunk(g, u, d, dg, du));
        drop((gs, us, ds));
        Ok((Some(Tensor::from_vec(dg, gate.shape().clone(), gate.device())?), Some(Tensor::from_vec(du, up.shape().clone(), up.device())?)))
    }
}

/// silu(gate) * up, element-wise; gate and up have the same shape.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    expect_f32("swiglu", "gate", gate)?;
    expect_f32("swiglu", "up", up)?;
    if gate.shape() != up.shape() {
        candle_core::bail!("swiglu: gate {:?} and up {:?} differ in shape", gate.shape(), up.shape());
    }
    // On another accelerator (no kernel of ours): the differentiable composition of candle primitives.
    if !(gate.device().is_cpu() || gate.device().is_cuda()) {
        return super::reference::swiglu(gate, up);
    }
    gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu)
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
    fn swiglu_finite_differences() {
        let g = (randn((3, 7), 50).unwrap() * 2.0).unwrap();
        let u = randn((3, 7), 51).unwrap();
        assert_grads("swiglu", |a| swiglu(&a[0], &a[1]), &[g, u], &[0, 1], &strict());
    }

    #[test]
    fn swiglu_matches_reference() {
        // Large enough for several rayon chunks, with a ragged tail; includes large |gate|.
        let shape = (5, 7001);
        let g = (randn(shape, 52).unwrap() * 4.0).unwrap();
        let u = randn(shape, 53).unwrap();
        let gy = randn(shape, 54).unwrap();
        let run = |f: &dyn Fn(&Tensor, &Tensor) -> Result<Tensor>| {
            let gv = Var::from_tensor(&g).unwrap();
            let uv = Var::from_tensor(&u).unwrap();
            let y = f(gv.as_tensor(), uv.as_tensor()).unwrap();
            let gr = (&y * &gy).unwrap().sum_all().unwrap().backward().unwrap();
            (y, gr.get(gv.as_tensor()).unwrap().clone(), gr.get(uv.as_tensor()).unwrap().clone())
        };
        let (y, dg, du) = run(&|g, u| swiglu(g, u));
        let (ry, rdg, rdu) = run(&|g, u| reference::swiglu(g, u));
        assert_close(&y, &ry, 1e-5, "swiglu forward");
        assert_close(&dg, &rdg, 1e-4, "swiglu d gate");
        assert_close(&du, &rdu, 1e-4, "swiglu d up");
    }

    #[test]
    fn swiglu_broadcast_grad_and_shape_check() {
        let g = randn((4, 6), 55).unwrap();
        let u = randn((4, 6), 56).unwrap();
        let gv = Var::from_tensor(&g).unwrap();
        let y = swiglu(gv.as_tensor(), &u.t().unwrap().contiguous().unwrap().t().unwrap()).unwrap();
        let gr = y.sum_all().unwrap().backward().unwrap();
        let ry = reference::swiglu(gv.as_tensor(), &u).unwrap();
        let rgr = ry.sum_all().unwrap().backward().unwrap();
        assert_close(&y, &ry, 1e-5, "forward");
        assert_close(gr.get(gv.as_tensor()).unwrap(), rgr.get(gv.as_tensor()).unwrap(), 1e-4, "d gate");
        assert!(swiglu(&g, &randn((4, 5), 1).unwrap()).is_err());
    }

    #[test]
    #[ignore]
    fn timing_swiglu() {
        for shape in [(8, 128, 256), (8, 128, 1024)] {
            let g = randn(shape, 1).unwrap();
            let u = randn(shape, 2).unwrap();
            let dy = randn(shape, 3).unwrap();
            let t = crate::ops::timing::time_op(|| {
                let y = g.apply_op2_no_bwd(&u, &SwiGlu)?;
                SwiGlu.bwd(&g, &u, &y, &dy)?;
                Ok(())
            });
            println!("swiglu {shape:?} fwd+bwd: {t}");
        }
    }
}
