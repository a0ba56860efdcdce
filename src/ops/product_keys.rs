//! Product-key top-k (Lample et al. 2019, "Large Memory Layers with Product Keys"; the Memory+ layer
//! of Berges et al. 2024): the knn best of n_keys² slots per token and head, found from two
//! n_keys-sized searches, as a candle `CustomOp2` (q, keys) with an analytic backward.
//!
//! Layout: q (N, H, K) contiguous f32, K = k_dim, split into halves q1 = q[.., :K/2] and
//! q2 = q[.., K/2:]; keys (H, 2, n, K/2): keys[h, 0] = K1, keys[h, 1] = K2, the sub-key tables.
//! Output: scores (N, H, knn), best first; slot indices (N, H, knn) u32, slot = i·n + j, handed out
//! through the [`SlotHandle`] returned alongside (the layer reads them after the forward).
//!
//! Forward, per task of TOKENS_PER_TASK tokens and one head: S1 = Q1 K1ᵀ and S2 = Q2 K2ᵀ with
//! `gemm` (the bulk of the cost), the top-knn of each row of S1 and of S2, then the knn² candidate
//! sums s1[i] + s2[j] (both lists sorted, so each row of candidates stops at the first sum below the
//! current knn-th best) and their top-knn. The true top-knn over all n² sums is always among the
//! candidates: a slot (i, j) with i outside the top-knn of s1 is beaten by the knn slots (i', j).
//! Order, also for ties: higher score first, then lower index (deterministic).
//!
//! Backward: the gradient flows through the selected scores only. For a selected slot (i, j) of
//! token t, head h with score gradient g:
//!   dq1[t,h] += g·K1[h,i],   dq2[t,h] += g·K2[h,j],   dK1[h,i] += g·q1[t,h],   dK2[h,j] += g·q2[t,h].
//! dq is computed per token; dK per sub-key row from a reverse index (sub-key → entries in token
//! order), so every sum runs in a fixed order whatever the thread count.
//!
//! Correctness reference: brute force over all n² slot scores (tests below), and finite
//! differences for both inputs.
//!
//! On CUDA (`ops::cuda::memory`): the half-scores by cuBLAS, the two-stage selection in a kernel
//! (same order and tie-breaking), the chosen scores recomputed with differentiable candle ops.

use super::kernels::{self, contiguous_grad, expect_f32, matmul, storage_f32};
use super::slots::SlotHandle;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

/// Tokens per forward task (one task per token block and head): large enough for the GEMMs to
/// run near full speed, which small row counts do not (K/2 is short).
const TOKENS_PER_TASK: usize = 128;

/// The forward's outputs, written by tasks at disjoint (token, head) rows.
#[derive(Clone, Copy)]
struct OutPtrs(*mut f32, *mut u32);
unsafe impl Send for OutPtrs {}
unsafe impl Sync for OutPtrs {}
impl OutPtrs {
    fn scores(self) -> *mut f32 {
        self.0
    }
    fn slots(self) -> *mut u32 {
        self.1
    }
}

#[derive(Clone, Copy, Debug)]
struct Dims {
    n_tok: usize,
    heads: usize,
    k_dim: usize,
    n_keys: usize,
    knn: usize,
}

struct ProductKeyTopk {
    dims: Dims,
    slots: SlotHandle,
}

/// (score, index) with the op's order: a before b if a scores higher, or equal and a's index is lower.
#[inline(always)]
fn better(a: (f32, u32), b: (f32, u32)) -> bool {
    a.0 > b.0 || (a.0 == b.0 && a.1 < b.1)
}

/// Insert c into `best` (sorted, at most k long) if it belongs to the k best.
#[inline(always)]
fn offer(best: &mut Vec<(f32, u32)>, k: usize, c: (f32, u32)) {
    if best.len() == k {
        if !better(c, best[k - 1]) {
            return;
        }
        best.pop();
    }
    let pos = best.partition_point(|&e| better(e, c));
    best.insert(pos, c);
}

/// The k best entries of a row, sorted. The minimum over k chunks of the chunk maxima is a lower
/// bound of the k-th best (k distinct entries reach it), so only entries at or above it (about
/// k·ln k of n for random scores) are candidates to sort.
fn top_k(row: &[f32], k: usize, out: &mut Vec<(f32, u32)>) {
    out.clear();
    let chunk = row.len().div_ceil(k);
    let thr = row.chunks(chunk).map(kernels::max).fold(f32::INFINITY, f32::min);
    out.extend(row.iter().enumerate().filter(|(_, &s)| s >= thr).map(|(i, &s)| (s, i as u32)));
    if out.len() < k {
        // Only with NaNs in the row: the slow exact scan, which never panics on them.
        out.clear();
        for (i, &s) in row.iter().enumerate() {
            offer(out, k, (s, i as u32));
        }
        return;
    }
    out.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    out.truncate(k);
}

/// The k best of the sums a[x] + b[y] (both lists sorted best first), as slot a.idx·n + b.idx.
fn top_k_sums(a: &[(f32, u32)], b: &[(f32, u32)], n: usize, k: usize, out: &mut Vec<(f32, u32)>) {
    out.clear();
    for &(s1, i) in a {
        // Later rows have s1 no larger: once even their best sum is below the k-th, stop. A sum
        // equal to the k-th may still win on index, so only strictly smaller ones stop the scan.
        if out.len() == k && s1 + b[0].0 < out[k - 1].0 {
            break;
        }
        for &(s2, j) in b {
            let s = s1 + s2;
            if out.len() == k && s < out[k - 1].0 {
                break;
            }
            offer(out, k, (s, i * n as u32 + j));
        }
    }
}

impl ProductKeyTopk {
    fn forward(&self, q: &[f32], keys: &[f32]) -> (Vec<f32>, Vec<u32>) {
        let Dims { n_tok, heads, k_dim, n_keys: n, knn } = self.dims;
        let half = k_dim / 2;
        let mut scores = vec![0f32; n_tok * heads * knn];
        let mut slots = vec![0u32; n_tok * heads * knn];
        let out = OutPtrs(scores.as_mut_ptr(), slots.as_mut_ptr());
        let tb = TOKENS_PER_TASK;
        let n_blocks = n_tok.div_ceil(tb);
        (0..n_blocks * heads).into_par_iter().for_each_init(
            || (vec![0f32; tb * n], vec![0f32; tb * n], Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(knn)),
            |(s1, s2, top1, top2, best), task| {
                let (blk, h) = (task / heads, task % heads);
                let t0 = blk * tb;
                let rows = tb.min(n_tok - t0);
                for (p, s) in [&mut *s1, &mut *s2].into_iter().enumerate() {
                    // S_p (rows × n) = Q_p (rows × K/2, row stride H·K) · K_p[h]ᵀ
                    // SAFETY: the offsets stay inside q (N·H·K) and keys (H·2·n·K/2).
                    unsafe {
                        matmul(
                            rows,
                            n,
                            half,
                            s.as_mut_ptr(),
                            n,
                            false,
                            q.as_ptr().add((t0 * heads + h) * k_dim + p * half),
                            (heads * k_dim, 1),
                            keys.as_ptr().add((h * 2 + p) * n * half),
                            (1, half),
                            1.0,
                        );
                    }
                }
                for r in 0..rows {
                    top_k(&s1[r * n..(r + 1) * n], knn, top1);
                    top_k(&s2[r * n..(r + 1) * n], knn, top2);
                    top_k_sums(top1, top2, n, knn, best);
                    let at = ((t0 + r) * heads + h) * knn;
                    for (x, &(s, i)) in best.iter().enumerate() {
                        // SAFETY: task (blk, h) alone writes the (t, h) rows of its tokens.
                        unsafe {
                            *out.scores().add(at + x) = s;
                            *out.slots().add(at + x) = i;
                        }
                    }
                }
            },
        );
        (scores, slots)
    }

    /// (dq, dkeys) for score gradients g (N, H, knn).
    fn backward(&self, q: &[f32], keys: &[f32], g: &[f32]) -> Result<(Vec<f32>, Vec<f32>)> {
        let Dims { n_tok, heads, k_dim, n_keys: n, knn } = self.dims;
        let half = k_dim / 2;
        let Some(slots) = self.slots.get() else { candle_core::bail!("product_key_topk: backward before forward") };
        let sub_key = |h: usize, p: usize, i: usize| &keys[((h * 2 + p) * n + i) * half..((h * 2 + p) * n + i + 1) * half];

        let mut dq = vec![0f32; q.len()];
        dq.par_chunks_mut(heads * k_dim).enumerate().for_each(|(t, dqt)| {
            for h in 0..heads {
                let (d1, d2) = dqt[h * k_dim..(h + 1) * k_dim].split_at_mut(half);
                for r in 0..knn {
                    let e = (t * heads + h) * knn + r;
                    let s = slots[e] as usize;
                    kernels::axpy(d1, g[e], sub_key(h, 0, s / n));
                    kernels::axpy(d2, g[e], sub_key(h, 1, s % n));
                }
            }
        });

        // dK[h, p]: one task per sub-key table; entries grouped by sub-key with a counting sort
        // (stable: token order within a sub-key), then reduced row by row.
        let mut dk = vec![0f32; keys.len()];
        dk.par_chunks_mut(n * half).enumerate().for_each(|(hp, dk)| {
            let (h, p) = (hp / 2, hp % 2);
            let key_of = |e: usize| if p == 0 { slots[e] as usize / n } else { slots[e] as usize % n };
            let entries = (0..n_tok).flat_map(|t| (0..knn).map(move |r| (t * heads + h) * knn + r));
            let mut start = vec![0usize; n + 1];
            for e in entries.clone() {
                start[key_of(e) + 1] += 1;
            }
            for i in 0..n {
                start[i + 1] += start[i];
            }
            let mut fill = start.clone();
            let mut order = vec![0u32; n_tok * knn];
            for e in entries {
                let k = key_of(e);
                order[fill[k]] = e as u32;
                fill[k] += 1;
            }
            for (i, row) in dk.chunks_exact_mut(half).enumerate() {
                for &e in &order[start[i]..start[i + 1]] {
                    let e = e as usize;
                    let t = e / (heads * knn);
                    let at = (t * heads + h) * k_dim + p * half;
                    kernels::axpy(row, g[e], &q[at..at + half]);
                }
            }
        });
        Ok((dq, dk))
    }
}

impl CustomOp2 for ProductKeyTopk {
    fn name(&self) -> &'static str {
        "product-key-topk"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let q = super::access::slice_f32(s1, l1)?;
        let keys = super::access::slice_f32(s2, l2)?;
        let (scores, slots) = self.forward(q, keys);
        self.slots.set(Arc::new(slots))?;
        let d = self.dims;
        Ok((CpuStorage::F32(scores), Shape::from((d.n_tok, d.heads, d.knn))))
    }

    fn bwd(&self, q: &Tensor, keys: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = contiguous_grad(grad)?;
        let (qs, ql) = q.storage_and_layout();
        let (ks, kl) = keys.storage_and_layout();
        let (gs, gl) = g.storage_and_layout();
        let (dq, dk) = self.backward(storage_f32(&qs, ql)?, storage_f32(&ks, kl)?, storage_f32(&gs, gl)?)?;
        drop((qs, ks, gs));
        Ok((Some(Tensor::from_vec(dq, q.shape().clone(), q.device())?), Some(Tensor::from_vec(dk, keys.shape().clone(), keys.device())?)))
    }
}

/// q: (N, H, K), keys: (H, 2, n, K/2) -> scores (N, H, knn), best first, and the handle through
/// which the selected slot indices (N, H, knn) u32, slot = i·n + j, can be read after the forward.
pub fn product_key_topk(q: &Tensor, keys: &Tensor, knn: usize) -> Result<(Tensor, SlotHandle)> {
    expect_f32("product_key_topk", "q", q)?;
    expect_f32("product_key_topk", "keys", keys)?;
    let (n_tok, heads, k_dim) = q.dims3()?;
    let (kh, two, n_keys, half) = keys.dims4()?;
    if kh != heads || two != 2 || half * 2 != k_dim {
        candle_core::bail!(
            "product_key_topk: keys {:?} do not match q {:?} (expected ({heads}, 2, n_keys, {}))",
            keys.dims(),
            q.dims(),
            k_dim / 2
        );
    }
    if knn == 0 || knn > n_keys {
        candle_core::bail!("product_key_topk: knn = {knn} must be in 1..={n_keys} (n_keys)");
    }
    if n_keys.checked_mul(n_keys).is_none_or(|s| s > u32::MAX as usize + 1) {
        candle_core::bail!("product_key_topk: n_keys = {n_keys} gives slot indices beyond u32");
    }
    #[cfg(feature = "cuda")]
    if q.device().is_cuda() {
        return super::cuda::memory::product_key_topk(&q.contiguous()?, &keys.contiguous()?, knn);
    }
    let slots = SlotHandle::default();
    let op = ProductKeyTopk { dims: Dims { n_tok, heads, k_dim, n_keys, knn }, slots: slots.clone() };
    let scores = q.contiguous()?.apply_op2(&keys.contiguous()?, op)?;
    Ok((scores, slots))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::{assert_grads, randn, GradCheckOpts};

    /// Top-knn over all n² slot scores, by the op's order, from the same s1 and s2.
    fn brute_force(q: &Tensor, keys: &Tensor, knn: usize) -> (Vec<f32>, Vec<u32>) {
        let (n_tok, heads, k_dim) = q.dims3().unwrap();
        let n = keys.dim(2).unwrap();
        let half = k_dim / 2;
        let mut scores = vec![];
        let mut slots = vec![];
        for t in 0..n_tok {
            for h in 0..heads {
                let sub = |p: usize| -> Vec<f32> {
                    let qp = q.get(t).unwrap().get(h).unwrap().narrow(0, p * half, half).unwrap();
                    let kp = keys.get(h).unwrap().get(p).unwrap();
                    kp.matmul(&qp.unsqueeze(1).unwrap()).unwrap().flatten_all().unwrap().to_vec1().unwrap()
                };
                let (s1, s2) = (sub(0), sub(1));
                let mut all: Vec<(f32, u32)> = (0..n * n).map(|x| (s1[x / n] + s2[x % n], x as u32)).collect();
                all.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
                for &(s, i) in &all[..knn] {
                    scores.push(s);
                    slots.push(i);
                }
            }
        }
        (scores, slots)
    }

    #[test]
    fn equals_brute_force_over_all_slots() {
        // Several token tasks with a ragged last one; knn = n_keys is the largest allowed.
        for (n_tok, heads, k_dim, n, knn, seed) in [(70, 2, 8, 16, 4, 1u64), (5, 3, 6, 9, 9, 2), (33, 1, 4, 40, 7, 3)] {
            let q = randn((n_tok, heads, k_dim), seed).unwrap();
            let keys = randn((heads, 2, n, k_dim / 2), seed + 10).unwrap();
            let (scores, handle) = product_key_topk(&q, &keys, knn).unwrap();
            let got_slots = handle.get().unwrap();
            let got: Vec<f32> = scores.flatten_all().unwrap().to_vec1().unwrap();
            let (want, want_slots) = brute_force(&q, &keys, knn);
            assert_eq!(*got_slots, want_slots, "slots (n_keys {n}, knn {knn})");
            for (a, b) in got.iter().zip(&want) {
                assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{a} vs {b}");
            }
        }
    }

    #[test]
    fn ties_break_towards_lower_slots() {
        // All scores equal: the first knn slots in index order.
        let q = Tensor::zeros((2, 1, 4), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
        let keys = randn((1, 2, 5, 2), 4).unwrap();
        let (_, h) = product_key_topk(&q, &keys, 3).unwrap();
        assert_eq!(*h.get().unwrap(), vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn finite_differences() {
        // The output is piecewise smooth, with kinks where the selection or order changes: a small
        // step keeps every difference on one piece.
        let q = randn((6, 2, 8), 20).unwrap();
        let keys = randn((2, 2, 16, 4), 21).unwrap();
        let opts = GradCheckOpts { eps: 5e-4, tol: 5e-3, ..Default::default() };
        assert_grads("product_key_topk", |a| Ok(product_key_topk(&a[0], &a[1], 4)?.0), &[q, keys], &[0, 1], &opts);
    }

    #[test]
    fn rejects_bad_shapes() {
        let q = randn((2, 2, 8), 1).unwrap();
        assert!(product_key_topk(&q, &randn((2, 2, 16, 3), 2).unwrap(), 4).is_err());
        assert!(product_key_topk(&q, &randn((1, 2, 16, 4), 2).unwrap(), 4).is_err());
        assert!(product_key_topk(&q, &randn((2, 2, 16, 4), 2).unwrap(), 17).is_err());
        assert!(product_key_topk(&q, &randn((2, 2, 16, 4), 2).unwrap(), 0).is_err());
    }

    #[test]
    #[ignore]
    fn timing_product_key_topk() {
        let (n_tok, heads, k_dim, n, knn) = (1024, 4, 128, 1024, 32);
        let q = randn((n_tok, heads, k_dim), 1).unwrap();
        let keys = randn((heads, 2, n, k_dim / 2), 2).unwrap();
        let g = randn((n_tok, heads, knn), 3).unwrap();
        let dims = Dims { n_tok, heads, k_dim, n_keys: n, knn };
        let fwd = crate::ops::timing::time_op(|| {
            let op = ProductKeyTopk { dims, slots: SlotHandle::default() };
            q.apply_op2_no_bwd(&keys, &op).map(|_| ())
        });
        let both = crate::ops::timing::time_op(|| {
            let op = ProductKeyTopk { dims, slots: SlotHandle::default() };
            let y = q.apply_op2_no_bwd(&keys, &op)?;
            op.bwd(&q, &keys, &y, &g)?;
            Ok(())
        });
        println!("product_key_topk (1024 tok, 4 heads, k_dim 128, n_keys 1024, knn 32): fwd {fwd}; fwd+bwd {both}");
    }
}
