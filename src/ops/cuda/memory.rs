//! Memory-layer ops on CUDA: product-key top-k (cuBLAS half-scores, selection kernel, scores
//! recomputed differentiably from the chosen slots) and the embedding bag's kernels.
//! Correctness reference: the CPU ops (`ops::product_keys`, `ops::embedding_bag`), compared on random
//! inputs by tests/cuda.rs.

use super::{cfg_rows, device_of, func, upload_u32, view_f32, wrap, zeros_f32, BLOCK};
use crate::ops::slots::SlotHandle;
use candle_core::cuda_backend::cudarc::driver::{CudaView, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::CudaDevice;
use candle_core::{Result, Tensor};
use std::sync::Arc;

/// Threads of the selection kernel's blocks (one block per token and head).
const SELECT_THREADS: u32 = 128;

/// The selection alone: q (N, H, K), keys (H, 2, n, K/2) (contiguous f32 CUDA tensors) ->
/// (scores (N, H, knn) as the kernel summed them, slots (N, H, knn) u32), both on the device.
/// The half-scores S_p = Q_p K_pᵀ per head are one batched cuBLAS matmul each.
pub fn select(q: &Tensor, keys: &Tensor, knn: usize) -> Result<(Tensor, Tensor)> {
    let (n_tok, heads, k_dim) = q.dims3()?;
    let n = keys.dim(2)?;
    let half = k_dim / 2;
    let dev = device_of(q)?;
    let qh = q.detach().transpose(0, 1)?; // (H, N, K)
    let half_scores = |p: usize| -> Result<Tensor> {
        let qp = qh.narrow(2, p * half, half)?.contiguous()?; // (H, N, K/2)
        let kp = keys.detach().narrow(1, p, 1)?.squeeze(1)?.contiguous()?; // (H, n, K/2)
        qp.matmul(&kp.t()?)?.contiguous() // (H, N, n)
    };
    let (s1, s2) = (half_scores(0)?, half_scores(1)?);
    let scores = zeros_f32(&dev, n_tok * heads * knn)?;
    let slots = dev.alloc_zeros::<u32>((n_tok * heads * knn).max(1))?;
    {
        let (g1, l1) = s1.storage_and_layout();
        let (g2, l2) = s2.storage_and_layout();
        let (v1, v2) = (view_f32(&g1, l1)?, view_f32(&g2, l2)?);
        let f = func(&dev, "pk_select")?;
        let mut b = f.builder();
        let (nt, h, ni, k) = (n_tok as i32, heads as i32, n as i32, knn as i32);
        b.arg(&v1);
        b.arg(&v2);
        b.arg(&scores);
        b.arg(&slots);
        b.arg(&nt);
        b.arg(&h);
        b.arg(&ni);
        b.arg(&k);
        let cfg = LaunchConfig {
            grid_dim: ((n_tok * heads) as u32, 1, 1),
            block_dim: (SELECT_THREADS, 1, 1),
            shared_mem_bytes: (16 * knn) as u32,
        };
        if n_tok * heads > 0 {
            unsafe { f.launch(b, cfg) }?;
        }
    }
    Ok((wrap(scores, &dev, (n_tok, heads, knn)), wrap(slots, &dev, (n_tok, heads, knn))))
}

/// `ops::product_key_topk` on CUDA. The kernel chooses the slots; the returned scores are then
/// recomputed from them with differentiable candle ops (index_select of the chosen sub-keys, a
/// batched matmul with the half-queries), so the backward (dq, dkeys) runs on the device through
/// candle's autograd. The slots are read back to the host (N·H·knn u32) for the layer's unique /
/// inverse and the handle.
pub fn product_key_topk(q: &Tensor, keys: &Tensor, knn: usize) -> Result<(Tensor, SlotHandle)> {
    let (n_tok, heads, k_dim) = q.dims3()?;
    let n = keys.dim(2)?;
    let half = k_dim / 2;
    let (_, slots) = select(q, keys, knn)?;
    let slots: Vec<u32> = slots.flatten_all()?.to_vec1()?;
    // Rows of keys viewed as (H·2·n, K/2): sub-key i of half p of head h is row (2h + p)·n + i.
    let mut idx1 = Vec::with_capacity(slots.len());
    let mut idx2 = Vec::with_capacity(slots.len());
    for (e, &s) in slots.iter().enumerate() {
        let h = (e / knn) % heads;
        let (i, j) = (s as usize / n, s as usize % n);
        idx1.push(((2 * h) * n + i) as u32);
        idx2.push(((2 * h + 1) * n + j) as u32);
    }
    let dev = q.device();
    let flat = keys.reshape((heads * 2 * n, half))?;
    let score = |idx: Vec<u32>, p: usize| -> Result<Tensor> {
        let idx = Tensor::from_vec(idx, slots.len(), dev)?;
        let k = flat.index_select(&idx, 0)?.reshape((n_tok * heads, knn, half))?;
        let qp = q.narrow(2, p * half, half)?.reshape((n_tok * heads, half, 1))?;
        k.matmul(&qp)?.reshape((n_tok, heads, knn))
    };
    let scores = (score(idx1, 0)? + score(idx2, 1)?)?;
    let handle = SlotHandle::default();
    handle.set(Arc::new(slots))?;
    Ok((scores, handle))
}

/// Embedding bag forward on the device: y (N, D) for w (N·M) and G (U, D) views.
pub fn ebag_forward(
    dev: &CudaDevice,
    w: &CudaView<'_, f32>,
    g: &CudaView<'_, f32>,
    inv: &[u32],
    n_tok: usize,
    m: usize,
    d: usize,
) -> Result<candle_core::cuda_backend::cudarc::driver::CudaSlice<f32>> {
    let inv = upload_u32(dev, inv)?;
    let y = zeros_f32(dev, n_tok * d)?;
    if n_tok == 0 || d == 0 {
        return Ok(y);
    }
    let f = func(dev, "ebag_fwd")?;
    let mut b = f.builder();
    let (nt, mi, di) = (n_tok as i32, m as i32, d as i32);
    b.arg(w);
    b.arg(g);
    b.arg(&inv);
    b.arg(&y);
    b.arg(&nt);
    b.arg(&mi);
    b.arg(&di);
    unsafe { f.launch(b, cfg_rows(n_tok, d)) }?;
    Ok(y)
}

/// Embedding bag backward on the device: (dw shaped as w, dG (n_rows, D)). dw reads the rows of
/// `src` through `read_idx` (the gathered rows through `inv`, or the value table through the
/// slots); dG is reduced per row of the gradient receiver from the reverse index of `inv`
/// (`slots::reverse_index`, built on the host and uploaded): no atomics, a fixed summation
/// order.
pub fn ebag_backward(
    w: &Tensor,
    src: &Tensor,
    dy: &Tensor,
    read_idx: &[u32],
    inv: &[u32],
    n_rows: usize,
    m: usize,
) -> Result<(Tensor, Tensor)> {
    let dev = device_of(w)?;
    let (u, d) = (n_rows, src.dim(1)?);
    let n_entries = inv.len();
    let (start, order) = crate::ops::slots::reverse_index(inv, u);
    let (idx_d, start_d, order_d) = (upload_u32(&dev, read_idx)?, upload_u32(&dev, &start)?, upload_u32(&dev, &order)?);
    let w = super::contiguous_f32(w)?;
    let g = super::contiguous_f32(src)?;
    let dy = super::contiguous_f32(dy)?;
    let dw = zeros_f32(&dev, n_entries)?;
    let dg = zeros_f32(&dev, u * d)?;
    if n_entries > 0 && d > 0 {
        let (ws, wl) = w.storage_and_layout();
        let (gs, gl) = g.storage_and_layout();
        let (ds, dl) = dy.storage_and_layout();
        let (wv, gv, dv) = (view_f32(&ws, wl)?, view_f32(&gs, gl)?, view_f32(&ds, dl)?);
        let (ne, mi, di) = (n_entries as i32, m as i32, d as i32);
        let f = func(&dev, "ebag_bwd_dw")?;
        let mut b = f.builder();
        b.arg(&dv);
        b.arg(&gv);
        b.arg(&idx_d);
        b.arg(&dw);
        b.arg(&ne);
        b.arg(&mi);
        b.arg(&di);
        let warps_per_block = (BLOCK / 32) as usize;
        let cfg =
            LaunchConfig { grid_dim: (n_entries.div_ceil(warps_per_block) as u32, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 };
        unsafe { f.launch(b, cfg) }?;
        let f = func(&dev, "ebag_bwd_dg")?;
        let mut b = f.builder();
        b.arg(&wv);
        b.arg(&dv);
        b.arg(&start_d);
        b.arg(&order_d);
        b.arg(&dg);
        b.arg(&mi);
        b.arg(&di);
        unsafe { f.launch(b, cfg_rows(u, d)) }?;
    }
    Ok((wrap(dw, &dev, w.shape().clone()), wrap(dg, &dev, (u, d))))
}
