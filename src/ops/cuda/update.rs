//! In-place parameter updates on CUDA (kernels in `kernels/memory.cu`): sparse SGD and lazy AdamW
//! on chosen rows of the memory value table, and the dense AdamW. Each writes into the tensor's
//! own device storage (`super::inplace`), so the `Var` the model reads sees the update.
//! Correctness reference: the CPU updates in `train::values` and `train::optim`, compared by
//! tests/cuda.rs.

use super::{cfg_1d, cfg_rows, contiguous_f32, func, inplace, upload_f32, upload_u32, view_f32, BLOCK};
use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::{Result, Tensor};

/// table[pairs[k].0] -= lr · grads[pairs[k].1] for pairs (table row, gradient row), rows distinct.
pub fn sgd_rows(table: &Tensor, grads: &Tensor, pairs: &[(u32, u32)], lr: f32) -> Result<()> {
    let (_, d) = table.dims2()?;
    if pairs.is_empty() || d == 0 {
        return Ok(());
    }
    let grads = contiguous_f32(grads)?;
    let flat: Vec<u32> = pairs.iter().flat_map(|&(r, g)| [r, g]).collect();
    inplace(table, |dev, tab| {
        let pairs = upload_u32(dev, &flat)?;
        let (gs, gl) = grads.storage_and_layout();
        let gv = view_f32(&gs, gl)?;
        let f = func(dev, "sgd_rows")?;
        let mut b = f.builder();
        let di = d as i32;
        b.arg(tab);
        b.arg(&gv);
        b.arg(&pairs);
        b.arg(&di);
        b.arg(&lr);
        unsafe { f.launch(b, cfg_rows(flat.len() / 2, d)) }
    })
}

/// The AdamW constants shared by every row of a step.
#[derive(Clone, Copy, Debug)]
pub struct AdamConsts {
    pub b1: f32,
    pub b2: f32,
    pub one_m_b1: f32,
    pub one_m_b2: f32,
    pub decay: f32,
    pub eps: f32,
}

/// Lazy AdamW on touched rows: `state` is (cap, 2D) (m, v per element) or, `rowwise`, (cap, D + 1);
/// `meta` (table row, state slot) and `coef` (step_size, inv_sqrt_bc2) per gradient row k.
/// Two launches: the moments in place on the state, then the rows in place on the table.
pub fn adam_rows(
    table: &Tensor,
    state: &Tensor,
    grads: &Tensor,
    meta: &[(u32, u32)],
    coef: &[(f32, f32)],
    rowwise: bool,
    k: AdamConsts,
) -> Result<()> {
    let (_, d) = table.dims2()?;
    if meta.is_empty() || d == 0 {
        return Ok(());
    }
    let grads = contiguous_f32(grads)?;
    let meta_flat: Vec<u32> = meta.iter().flat_map(|&(r, s)| [r, s]).collect();
    let coef_flat: Vec<f32> = coef.iter().flat_map(|&(a, b)| [a, b]).collect();
    let (di, rw) = (d as i32, rowwise as i32);
    let rows = meta.len();
    inplace(state, |dev, st| {
        let meta_d = upload_u32(dev, &meta_flat)?;
        let (gs, gl) = grads.storage_and_layout();
        let gv = view_f32(&gs, gl)?;
        let f = func(dev, "adam_moments")?;
        let mut b = f.builder();
        b.arg(st);
        b.arg(&gv);
        b.arg(&meta_d);
        b.arg(&di);
        b.arg(&rw);
        b.arg(&k.b1);
        b.arg(&k.b2);
        b.arg(&k.one_m_b1);
        b.arg(&k.one_m_b2);
        let cfg = LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 };
        unsafe { f.launch(b, cfg) }
    })?;
    inplace(table, |dev, tab| {
        let meta_d = upload_u32(dev, &meta_flat)?;
        let coef_d = upload_f32(dev, &coef_flat)?;
        let (ss, sl) = state.storage_and_layout();
        let sv = view_f32(&ss, sl)?;
        let f = func(dev, "adam_apply")?;
        let mut b = f.builder();
        b.arg(tab);
        b.arg(&sv);
        b.arg(&meta_d);
        b.arg(&coef_d);
        b.arg(&di);
        b.arg(&rw);
        b.arg(&k.decay);
        b.arg(&k.eps);
        unsafe { f.launch(b, cfg_rows(rows, d)) }
    })
}

/// Dense AdamW on one parameter, in place on p, m and v (same shapes, contiguous f32).
pub fn adam_dense(p: &Tensor, m: &Tensor, v: &Tensor, g: &Tensor, k: AdamConsts, step_size: f32, inv_sqrt_bc2: f32) -> Result<()> {
    let n = p.elem_count();
    if n == 0 {
        return Ok(());
    }
    let g = contiguous_f32(g)?;
    let ema = |x: &Tensor, a: f32, bcoef: f32, square: i32| {
        inplace(x, |dev, xs| {
            let (gs, gl) = g.storage_and_layout();
            let gv = view_f32(&gs, gl)?;
            let f = func(dev, "ema_inplace")?;
            let mut b = f.builder();
            b.arg(xs);
            b.arg(&gv);
            b.arg(&n);
            b.arg(&a);
            b.arg(&bcoef);
            b.arg(&square);
            unsafe { f.launch(b, cfg_1d(n)) }
        })
    };
    ema(m, k.b1, k.one_m_b1, 0)?;
    ema(v, k.b2, k.one_m_b2, 1)?;
    inplace(p, |dev, ps| {
        let (ms, ml) = m.storage_and_layout();
        let (vs, vl) = v.storage_and_layout();
        let (mv, vv) = (view_f32(&ms, ml)?, view_f32(&vs, vl)?);
        let f = func(dev, "adam_dense_apply")?;
        let mut b = f.builder();
        b.arg(ps);
        b.arg(&mv);
        b.arg(&vv);
        b.arg(&n);
        b.arg(&k.decay);
        b.arg(&step_size);
        b.arg(&inv_sqrt_bc2);
        b.arg(&k.eps);
        unsafe { f.launch(b, cfg_1d(n)) }
    })
}
