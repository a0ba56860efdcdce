//! Causal grouped-query attention, softmax included, as a candle `CustomOp3` (q, k, v) with an
//! analytic, flash-attention-style backward.
//!
//! Layout: q (B, T, Hq, Dh), k and v (B, S, Hkv, Dh), contiguous f32, Hq a multiple of Hkv (query
//! head h reads kv head h / (Hq/Hkv)), S ≥ T; query row i sits at absolute position S − T + i and
//! sees keys 0..=S − T + i (so the same op serves training, S = T, and KV-cache decoding, S > T).
//! Output o (B, T, Hq, Dh). Each (b, h) is one rayon task; the per-head matrices are read in place
//! through strides (no transposes) and multiplied with the `gemm` crate, single-threaded inside the
//! task. Rows are processed in blocks of `BLOCK` so that key columns past the causal limit of the
//! block are never computed.
//!
//! Forward, per (b, h) and row i:  s = scale · q_i Kᵀ (masked),  lse_i = logsumexp(s),
//!   p = e^(s − lse_i),  o_i = p V.  lse (B, Hq, T) is kept in the op.
//! Backward (P recomputed from lse):  dV = Pᵀ dO,  dP = dO Vᵀ,  D_i = dO_i · o_i,
//!   dS = P ⊙ (dP − D),  dQ = scale · dS K,  dK = scale · dSᵀ Q;
//!   dK, dV are accumulated per query head into a (B, S, Hq, Dh) buffer and summed over the query
//!   heads that share a kv head.
//! Correctness reference: `reference::causal_attention` (candle primitives, explicit mask),
//! forward and all three gradients, plus finite differences (tests below).

use super::kernels::{self, contiguous_grad, expect_f32, matmul, simd_fn, storage_f32, SendConstPtr, SendPtr};
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Mutex;

/// Query rows per block (causal skipping granularity).
const BLOCK: usize = 32;

#[derive(Clone, Copy, Debug)]
struct Dims {
    b: usize,
    t: usize,
    s: usize,
    hq: usize,
    hkv: usize,
    dh: usize,
}

impl Dims {
    fn rep(&self) -> usize {
        self.hq / self.hkv
    }
    /// Number of key columns visible to query rows r0..r1.
    fn cols(&self, r1: usize) -> usize {
        (self.s - self.t + r1).min(self.s)
    }
}

struct Attention {
    scale: f32,
    dims: Dims,
    /// logsumexp of the scaled, masked scores per (b, h, i), written by the forward.
    lse: Mutex<Vec<f32>>,
    /// Per batch row, how many leading key positions are padding (empty: none).
    left_pad: Vec<usize>,
}

simd_fn! {
    /// Softmax of the visible part of each row of a block of scores (row stride `ld`), in place,
    /// given the number of visible columns of its first row; zero the rest up to `ncols`. Writes
    /// each row's logsumexp.
    fn softmax_block(p: &mut [f32], ld: usize, rows: usize, first_visible: usize, ncols: usize, lse: &mut [f32]) {
        for r in 0..rows {
            let row = &mut p[r * ld..r * ld + ncols];
            let vis = (first_visible + r).min(ncols);
            let (a, b) = row.split_at_mut(vis);
            let m = kernels::max(a);
            let sum = kernels::sum_exp_sub(a, m);
            let l = m + sum.ln();
            let inv = 1.0 / sum;
            kernels::exp_sub_scale_inplace(a, m, inv);
            b.fill(0.0);
            lse[r] = l;
        }
    }
}

simd_fn! {
    /// Recompute P = e^(s − lse) on the visible part of each row (zero elsewhere), in place.
    fn probs_block(p: &mut [f32], ld: usize, rows: usize, first_visible: usize, ncols: usize, lse: &[f32]) {
        for r in 0..rows {
            let row = &mut p[r * ld..r * ld + ncols];
            let vis = (first_visible + r).min(ncols);
            let (a, b) = row.split_at_mut(vis);
            kernels::exp_sub_scale_inplace(a, lse[r], 1.0);
            b.fill(0.0);
        }
    }
}

simd_fn! {
    /// dS = P ⊙ (dP − D_row), in place in dp, on the first `ncols` columns of each row.
    fn ds_block(p: &[f32], dp: &mut [f32], ld: usize, rows: usize, ncols: usize, d: &[f32]) {
        for r in 0..rows {
            let pr = &p[r * ld..r * ld + ncols];
            let dr = &mut dp[r * ld..r * ld + ncols];
            let dd = d[r];
            for (x, &pv) in dr.iter_mut().zip(pr) {
                *x = pv * (*x - dd);
            }
        }
    }
}

impl Attention {
    /// Batch row b as the op sees it: its dims without the left padding (S and T shortened), the
    /// first real key k0 and the first real query row q0. Query rows before q0 are padding:
    /// their output and gradients stay zero.
    fn span(&self, b: usize) -> (Dims, usize, usize) {
        let d = self.dims;
        let k0 = self.left_pad.get(b).copied().unwrap_or(0).min(d.s);
        let q0 = k0.saturating_sub(d.s - d.t).min(d.t);
        (Dims { s: d.s - k0, t: d.t - q0, ..d }, k0, q0)
    }

    /// Pointers of head (b, h): q/o/dq rows have stride Hq·Dh, k/v rows Hkv·Dh.
    fn q_off(&self, b: usize, h: usize) -> usize {
        let d = &self.dims;
        (b * d.t * d.hq + h) * d.dh
    }
    fn kv_off(&self, b: usize, h: usize) -> usize {
        let d = &self.dims;
        (b * d.s * d.hkv + h / d.rep()) * d.dh
    }

    fn forward(&self, q: &[f32], k: &[f32], v: &[f32]) -> Vec<f32> {
        let d = self.dims;
        let (qs, ks) = (d.hq * d.dh, d.hkv * d.dh);
        let mut o = vec![0f32; d.b * d.t * d.hq * d.dh];
        let mut lse = vec![0f32; d.b * d.hq * d.t];
        let op = SendPtr(o.as_mut_ptr());
        let (qp, kp, vp) = (SendConstPtr(q.as_ptr()), SendConstPtr(k.as_ptr()), SendConstPtr(v.as_ptr()));
        let blk = BLOCK.min(d.t).max(1);
        lse.par_chunks_mut(d.t.max(1)).enumerate().for_each_init(
            || vec![0f32; blk * d.s],
            |p, (bh, lse)| {
                let (b, h) = (bh / d.hq, bh % d.hq);
                let (d, k0, q0) = self.span(b);
                let (qo, kvo) = (self.q_off(b, h) + q0 * qs, self.kv_off(b, h) + k0 * ks);
                let lse = &mut lse[q0..];
                let mut r0 = 0;
                while r0 < d.t {
                    let r1 = (r0 + blk).min(d.t);
                    let (rows, nc) = (r1 - r0, d.cols(r1));
                    unsafe {
                        // S = scale · Q_blk K[..nc]ᵀ
                        matmul(
                            rows,
                            nc,
                            d.dh,
                            p.as_mut_ptr(),
                            d.s,
                            false,
                            qp.ptr().add(qo + r0 * qs),
                            (qs, 1),
                            kp.ptr().add(kvo),
                            (1, ks),
                            self.scale,
                        );
                    }
                    softmax_block(p, d.s, rows, d.s - d.t + r0 + 1, nc, &mut lse[r0..r1]);
                    unsafe {
                        // O_blk = P V[..nc]
                        matmul(
                            rows,
                            d.dh,
                            nc,
                            op.ptr().add(qo + r0 * qs),
                            qs,
                            false,
                            p.as_ptr(),
                            (d.s, 1),
                            vp.ptr().add(kvo),
                            (ks, 1),
                            1.0,
                        );
                    }
                    r0 = r1;
                }
            },
        );
        *self.lse.lock().unwrap() = lse;
        o
    }

    /// (dq, dk, dv) given the inputs, the output o and its gradient g.
    fn backward(&self, q: &[f32], k: &[f32], v: &[f32], o: &[f32], g: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let d = self.dims;
        let (qs, ks) = (d.hq * d.dh, d.hkv * d.dh);
        let lse = self.lse.lock().unwrap();
        let mut dq = vec![0f32; q.len()];
        // dK, dV per query head: (B, S, Hq, Dh).
        let mut dkh = vec![0f32; d.b * d.s * d.hq * d.dh];
        let mut dvh = vec![0f32; d.b * d.s * d.hq * d.dh];
        let (dqp, dkp, dvp) = (SendPtr(dq.as_mut_ptr()), SendPtr(dkh.as_mut_ptr()), SendPtr(dvh.as_mut_ptr()));
        let (qp, kp, vp, gp) = (SendConstPtr(q.as_ptr()), SendConstPtr(k.as_ptr()), SendConstPtr(v.as_ptr()), SendConstPtr(g.as_ptr()));
        let blk = BLOCK.min(d.t).max(1);
        (0..d.b * d.hq).into_par_iter().for_each_init(
            || (vec![0f32; blk * d.s], vec![0f32; blk * d.s], vec![0f32; blk]),
            |(p, dp, dd), bh| {
                let (b, h) = (bh / d.hq, bh % d.hq);
                let (span, k0, q0) = self.span(b);
                let ho = ((b * d.s + k0) * d.hq + h) * d.dh; // this head in the (B, S, Hq, Dh) buffers
                let lse = &lse[bh * d.t + q0..(bh + 1) * d.t];
                let d = span;
                let (qo, kvo) = (self.q_off(b, h) + q0 * qs, self.kv_off(b, h) + k0 * ks);
                let mut r0 = 0;
                while r0 < d.t {
                    let r1 = (r0 + blk).min(d.t);
                    let (rows, nc) = (r1 - r0, d.cols(r1));
                    let (q_blk, g_blk) = (qo + r0 * qs, qo + r0 * qs);
                    unsafe {
                        // P = e^(scale · Q Kᵀ − lse)
                        matmul(
                            rows,
                            nc,
                            d.dh,
                            p.as_mut_ptr(),
                            d.s,
                            false,
                            qp.ptr().add(q_blk),
                            (qs, 1),
                            kp.ptr().add(kvo),
                            (1, ks),
                            self.scale,
                        );
                    }
                    probs_block(p, d.s, rows, d.s - d.t + r0 + 1, nc, &lse[r0..r1]);
                    // D_i = dO_i · O_i
                    for (r, dd) in dd[..rows].iter_mut().enumerate() {
                        let at = g_blk + r * qs;
                        *dd = kernels::dot(&g[at..at + d.dh], &o[at..at + d.dh]);
                    }
                    unsafe {
                        // dV[..nc] += Pᵀ dO_blk
                        matmul(nc, d.dh, rows, dvp.ptr().add(ho), qs, true, p.as_ptr(), (1, d.s), gp.ptr().add(g_blk), (qs, 1), 1.0);
                        // dP = dO_blk V[..nc]ᵀ
                        matmul(rows, nc, d.dh, dp.as_mut_ptr(), d.s, false, gp.ptr().add(g_blk), (qs, 1), vp.ptr().add(kvo), (1, ks), 1.0);
                    }
                    ds_block(p, dp, d.s, rows, nc, dd);
                    unsafe {
                        // dQ_blk = scale · dS K[..nc]
                        matmul(
                            rows,
                            d.dh,
                            nc,
                            dqp.ptr().add(q_blk),
                            qs,
                            false,
                            dp.as_ptr(),
                            (d.s, 1),
                            kp.ptr().add(kvo),
                            (ks, 1),
                            self.scale,
                        );
                        // dK[..nc] += scale · dSᵀ Q_blk
                        matmul(
                            nc,
                            d.dh,
                            rows,
                            dkp.ptr().add(ho),
                            qs,
                            true,
                            dp.as_ptr(),
                            (1, d.s),
                            qp.ptr().add(q_blk),
                            (qs, 1),
                            self.scale,
                        );
                    }
                    r0 = r1;
                }
            },
        );
        drop(lse);
        let (dk, dv) = if d.rep() == 1 { (dkh, dvh) } else { (self.sum_groups(&dkh), self.sum_groups(&dvh)) };
        (dq, dk, dv)
    }

    /// (B, S, Hq, Dh) -> (B, S, Hkv, Dh), summing the query heads of each group.
    fn sum_groups(&self, x: &[f32]) -> Vec<f32> {
        let d = self.dims;
        let (rep, dh) = (d.rep(), d.dh);
        let mut out = vec![0f32; d.b * d.s * d.hkv * dh];
        out.par_chunks_mut(d.hkv * dh).zip(x.par_chunks(d.hq * dh)).for_each(|(o, x)| {
            for (g, og) in o.chunks_exact_mut(dh).enumerate() {
                for r in 0..rep {
                    let src = &x[(g * rep + r) * dh..(g * rep + r + 1) * dh];
                    for (a, b) in og.iter_mut().zip(src) {
                        *a += b;
                    }
                }
            }
        });
        out
    }
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "causal-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let q = super::access::slice_f32(s1, l1)?;
        let k = super::access::slice_f32(s2, l2)?;
        let v = super::access::slice_f32(s3, l3)?;
        let o = self.forward(q, k, v);
        Ok((CpuStorage::F32(o), l1.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = contiguous_grad(grad)?;
        let res = res.contiguous()?;
        let (qs, ql) = q.storage_and_layout();
        let (ks, kl) = k.storage_and_layout();
        let (vs, vl) = v.storage_and_layout();
        let (os, ol) = res.storage_and_layout();
        let (gs, gl) = g.storage_and_layout();
        let (dq, dk, dv) = self.backward(
            storage_f32(&qs, ql)?,
            storage_f32(&ks, kl)?,
            storage_f32(&vs, vl)?,
            storage_f32(&os, ol)?,
            storage_f32(&gs, gl)?,
        );
        drop((qs, ks, vs, os, gs));
        Ok((
            Some(Tensor::from_vec(dq, q.shape().clone(), q.device())?),
            Some(Tensor::from_vec(dk, k.shape().clone(), k.device())?),
            Some(Tensor::from_vec(dv, v.shape().clone(), v.device())?),
        ))
    }
}

/// q: (B, T, Hq, Dh), k/v: (B, S, Hkv, Dh), S ≥ T, query i at position S-T+i. -> (B, T, Hq, Dh)
pub fn causal_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    causal_attention_left_padded(q, k, v, scale, &[])
}

/// As [`causal_attention`] for left-padded rows (prompts of several lengths in one batch):
/// `left_pad[b]` leading key positions of row b are padding, seen by no query. RoPE scores
/// depend only on position differences, so each real row attends as it would alone (up to
/// rounding). Padding query rows' outputs are unspecified (zero on the CPU, finite on a GPU).
/// Empty `left_pad`: no padding.
pub fn causal_attention_left_padded(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, left_pad: &[usize]) -> Result<Tensor> {
    for (name, x) in [("q", q), ("k", k), ("v", v)] {
        expect_f32("causal_attention", name, x)?;
    }
    let (b, t, hq, dh) = q.dims4()?;
    let (bk, s, hkv, dhk) = k.dims4()?;
    if v.dims() != k.dims() {
        candle_core::bail!("causal_attention: k {:?} and v {:?} differ in shape", k.dims(), v.dims());
    }
    if bk != b || dhk != dh {
        candle_core::bail!("causal_attention: q {:?} and k {:?} disagree on batch or head dim", q.dims(), k.dims());
    }
    if hkv == 0 || hq % hkv != 0 {
        candle_core::bail!("causal_attention: {hq} query heads is not a multiple of {hkv} kv heads");
    }
    if s < t {
        candle_core::bail!("causal_attention: {s} keys for {t} queries (need S >= T)");
    }
    if !left_pad.is_empty() && left_pad.len() != b {
        candle_core::bail!("causal_attention: {} left-padding counts for a batch of {b}", left_pad.len());
    }
    // On a GPU: cuBLAS matmuls around the fused softmax op (no attention kernel of our own yet).
    if !q.device().is_cpu() {
        return causal_attention_composed(q, k, v, scale, left_pad);
    }
    let dims = Dims { b, t, s, hq, hkv, dh };
    let op = Attention { scale: scale as f32, dims, lse: Mutex::new(Vec::new()), left_pad: left_pad.to_vec() };
    q.contiguous()?.apply_op3(&k.contiguous()?, &v.contiguous()?, op)
}

/// Causal attention as two batched matmuls around the fused row softmax (`ops::softmax_rows`,
/// a kernel with its own backward on CUDA): the GPU path. q is scaled before QKᵀ (B·T·Hq·Dh
/// multiplies instead of B·Hq·T·S), so the (B, Hq, T, S) scores make four passes through memory
/// in the forward (matmul, + mask, softmax, matmul) instead of the reference's dozen.
pub fn causal_attention_composed(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, left_pad: &[usize]) -> Result<Tensor> {
    let (qh, kh, vh, mask) = super::reference::attention_heads(q, k, v, left_pad)?;
    let scores = (qh * scale)?.matmul(&kh.t()?)?; // B Hq T S
    let p = super::softmax_rows(&scores.broadcast_add(&mask)?)?;
    p.matmul(&vh)?.transpose(1, 2)?.contiguous()
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

    fn qkv(b: usize, t: usize, s: usize, hq: usize, hkv: usize, dh: usize, seed: u64) -> [Tensor; 3] {
        [randn((b, t, hq, dh), seed).unwrap(), randn((b, s, hkv, dh), seed + 1).unwrap(), randn((b, s, hkv, dh), seed + 2).unwrap()]
    }

    #[test]
    fn attention_finite_differences_gqa() {
        let [q, k, v] = qkv(2, 3, 3, 4, 2, 4, 70);
        let scale = 0.5;
        assert_grads("causal_attention (GQA)", |a| causal_attention(&a[0], &a[1], &a[2], scale), &[q, k, v], &[0, 1, 2], &strict());
    }

    #[test]
    fn attention_finite_differences_cache() {
        // S > T: queries at positions 2..5 of 5.
        let [q, k, v] = qkv(1, 3, 5, 2, 1, 4, 71);
        assert_grads("causal_attention (S > T)", |a| causal_attention(&a[0], &a[1], &a[2], 0.5), &[q, k, v], &[0, 1, 2], &strict());
    }

    fn compare(b: usize, t: usize, s: usize, hq: usize, hkv: usize, dh: usize, seed: u64) {
        compare_op(causal_attention, b, t, s, hq, hkv, dh, seed);
    }

    type AttentionFn = fn(&Tensor, &Tensor, &Tensor, f64) -> Result<Tensor>;

    /// `op` against the reference composition, forward and the three gradients.
    #[allow(clippy::too_many_arguments)]
    fn compare_op(op: AttentionFn, b: usize, t: usize, s: usize, hq: usize, hkv: usize, dh: usize, seed: u64) {
        let [q, k, v] = qkv(b, t, s, hq, hkv, dh, seed);
        let scale = 1.0 / (dh as f64).sqrt();
        let gy = randn((b, t, hq, dh), seed + 3).unwrap();
        let run = |f: &dyn Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor>| {
            let vars: Vec<Var> = [&q, &k, &v].iter().map(|x| Var::from_tensor(x).unwrap()).collect();
            let y = f(vars[0].as_tensor(), vars[1].as_tensor(), vars[2].as_tensor()).unwrap();
            let g = (&y * &gy).unwrap().sum_all().unwrap().backward().unwrap();
            let grads: Vec<Tensor> = vars.iter().map(|x| g.get(x.as_tensor()).unwrap().clone()).collect();
            (y, grads)
        };
        let (y, g) = run(&|q, k, v| op(q, k, v, scale));
        let (ry, rg) = run(&|q, k, v| reference::causal_attention(q, k, v, scale));
        let what = format!("b{b} t{t} s{s} hq{hq} hkv{hkv} dh{dh}");
        assert_close(&y, &ry, 1e-4, &format!("attention forward {what}"));
        for (name, (a, r)) in ["dq", "dk", "dv"].iter().zip(g.iter().zip(&rg)) {
            assert_close(a, r, 1e-4, &format!("attention {name} {what}"));
        }
    }

    #[test]
    fn attention_matches_reference() {
        // Multi-head without grouping, T spanning several blocks with a ragged last one.
        compare(2, 70, 70, 2, 2, 16, 72);
        // GQA Hq=4, Hkv=2.
        compare(2, 9, 9, 4, 2, 8, 73);
        // KV cache: S > T, GQA, blocks.
        compare(1, 40, 75, 4, 2, 8, 74);
        // Single-token decoding step.
        compare(2, 1, 12, 4, 1, 8, 75);
    }

    #[test]
    fn composed_attention_matches_reference() {
        // The GPU path's composition (pre-scaled q, fused softmax op), run here on the CPU.
        let composed: AttentionFn = |q, k, v, scale| causal_attention_composed(q, k, v, scale, &[]);
        compare_op(composed, 2, 70, 70, 2, 2, 16, 72);
        compare_op(composed, 1, 40, 75, 4, 2, 8, 74);
        compare_op(composed, 2, 1, 12, 4, 1, 8, 75);
    }

    /// (y, [dq, dk, dv]) of `f` under a loss that weights real query rows only.
    fn padded_run(f: &dyn Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor>, qkv: &[Tensor; 3], gy: &Tensor) -> (Tensor, Vec<Tensor>) {
        let vars: Vec<Var> = qkv.iter().map(|x| Var::from_tensor(x).unwrap()).collect();
        let y = f(vars[0].as_tensor(), vars[1].as_tensor(), vars[2].as_tensor()).unwrap();
        let g = (&y * gy).unwrap().sum_all().unwrap().backward().unwrap();
        (y, vars.iter().map(|x| g.get(x.as_tensor()).unwrap().clone()).collect())
    }

    /// Left-padded rows: each real row's output and gradients equal that row run alone without
    /// its padding (CPU op, the reference and the GPU composition); padding rows get zero
    /// output and send no gradient.
    fn compare_padded(t: usize, s: usize, pads: &[usize], seed: u64) {
        let (hq, hkv, dh) = (4, 2, 8);
        let b = pads.len();
        let x = qkv(b, t, s, hq, hkv, dh, seed);
        let scale = 1.0 / (dh as f64).sqrt();
        // Query row i of batch row r is real when its position s - t + i is at or past pads[r].
        let real: Vec<f32> = pads.iter().flat_map(|&p| (0..t).map(move |i| if s - t + i >= p { 1.0 } else { 0.0 })).collect();
        let real = Tensor::from_vec(real, (b, t, 1, 1), &candle_core::Device::Cpu).unwrap();
        let gy = randn((b, t, hq, dh), seed + 3).unwrap().broadcast_mul(&real).unwrap();
        let (y, g) = padded_run(&|q, k, v| causal_attention_left_padded(q, k, v, scale, pads), &x, &gy);
        let what = format!("t{t} s{s} pads {pads:?}");
        for (name, f) in [
            (
                "reference",
                &(|q: &Tensor, k: &Tensor, v: &Tensor| reference::causal_attention_left_padded(q, k, v, scale, pads))
                    as &dyn Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor>,
            ),
            ("composed", &|q: &Tensor, k: &Tensor, v: &Tensor| causal_attention_composed(q, k, v, scale, pads)),
        ] {
            let (ry, rg) = padded_run(f, &x, &gy);
            assert_close(
                &y.broadcast_mul(&real).unwrap(),
                &ry.broadcast_mul(&real).unwrap(),
                1e-4,
                &format!("padded forward vs {name} {what}"),
            );
            for (gn, (a, r)) in ["dq", "dk", "dv"].iter().zip(g.iter().zip(&rg)) {
                assert_close(a, r, 1e-4, &format!("padded {gn} vs {name} {what}"));
            }
        }
        for (r, &p) in pads.iter().enumerate() {
            let q0 = p.saturating_sub(s - t);
            let alone = |x: &Tensor, from: usize| {
                x.narrow(0, r, 1).unwrap().narrow(1, from, x.dim(1).unwrap() - from).unwrap().contiguous().unwrap()
            };
            let xa = [alone(&x[0], q0), alone(&x[1], p), alone(&x[2], p)];
            let (ya, ga) = padded_run(&|q, k, v| causal_attention(q, k, v, scale), &xa, &alone(&gy, q0));
            assert_close(&alone(&y, q0), &ya, 1e-5, &format!("row {r} alone {what}"));
            for (gn, (a, ga), from) in [("dq", (&g[0], &ga[0]), q0), ("dk", (&g[1], &ga[1]), p), ("dv", (&g[2], &ga[2]), p)] {
                assert_close(&alone(a, from), ga, 1e-5, &format!("row {r} alone {gn} {what}"));
            }
            let head = |x: &Tensor, n: usize| {
                x.narrow(0, r, 1).unwrap().narrow(1, 0, n).unwrap().abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap()
            };
            assert_eq!(head(&y, q0), 0.0, "padding rows' output, row {r} {what}");
            assert_eq!(head(&g[0], q0) + head(&g[1], p) + head(&g[2], p), 0.0, "padding gradients, row {r} {what}");
        }
    }

    #[test]
    fn left_padded_rows_attend_as_if_alone() {
        // Prefill of prompts of several lengths; padding past a block boundary.
        compare_padded(40, 40, &[3, 0, 35], 80);
        // KV-cache decoding of left-padded prompts, a block of new rows and a single token.
        compare_padded(5, 12, &[4, 0], 81);
        compare_padded(1, 12, &[11, 2], 82);
    }

    #[test]
    fn left_padded_attention_finite_differences() {
        let [q, k, v] = qkv(2, 4, 4, 4, 2, 4, 83);
        assert_grads(
            "causal_attention (left padded)",
            |a| causal_attention_left_padded(&a[0], &a[1], &a[2], 0.5, &[2, 0]),
            &[q, k, v],
            &[0, 1, 2],
            &strict(),
        );
    }

    #[test]
    fn left_padding_for_another_batch_is_refused() {
        let [q, k, v] = qkv(2, 3, 3, 2, 2, 4, 84);
        let e = causal_attention_left_padded(&q, &k, &v, 0.5, &[1]).unwrap_err().to_string();
        assert!(e.contains("1 left-padding counts for a batch of 2"), "{e}");
    }

    #[test]
    fn attention_noncontiguous_inputs() {
        // q, k, v as transposed views of (B, H, T, Dh) tensors.
        let q = randn((2, 4, 6, 8), 76).unwrap().transpose(1, 2).unwrap();
        let k = randn((2, 2, 6, 8), 77).unwrap().transpose(1, 2).unwrap();
        let v = randn((2, 2, 6, 8), 78).unwrap().transpose(1, 2).unwrap();
        let y = causal_attention(&q, &k, &v, 0.3).unwrap();
        let r = reference::causal_attention(&q, &k, &v, 0.3).unwrap();
        assert_close(&y, &r, 1e-4, "strided inputs");
        assert!(causal_attention(&q, &k.narrow(1, 0, 5).unwrap(), &v.narrow(1, 0, 5).unwrap(), 0.3).is_err());
        let k3 = randn((2, 6, 3, 8), 79).unwrap();
        assert!(causal_attention(&q, &k3, &k3, 0.3).is_err());
    }

    #[test]
    #[ignore]
    fn timing_attention() {
        let (b, t, h, dh) = (8, 128, 4, 64);
        let [q, k, v] = qkv(b, t, t, h, h, dh, 1);
        let g = randn((b, t, h, dh), 5).unwrap();
        let dims = Dims { b, t, s: t, hq: h, hkv: h, dh };
        let new_op = || Attention { scale: 0.125, dims, lse: Mutex::new(Vec::new()), left_pad: vec![] };
        let ms = crate::ops::timing::time_op(|| {
            let op = new_op();
            let y = q.apply_op3_no_bwd(&k, &v, &op)?;
            op.bwd(&q, &k, &v, &y, &g)?;
            Ok(())
        });
        let fwd = crate::ops::timing::time_op(|| q.apply_op3_no_bwd(&k, &v, &new_op()).map(|_| ()));
        println!("attention (8,128,4,64) fwd+bwd: {ms}; fwd alone: {fwd}");
    }
}
