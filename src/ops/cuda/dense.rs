//! RMSNorm, softmax, SwiGLU, RoPE and cross-entropy on CUDA (`kernels/dense.cu`): the forwards are the `cuda_fwd` of
//! the CPU ops' `CustomOp`s, the backwards are called from their `bwd` when the tensors are on a
//! GPU. Correctness reference: the CPU ops, compared by tests/cuda.rs.

use super::{cfg_1d, cfg_per_row, contiguous_f32, dense_func, device_of, view_f32, wrap, zeros_f32, BLOCK};
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::CudaDevice;
use candle_core::{Result, Tensor};

/// RMSNorm forward over `rows` rows of `d`.
pub fn rms_norm_fwd(
    dev: &CudaDevice,
    x: &CudaView<'_, f32>,
    w: &CudaView<'_, f32>,
    rows: usize,
    d: usize,
    eps: f32,
) -> Result<CudaSlice<f32>> {
    let y = zeros_f32(dev, rows * d)?;
    if rows > 0 && d > 0 {
        let f = dense_func(dev, "rmsnorm_fwd")?;
        let mut b = f.builder();
        let di = d as i32;
        b.arg(x);
        b.arg(w);
        b.arg(&y);
        b.arg(&di);
        b.arg(&eps);
        unsafe { f.launch(b, cfg_per_row(rows)) }?;
    }
    Ok(y)
}

/// RMSNorm backward: (dx shaped as x, dw (D,)).
pub fn rms_norm_bwd(x: &Tensor, w: &Tensor, g: &Tensor, eps: f32) -> Result<(Tensor, Tensor)> {
    let dev = device_of(x)?;
    let d = w.elem_count();
    let rows = x.elem_count() / d.max(1);
    let (x, w, g) = (contiguous_f32(x)?, contiguous_f32(w)?, contiguous_f32(g)?);
    let dx = zeros_f32(&dev, rows * d)?;
    let dw = zeros_f32(&dev, d)?;
    if rows > 0 && d > 0 {
        let rstd = zeros_f32(&dev, rows)?;
        let (xs, xl) = x.storage_and_layout();
        let (ws, wl) = w.storage_and_layout();
        let (gs, gl) = g.storage_and_layout();
        let (xv, wv, gv) = (view_f32(&xs, xl)?, view_f32(&ws, wl)?, view_f32(&gs, gl)?);
        let (di, ri) = (d as i32, rows as i32);
        let f = dense_func(&dev, "rmsnorm_bwd_dx")?;
        let mut b = f.builder();
        b.arg(&xv);
        b.arg(&wv);
        b.arg(&gv);
        b.arg(&dx);
        b.arg(&rstd);
        b.arg(&di);
        b.arg(&eps);
        unsafe { f.launch(b, cfg_per_row(rows)) }?;
        let f = dense_func(&dev, "rmsnorm_bwd_dw")?;
        let mut b = f.builder();
        b.arg(&xv);
        b.arg(&gv);
        b.arg(&rstd);
        b.arg(&dw);
        b.arg(&ri);
        b.arg(&di);
        let cfg = LaunchConfig { grid_dim: ((d as u32).div_ceil(BLOCK), 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 };
        unsafe { f.launch(b, cfg) }?;
    }
    Ok((wrap(dx, &dev, x.shape().clone()), wrap(dw, &dev, w.shape().clone())))
}

/// Softmax forward over `rows` rows of `d`.
pub fn softmax_fwd(dev: &CudaDevice, x: &CudaView<'_, f32>, rows: usize, d: usize) -> Result<CudaSlice<f32>> {
    let y = zeros_f32(dev, rows * d)?;
    if rows > 0 && d > 0 {
        let f = dense_func(dev, "softmax_fwd")?;
        let mut b = f.builder();
        let di = d as i32;
        b.arg(x);
        b.arg(&y);
        b.arg(&di);
        unsafe { f.launch(b, cfg_per_row(rows)) }?;
    }
    Ok(y)
}

/// Softmax backward from the output y: dx shaped as y.
pub fn softmax_bwd(y: &Tensor, dy: &Tensor) -> Result<Tensor> {
    let dev = device_of(y)?;
    let d = y.dims().last().copied().unwrap_or(1).max(1);
    let rows = y.elem_count() / d;
    let (y, dy) = (contiguous_f32(y)?, contiguous_f32(dy)?);
    let dx = zeros_f32(&dev, rows * d)?;
    if rows > 0 {
        let (ys, yl) = y.storage_and_layout();
        let (gs, gl) = dy.storage_and_layout();
        let (yv, gv) = (view_f32(&ys, yl)?, view_f32(&gs, gl)?);
        let f = dense_func(&dev, "softmax_bwd")?;
        let mut b = f.builder();
        let di = d as i32;
        b.arg(&yv);
        b.arg(&gv);
        b.arg(&dx);
        b.arg(&di);
        unsafe { f.launch(b, cfg_per_row(rows)) }?;
    }
    Ok(wrap(dx, &dev, y.shape().clone()))
}

/// SwiGLU forward over n elements.
pub fn swiglu_fwd(dev: &CudaDevice, g: &CudaView<'_, f32>, u: &CudaView<'_, f32>, n: usize) -> Result<CudaSlice<f32>> {
    let y = zeros_f32(dev, n)?;
    if n > 0 {
        let f = dense_func(dev, "swiglu_fwd")?;
        let mut b = f.builder();
        b.arg(g);
        b.arg(u);
        b.arg(&y);
        b.arg(&n);
        unsafe { f.launch(b, cfg_1d(n)) }?;
    }
    Ok(y)
}

/// SwiGLU backward: (d gate, d up).
pub fn swiglu_bwd(gate: &Tensor, up: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
    let dev = device_of(gate)?;
    let n = gate.elem_count();
    let (g, u, dy) = (contiguous_f32(gate)?, contiguous_f32(up)?, contiguous_f32(dy)?);
    let dg = zeros_f32(&dev, n)?;
    let du = zeros_f32(&dev, n)?;
    if n > 0 {
        let (gs, gl) = g.storage_and_layout();
        let (us, ul) = u.storage_and_layout();
        let (ds, dl) = dy.storage_and_layout();
        let (gv, uv, dv) = (view_f32(&gs, gl)?, view_f32(&us, ul)?, view_f32(&ds, dl)?);
        let f = dense_func(&dev, "swiglu_bwd")?;
        let mut b = f.builder();
        b.arg(&gv);
        b.arg(&uv);
        b.arg(&dv);
        b.arg(&dg);
        b.arg(&du);
        b.arg(&n);
        unsafe { f.launch(b, cfg_1d(n)) }?;
    }
    Ok((wrap(dg, &dev, gate.shape().clone()), wrap(du, &dev, up.shape().clone())))
}

/// RoPE rotation of x (B, T, H, Dh) with table rows cos/sin (T, Dh/2) (host copies, uploaded);
/// `sign` −1 rotates back (the backward).
#[allow(clippy::too_many_arguments)]
pub fn rope_rotate(
    dev: &CudaDevice,
    x: &CudaView<'_, f32>,
    cos: &[f32],
    sin: &[f32],
    n: usize,
    t: usize,
    h: usize,
    dh: usize,
    sign: f32,
) -> Result<CudaSlice<f32>> {
    let y = zeros_f32(dev, n)?;
    let half = dh / 2;
    let rows = n / dh.max(1);
    if rows > 0 && half > 0 {
        let (c, s) = (super::upload_f32(dev, cos)?, super::upload_f32(dev, sin)?);
        let f = dense_func(dev, "rope_rotate")?;
        let mut b = f.builder();
        let (ti, hi, halfi) = (t as i32, h as i32, half as i32);
        b.arg(x);
        b.arg(&y);
        b.arg(&c);
        b.arg(&s);
        b.arg(&rows);
        b.arg(&ti);
        b.arg(&hi);
        b.arg(&halfi);
        b.arg(&sign);
        unsafe { f.launch(b, cfg_1d(rows * half)) }?;
    }
    Ok(y)
}

/// Per row of logits (N, V): sign · (lse − x[target]), 0 for IGNORE_INDEX targets.
pub fn ce_rows(
    dev: &CudaDevice,
    x: &CudaView<'_, f32>,
    targets: &CudaView<'_, u32>,
    n: usize,
    v: usize,
    sign: f32,
) -> Result<CudaSlice<f32>> {
    let out = zeros_f32(dev, n)?;
    if n > 0 && v > 0 {
        let f = dense_func(dev, "ce_rows")?;
        let mut b = f.builder();
        let vi = v as i32;
        b.arg(x);
        b.arg(targets);
        b.arg(&out);
        b.arg(&vi);
        b.arg(&sign);
        unsafe { f.launch(b, cfg_per_row(n)) }?;
    }
    Ok(out)
}

/// Σ rows / count (0 when count = 0), summed in f64 on the device: a (1,) buffer.
pub fn ce_mean(dev: &CudaDevice, rows: &CudaSlice<f32>, n: usize, count: usize) -> Result<CudaSlice<f32>> {
    let out = zeros_f32(dev, 1)?;
    let f = dense_func(dev, "ce_mean")?;
    let mut b = f.builder();
    let (ni, ci) = (n as i32, count as i32);
    b.arg(rows);
    b.arg(&ni);
    b.arg(&ci);
    b.arg(&out);
    unsafe { f.launch(b, cfg_per_row(1)) }?;
    Ok(out)
}

/// Cross-entropy backward: d logits = (softmax − onehot(target)) · scale, 0 for ignored rows.
pub fn ce_bwd(logits: &Tensor, targets: &Tensor, scale: f32) -> Result<Tensor> {
    let dev = device_of(logits)?;
    let (n, v) = logits.dims2()?;
    let x = contiguous_f32(logits)?;
    let t = targets.contiguous()?;
    let dx = zeros_f32(&dev, n * v)?;
    if n > 0 && v > 0 {
        let (xs, xl) = x.storage_and_layout();
        let (ts, tl) = t.storage_and_layout();
        let (xv, tv) = (view_f32(&xs, xl)?, super::view_u32(&ts, tl)?);
        let f = dense_func(&dev, "ce_bwd")?;
        let mut b = f.builder();
        let vi = v as i32;
        b.arg(&xv);
        b.arg(&tv);
        b.arg(&dx);
        b.arg(&vi);
        b.arg(&scale);
        unsafe { f.launch(b, cfg_per_row(n)) }?;
    }
    Ok(wrap(dx, &dev, (n, v)))
}
