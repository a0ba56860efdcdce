//! Weighted gather of value rows (an "embedding bag" with per-sample weights): the read-out of the
//! memory layer, y[t] = Σ_m w[t,m] · G[inv[t,m]], as a candle `CustomOp2` (w, G) with an analytic
//! backward for both.
//!
//! Layout: w (N, ...) contiguous f32 with M = numel/N weights per token (the memory layer passes
//! (N, heads, knn)); G (U, D) contiguous f32, the gathered unique value rows; inv (N·M) u32, an index
//! into G per weight (not differentiable; held by the op). Output y (N, D).
//! Backward, with dy (N, D):
//!   dw[t,m] = dy[t] · G[inv[t,m]]        dG[u] = Σ_{(t,m): inv[t,m] = u} w[t,m] · dy[t]
//! dG is the sparse gradient of the value table, one row per touched slot. It is reduced per row
//! from a reverse index (row → entries in (t, m) order, built with a stable counting sort), so each
//! row's sum runs in a fixed order: no atomics and the same bits for any thread count.
//! Correctness reference: a dense one-hot formulation with candle primitives (tests below), plus
//! finite differences for w and G. On CUDA the same forward and backward run as kernels
//! (`kernels/memory.cu`, the reverse index built here and uploaded).
//!
//! The memory layer uses the in-place form, [`embedding_bag_from_table`]: the forward and dw read
//! table[slots[e]] directly, and G is a zero tensor that only receives dG (its values, which would
//! equal the gathered rows, are never read), so no (U, D) copy of the rows is made.

use super::kernels::{self, contiguous_grad, expect_f32, rows_per_task, storage_f32};
use super::slots::reverse_index;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

const TASK_ELEMS: usize = 32 * 1024;

/// Where the forward (and dw) read the value rows from.
enum Source {
    /// The op's second input, through `inv`.
    Rows,
    /// A table the op holds, through `slots` (entry e reads table row slots[e] = rows[inv[e]]):
    /// the memory layer's value table read in place, with no gathered copy.
    Table { table: Tensor, slots: Arc<Vec<u32>> },
}

struct EmbeddingBag {
    n_tok: usize,
    /// Weights per token.
    m: usize,
    /// Entry e's row of the second input (the one that receives dG).
    inv: Arc<Vec<u32>>,
    source: Source,
}

/// y[t] = Σ_m w[t,m] · src[idx[t·M + m]], tokens in parallel.
fn bag_forward(w: &[f32], src: &[f32], idx: &[u32], n_tok: usize, m: usize, d: usize) -> Vec<f32> {
    let mut y = vec![0f32; n_tok * d];
    let rpt = rows_per_task(m * d, TASK_ELEMS);
    y.par_chunks_mut(rpt * d).enumerate().for_each(|(blk, y)| {
        for (r, yt) in y.chunks_exact_mut(d).enumerate() {
            let t = blk * rpt + r;
            let es = t * m..(t + 1) * m;
            for (&we, &u) in w[es.clone()].iter().zip(&idx[es]) {
                kernels::axpy(yt, we, &src[u as usize * d..(u as usize + 1) * d]);
            }
        }
    });
    y
}

/// dw[t,m] = dy[t] · src[idx[t·M + m]].
fn bag_grad_w(src: &[f32], idx: &[u32], dy: &[f32], m: usize, d: usize) -> Vec<f32> {
    let mut dw = vec![0f32; idx.len()];
    let rpt = rows_per_task(m * d, TASK_ELEMS);
    dw.par_chunks_mut(rpt * m).enumerate().for_each(|(blk, dw)| {
        for (r, dwt) in dw.chunks_exact_mut(m).enumerate() {
            let t = blk * rpt + r;
            let dyt = &dy[t * d..(t + 1) * d];
            for (x, dwe) in dwt.iter_mut().enumerate() {
                let u = idx[t * m + x] as usize;
                *dwe = kernels::dot(dyt, &src[u * d..(u + 1) * d]);
            }
        }
    });
    dw
}

/// dG[u] = Σ_{e: inv[e] = u} w[e] · dy[e / M], per row in (t, m) order.
fn bag_grad_rows(w: &[f32], inv: &[u32], n_rows: usize, dy: &[f32], m: usize, d: usize) -> Vec<f32> {
    let (start, order) = reverse_index(inv, n_rows);
    let start: Vec<usize> = start.iter().map(|&s| s as usize).collect();
    let mut dg = vec![0f32; n_rows * d];
    let rpt = rows_per_task(d, TASK_ELEMS);
    dg.par_chunks_mut(rpt * d).enumerate().for_each(|(blk, dg)| {
        for (r, row) in dg.chunks_exact_mut(d).enumerate() {
            let u = blk * rpt + r;
            let dy_of = |e: u32| &dy[e as usize / m * d..(e as usize / m + 1) * d];
            // The first entry is written, not added: each fresh page is then only written, which
            // costs one page fault instead of a zero-page read followed by a copy-on-write.
            let Some((&e0, rest)) = order[start[u]..start[u + 1]].split_first() else {
                row.fill(0.0);
                continue;
            };
            let w0 = w[e0 as usize];
            row.iter_mut().zip(dy_of(e0)).for_each(|(r, &x)| *r = w0 * x);
            for &e in rest {
                kernels::axpy(row, w[e as usize], dy_of(e));
            }
        }
    });
    dg
}

impl EmbeddingBag {
    /// The indices the forward and dw use (into the table or into the second input).
    fn read_idx(&self) -> &[u32] {
        match &self.source {
            Source::Rows => &self.inv,
            Source::Table { slots, .. } => slots,
        }
    }
}

impl CustomOp2 for EmbeddingBag {
    fn name(&self) -> &'static str {
        "embedding-bag"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let w = super::access::slice_f32(s1, l1)?;
        let d = l2.dims()[1];
        let y = match &self.source {
            Source::Rows => bag_forward(w, super::access::slice_f32(s2, l2)?, &self.inv, self.n_tok, self.m, d),
            Source::Table { table, slots } => {
                let (ts, tl) = table.storage_and_layout();
                bag_forward(w, storage_f32(&ts, tl)?, slots, self.n_tok, self.m, d)
            }
        };
        Ok((CpuStorage::F32(y), Shape::from((self.n_tok, d))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let d = l2.dims()[1];
        let w = super::cuda::input_f32(s1, l1)?;
        let y = match &self.source {
            Source::Rows => {
                super::cuda::memory::ebag_forward(&s1.device, &w, &super::cuda::input_f32(s2, l2)?, &self.inv, self.n_tok, self.m, d)?
            }
            Source::Table { table, slots } => {
                let (ts, tl) = table.storage_and_layout();
                super::cuda::memory::ebag_forward(&s1.device, &w, &super::cuda::view_f32(&ts, tl)?, slots, self.n_tok, self.m, d)?
            }
        };
        Ok((candle_core::CudaStorage::wrap_cuda_slice(y, s1.device.clone()), Shape::from((self.n_tok, d))))
    }

    fn bwd(&self, w: &Tensor, g: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let src = match &self.source {
            Source::Rows => g,
            Source::Table { table, .. } => table,
        };
        let (n_rows, d) = g.dims2()?;
        #[cfg(feature = "cuda")]
        if w.device().is_cuda() {
            let (dw, dg) = super::cuda::memory::ebag_backward(w, src, grad, self.read_idx(), &self.inv, n_rows, self.m)?;
            return Ok((Some(dw), Some(dg)));
        }
        let dy = contiguous_grad(grad)?;
        let (ws, wl) = w.storage_and_layout();
        let (ss, sl) = src.storage_and_layout();
        let (ds, dl) = dy.storage_and_layout();
        let (wv, dyv) = (storage_f32(&ws, wl)?, storage_f32(&ds, dl)?);
        let dw = bag_grad_w(storage_f32(&ss, sl)?, self.read_idx(), dyv, self.m, d);
        let dg = bag_grad_rows(wv, &self.inv, n_rows, dyv, self.m, d);
        drop((ws, ss, ds));
        Ok((Some(Tensor::from_vec(dw, w.shape().clone(), w.device())?), Some(Tensor::from_vec(dg, g.shape().clone(), g.device())?)))
    }
}

/// Checks shared by both entry points: f32 inputs, one index per weight, indices in range. Returns
/// (N, M) or `None` when there is nothing to compute.
fn check(w: &Tensor, idx: &[u32], n_rows: usize, what: &str) -> Result<Option<(usize, usize)>> {
    expect_f32("embedding_bag", "w", w)?;
    let n_tok = w.dims().first().copied().unwrap_or(0);
    if idx.len() != w.elem_count() {
        candle_core::bail!("embedding_bag: {} indices for {} weights {:?}", idx.len(), w.elem_count(), w.dims());
    }
    if let Some(&bad) = idx.iter().find(|&&u| u as usize >= n_rows) {
        candle_core::bail!("embedding_bag: index {bad} out of range for {n_rows} {what}");
    }
    Ok((w.elem_count() > 0).then(|| (n_tok, w.elem_count() / n_tok)))
}

/// y (N, D) with y[t] = Σ_m w[t, m] · rows[inv[t·M + m]], for w (N, ...) holding M weights per token,
/// rows (U, D) and `inv` (N·M) indices into rows.
pub fn embedding_bag(w: &Tensor, rows: &Tensor, inv: Arc<Vec<u32>>) -> Result<Tensor> {
    expect_f32("embedding_bag", "rows", rows)?;
    let (n_rows, d) = rows.dims2()?;
    match check(w, &inv, n_rows, "rows")? {
        Some((n_tok, m)) if d > 0 => w.contiguous()?.apply_op2(&rows.contiguous()?, EmbeddingBag { n_tok, m, inv, source: Source::Rows }),
        _ => Tensor::zeros((w.dims().first().copied().unwrap_or(0), d), candle_core::DType::F32, w.device()),
    }
}

/// [`embedding_bag`] reading the value rows in place from `table` (R, D): entry e reads
/// table[slots[e]], and the gradient of those rows arrives on `rows` (U, D) through `inv`
/// (rows[inv[e]] stands for table[slots[e]]). `rows` is only a gradient receiver: its values are
/// never read, so the caller need not gather them (a zero tensor does). The result equals
/// `embedding_bag(w, table[unique slots], inv)` bit for bit; the table gets no gradient.
pub fn embedding_bag_from_table(w: &Tensor, rows: &Tensor, inv: Arc<Vec<u32>>, table: &Tensor, slots: Arc<Vec<u32>>) -> Result<Tensor> {
    expect_f32("embedding_bag", "table", table)?;
    let (n_rows, d) = rows.dims2()?;
    let (n_table, dt) = table.dims2()?;
    if dt != d {
        candle_core::bail!("embedding_bag: table rows have {dt} values, the gradient rows {d}");
    }
    check(w, &inv, n_rows, "rows")?;
    match check(w, &slots, n_table, "table rows")? {
        Some((n_tok, m)) if d > 0 => {
            let source = Source::Table { table: table.detach().contiguous()?, slots };
            w.contiguous()?.apply_op2(rows, EmbeddingBag { n_tok, m, inv, source })
        }
        _ => Tensor::zeros((w.dims().first().copied().unwrap_or(0), d), candle_core::DType::F32, w.device()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::{assert_close, assert_grads, randn, GradCheckOpts};
    use candle_core::{Device, Var};

    fn indices(n: usize, u: usize, seed: u64) -> Arc<Vec<u32>> {
        // Every row used at least once (the memory layer's rows are unique touched slots), with repeats.
        let mut v: Vec<u32> = (0..n).map(|i| ((i as u64 * 7919 + seed * 31) % u as u64) as u32).collect();
        for (i, x) in v.iter_mut().take(u).enumerate() {
            *x = i as u32;
        }
        Arc::new(v)
    }

    #[test]
    fn reading_the_table_in_place_equals_the_gathered_rows_bit_for_bit() {
        let table = Var::from_tensor(&randn((40, 6), 70).unwrap()).unwrap();
        let w = Var::from_tensor(&randn((9, 2, 3), 71).unwrap()).unwrap();
        let slots: Vec<u32> = (0..54u64).map(|i| ((i * i * 7 + 3) % 40) as u32).collect();
        let (rows, inv) = crate::ops::slots::unique_inverse(&slots);
        assert!(rows.len() < slots.len() && rows.len() > 5, "want repeats and several rows: {}", rows.len());
        let inv = Arc::new(inv);
        let gathered =
            Var::from_tensor(&table.as_tensor().index_select(&Tensor::new(rows.as_slice(), &Device::Cpu).unwrap(), 0).unwrap()).unwrap();
        let leaf = Var::zeros((rows.len(), 6), candle_core::DType::F32, &Device::Cpu).unwrap();
        let r = randn((9, 6), 72).unwrap();
        let run = |y: Tensor, rows_var: &Var| {
            let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
            assert!(g.get(table.as_tensor()).is_none(), "the table must get no dense gradient");
            let bits = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            (bits(&y), bits(g.get(w.as_tensor()).unwrap()), bits(g.get(rows_var.as_tensor()).unwrap()))
        };
        let a = run(embedding_bag(w.as_tensor(), gathered.as_tensor(), inv.clone()).unwrap(), &gathered);
        let b = run(
            embedding_bag_from_table(w.as_tensor(), leaf.as_tensor(), inv.clone(), table.as_tensor(), Arc::new(slots.clone())).unwrap(),
            &leaf,
        );
        assert_eq!(a.0, b.0, "forward differs");
        assert_eq!(a.1, b.1, "dw differs");
        assert_eq!(a.2, b.2, "row gradients differ");
        // A slot past the table is refused by name.
        let mut bad = slots.clone();
        bad[5] = 40;
        let e = embedding_bag_from_table(w.as_tensor(), leaf.as_tensor(), inv, table.as_tensor(), Arc::new(bad)).unwrap_err().to_string();
        assert!(e.contains("out of range for 40 table rows"), "{e}");
    }

    /// y = W · onehot(inv) · G, from candle primitives.
    fn reference(w: &Tensor, g: &Tensor, inv: &[u32]) -> Tensor {
        let n = w.dim(0).unwrap();
        let m = w.elem_count() / n;
        let u = g.dim(0).unwrap();
        let mut onehot = vec![0f32; n * m * u];
        for (e, &r) in inv.iter().enumerate() {
            onehot[e * u + r as usize] = 1.0;
        }
        let oh = Tensor::from_vec(onehot, (n, m, u), &Device::Cpu).unwrap();
        // (N, 1, M) x (N, M, U) -> (N, 1, U) -> (N, U) x (U, D)
        let wm = w.reshape((n, 1, m)).unwrap().matmul(&oh).unwrap().reshape((n, u)).unwrap();
        wm.matmul(g).unwrap()
    }

    #[test]
    fn embedding_bag_finite_differences() {
        let w = randn((5, 2, 3), 60).unwrap();
        let g = randn((7, 4), 61).unwrap();
        let inv = indices(30, 7, 1);
        assert_grads(
            "embedding_bag",
            |a| embedding_bag(&a[0], &a[1], inv.clone()),
            &[w, g],
            &[0, 1],
            &GradCheckOpts { tol: 2e-3, ..Default::default() },
        );
    }

    #[test]
    fn embedding_bag_matches_reference() {
        let (n, m, u, d) = (90, 8, 50, 37);
        let w = randn((n, 2, m / 2), 62).unwrap();
        let g = randn((u, d), 63).unwrap();
        let inv = indices(n * m, u, 2);
        let gy = randn((n, d), 64).unwrap();
        let run = |f: &dyn Fn(&Tensor, &Tensor) -> Tensor| {
            let wv = Var::from_tensor(&w).unwrap();
            let gv = Var::from_tensor(&g).unwrap();
            let y = f(wv.as_tensor(), gv.as_tensor());
            let gr = (&y * &gy).unwrap().sum_all().unwrap().backward().unwrap();
            (y, gr.get(wv.as_tensor()).unwrap().clone(), gr.get(gv.as_tensor()).unwrap().clone())
        };
        let (y, dw, dg) = run(&|w, g| embedding_bag(w, g, inv.clone()).unwrap());
        let (ry, rdw, rdg) = run(&|w, g| reference(w, g, &inv));
        assert_close(&y, &ry, 1e-5, "embedding_bag forward");
        assert_close(&dw, &rdw, 1e-4, "embedding_bag dw");
        assert_close(&dg, &rdg, 1e-4, "embedding_bag dG");
    }

    #[test]
    fn embedding_bag_rejects_bad_indices() {
        let w = randn((2, 3), 1).unwrap();
        let g = randn((4, 5), 2).unwrap();
        assert!(embedding_bag(&w, &g, Arc::new(vec![0, 1, 2, 3, 4, 0])).is_err());
        assert!(embedding_bag(&w, &g, Arc::new(vec![0, 1, 2])).is_err());
        assert_eq!(embedding_bag(&w, &g, Arc::new(vec![0, 1, 2, 3, 3, 0])).unwrap().dims(), &[2, 5]);
    }
}
