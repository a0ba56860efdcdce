//! The value table's gradient on the rows a step touched, collected from the memory layers'
//! traces after backward (see the module doc of `train::values`).

use crate::model::memory_trace::MemoryTrace;
use crate::ops::access::{with_f32, with_f32_mut};
use crate::ops::kernels::rows_per_task;
use anyhow::{bail, ensure, Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

/// One row of a merge plan: (row, its position in self, its position in other).
type MergeEntry = (u32, Option<usize>, Option<usize>);

/// Elements per rayon task when copying or reducing gradient rows.
const TASK_ELEMS: usize = 32 * 1024;

/// The gradient of the value table on the rows it has: `grads[i]` is d loss / d table[rows[i]].
#[derive(Clone, Debug)]
pub struct RowGrads {
    /// Table rows, strictly ascending.
    pub rows: Vec<u32>,
    /// (rows.len(), dim) contiguous f32. May share storage with the `GradStore` it came from.
    pub grads: Tensor,
}

impl RowGrads {
    pub fn new(rows: Vec<u32>, grads: Tensor) -> Result<Self> {
        ensure!(rows.windows(2).all(|w| w[0] < w[1]), "row gradients: rows must be strictly ascending");
        let (n, _) = grads.dims2().context("row gradients must be (rows, dim)")?;
        ensure!(n == rows.len(), "row gradients: {} rows but {n} gradient rows", rows.len());
        ensure!(grads.dtype() == DType::F32, "row gradients must be f32");
        Ok(Self { rows, grads: grads.contiguous()? })
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn dim(&self) -> usize {
        self.grads.dims()[1]
    }

    /// Position of `row` in `rows`.
    pub fn position(&self, row: u32) -> Option<usize> {
        self.rows.binary_search(&row).ok()
    }

    /// The gradients of `rows` only (any order, duplicates count once); each must be present.
    pub fn subset(&self, rows: &[u32]) -> Result<RowGrads> {
        let mut rows = rows.to_vec();
        rows.sort_unstable();
        rows.dedup();
        let keep: Vec<usize> = rows
            .iter()
            .map(|&r| self.position(r).with_context(|| format!("row gradients: row {r} has no gradient this step")))
            .collect::<Result<_>>()?;
        let d = self.dim();
        let grads = if self.grads.device().is_cpu() {
            Tensor::from_vec(with_f32(&self.grads, |g| gather_rows(g, d, &keep))?, (keep.len(), d), &Device::Cpu)?
        } else {
            let idx = Tensor::from_vec(keep.iter().map(|&i| i as u32).collect::<Vec<_>>(), keep.len(), self.grads.device())?;
            self.grads.index_select(&idx, 0)?
        };
        RowGrads::new(rows, grads)
    }

    /// The value-table gradient of one forward/backward: each trace's gathered-rows gradient,
    /// restricted to rows read by at least one real (non-padding) token, summed over layers in
    /// layer order. `None` when no trace received a gradient.
    pub fn from_traces(traces: &[MemoryTrace], grads: &GradStore) -> Result<Option<Self>> {
        let mut out: Option<RowGrads> = None;
        for tr in traces {
            let Some(g) = grads.get(tr.values.as_tensor()) else { continue };
            let g = g.to_dtype(DType::F32)?.contiguous()?;
            let all = RowGrads::new(tr.rows.to_vec(), g)?;
            let part = if tr.token_mask.is_none() {
                all
            } else {
                // Rows that only padding positions read carry no gradient and must not count as
                // touched (an AdamW row update with g = 0 would still move the row).
                let read: Vec<u32> = tr.row_access_counts().iter().zip(&all.rows).filter(|(&c, _)| c > 0).map(|(_, &r)| r).collect();
                all.subset(&read)?
            };
            out = Some(match out {
                None => part,
                Some(acc) => acc.merge(&part)?,
            });
        }
        Ok(out)
    }

    /// Union of the rows of `self` and `other`, gradients summed where both have the row
    /// (self's first: a fixed order).
    pub fn merge(&self, other: &RowGrads) -> Result<RowGrads> {
        let d = self.dim();
        ensure!(other.dim() == d, "row gradients of dims {d} and {} cannot be merged", other.dim());
        // Sources of each output row: (row, index in self, index in other).
        let mut plan: Vec<MergeEntry> = Vec::with_capacity(self.len() + other.len());
        let (a, b) = (&self.rows, &other.rows);
        let (mut i, mut j) = (0, 0);
        while i < a.len() || j < b.len() {
            if j == b.len() || (i < a.len() && a[i] < b[j]) {
                plan.push((a[i], Some(i), None));
                i += 1;
            } else if i == a.len() || b[j] < a[i] {
                plan.push((b[j], None, Some(j)));
                j += 1;
            } else {
                plan.push((a[i], Some(i), Some(j)));
                i += 1;
                j += 1;
            }
        }
        if !self.grads.device().is_cpu() {
            return self.merge_on_device(&plan, other);
        }
        let data = with_f32(&self.grads, |ga| {
            with_f32(&other.grads, |gb| {
                let mut out = vec![0f32; plan.len() * d];
                let rpt = rows_per_task(d, TASK_ELEMS);
                out.par_chunks_mut(rpt * d).zip(plan.par_chunks(rpt)).for_each(|(o, p)| {
                    for (o, &(_, ia, ib)) in o.chunks_exact_mut(d).zip(p) {
                        match (ia, ib) {
                            (Some(x), Some(y)) => {
                                for ((o, &u), &v) in o.iter_mut().zip(&ga[x * d..(x + 1) * d]).zip(&gb[y * d..(y + 1) * d]) {
                                    *o = u + v;
                                }
                            }
                            (Some(x), None) => o.copy_from_slice(&ga[x * d..(x + 1) * d]),
                            (None, Some(y)) => o.copy_from_slice(&gb[y * d..(y + 1) * d]),
                            (None, None) => unreachable!("every planned row has a source"),
                        }
                    }
                });
                out
            })
        })??;
        let rows: Vec<u32> = plan.iter().map(|p| p.0).collect();
        let n = rows.len();
        RowGrads::new(rows, Tensor::from_vec(data, (n, d), &Device::Cpu)?)
    }

    /// `merge` with the gradients on a GPU: each side's rows added into a zeroed result at their
    /// planned positions (index_add on the device; self's first, as on the CPU).
    fn merge_on_device(&self, plan: &[MergeEntry], other: &RowGrads) -> Result<RowGrads> {
        let dev = self.grads.device();
        let at = |pick: fn(&MergeEntry) -> Option<usize>, n: usize| -> Result<Tensor> {
            let mut ids = vec![0u32; n];
            for (p, e) in plan.iter().enumerate() {
                if let Some(i) = pick(e) {
                    ids[i] = p as u32;
                }
            }
            Ok(Tensor::from_vec(ids, n, dev)?)
        };
        let out = Tensor::zeros((plan.len(), self.dim()), DType::F32, dev)?
            .index_add(&at(|e| e.1, self.len())?, &self.grads, 0)?
            .index_add(&at(|e| e.2, other.len())?, &other.grads.to_device(dev)?, 0)?;
        RowGrads::new(plan.iter().map(|p| p.0).collect(), out)
    }

    /// Multiply every gradient by `s`, in place (also seen by a `GradStore` sharing the storage).
    pub fn scale(&self, s: f32) -> Result<()> {
        if !self.grads.device().is_cpu() {
            return scale_on_device(&self.grads, s);
        }
        Ok(with_f32_mut(&self.grads, |g| g.par_chunks_mut(TASK_ELEMS).for_each(|c| c.iter_mut().for_each(|x| *x *= s)))?)
    }

    /// Σ g² in f64 (chunk partial sums added in order: the same bits for any thread count).
    pub fn sum_squares(&self) -> Result<f64> {
        if !self.grads.device().is_cpu() {
            // On a GPU: one f64 reduction there (its order is candle's, not the chunk order above).
            return Ok(self.grads.to_dtype(DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>()?);
        }
        let parts: Vec<f64> =
            with_f32(&self.grads, |g| g.par_chunks(TASK_ELEMS).map(|c| c.iter().map(|&x| x as f64 * x as f64).sum::<f64>()).collect())?;
        Ok(parts.iter().sum())
    }
}

/// x ← s·x in place on a GPU tensor (a kernel: other tensors sharing the storage see it).
pub(crate) fn scale_on_device(x: &Tensor, s: f32) -> Result<()> {
    #[cfg(feature = "cuda")]
    if x.device().is_cuda() {
        return Ok(crate::ops::cuda::scale_inplace(x, s)?);
    }
    let _ = s;
    bail!("in-place scaling of a tensor on {:?} needs the cuda feature", x.device())
}

/// Rows `keep` of a (R, d) buffer.
fn gather_rows(src: &[f32], d: usize, keep: &[usize]) -> Vec<f32> {
    let mut out = vec![0f32; keep.len() * d];
    if d > 0 {
        out.par_chunks_mut(d).zip(keep.par_iter()).for_each(|(o, &i)| o.copy_from_slice(&src[i * d..(i + 1) * d]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::values::fixtures::{rg, vals};

    #[test]
    fn merge_sums_shared_rows_and_scales() {
        let a = rg(&[1, 4, 9], 3, 1);
        let b = rg(&[0, 4, 10], 3, 2);
        let m = a.merge(&b).unwrap();
        assert_eq!(m.rows, vec![0, 1, 4, 9, 10]);
        let (va, vb, vm) = (vals(&a.grads), vals(&b.grads), vals(&m.grads));
        assert_eq!(&vm[0..3], &vb[0..3]);
        assert_eq!(&vm[3..6], &va[0..3]);
        for i in 0..3 {
            assert_eq!(vm[6 + i], va[3 + i] + vb[3 + i]);
        }
        let sq: f64 = vm.iter().map(|&x| x as f64 * x as f64).sum();
        assert!((m.sum_squares().unwrap() - sq).abs() < 1e-9);
        m.scale(2.0).unwrap();
        assert_eq!(vals(&m.grads)[0], 2.0 * vb[0]);
        assert!(RowGrads::new(vec![3, 3], Tensor::zeros((2, 1), DType::F32, &Device::Cpu).unwrap()).is_err());
    }
}
