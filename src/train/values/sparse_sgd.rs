//! Plain SGD on the value table's touched rows: the update sparse memory finetuning restricts to
//! the top-t rows (`train::sparse_memory`).

use super::{check_table, RowGrads, ValueBatch, ValueUpdate};
use crate::ops::access::{with_f32, with_f32_mut};
use crate::ops::kernels::{self, SendPtr};
use crate::train::optim::{read_step, step_tensor};
use anyhow::{ensure, Context, Result};
use candle_core::Tensor;
use rayon::prelude::*;
use std::collections::HashMap;

/// Chooses which of a step's touched rows a value update may change (sparse memory finetuning:
/// the top-t by TF-IDF of the batch's access counts; `sparse_memory::SelectedRows`).
pub trait RowSelect: Send {
    /// Rows to update; each must be among `batch.grads.rows`.
    fn select(&mut self, batch: &ValueBatch<'_>) -> Result<Vec<u32>>;
}

/// Plain SGD, p ← p − lr·g, on every row of the step's gradient; no state besides the step count.
/// Sparse memory finetuning restricts it to the top-t rows with a [`RowSelect`]
/// (`sparse_memory::SelectedRows`).
pub struct SparseSgd {
    /// Base learning rate (times the schedule's factor).
    pub lr: f64,
    t: usize,
}

impl SparseSgd {
    pub fn new(lr: f64) -> Self {
        Self { lr, t: 0 }
    }

    /// table[r] ← table[r] − lr·grad[r] for each r in `rows` (any order, duplicates count once);
    /// every row must have a gradient in `grads`. Other rows are not touched.
    pub fn step_rows(table: &Tensor, rows: &[u32], grads: &RowGrads, lr: f64) -> Result<()> {
        let (n, d) = table.dims2()?;
        check_table(table, n, d, "sparse SGD")?;
        ensure!(grads.dim() == d, "sparse SGD: gradient rows have dim {}, the table {d}", grads.dim());
        let mut rows = rows.to_vec();
        rows.sort_unstable();
        rows.dedup();
        let pos: Vec<(usize, usize)> = rows
            .iter()
            .map(|&r| {
                ensure!((r as usize) < n, "sparse SGD: row {r} out of range ({n} rows)");
                let k = grads.position(r).with_context(|| format!("sparse SGD: row {r} has no gradient this step"))?;
                Ok((r as usize, k))
            })
            .collect::<Result<_>>()?;
        let lr = lr as f32;
        #[cfg(feature = "cuda")]
        if table.device().is_cuda() {
            let pairs: Vec<(u32, u32)> = pos.iter().map(|&(r, k)| (r as u32, k as u32)).collect();
            return Ok(crate::ops::cuda::update::sgd_rows(table, &grads.grads, &pairs, lr)?);
        }
        with_f32(&grads.grads, |g| {
            with_f32_mut(table, |tab| {
                let base = SendPtr(tab.as_mut_ptr());
                pos.par_iter().for_each(|&(r, k)| {
                    // SAFETY: rows are distinct and inside the table, so tasks write disjoint slices.
                    let row = unsafe { std::slice::from_raw_parts_mut(base.ptr().add(r * d), d) };
                    kernels::axpy(row, -lr, &g[k * d..(k + 1) * d]);
                });
            })
        })??;
        Ok(())
    }
}

impl ValueUpdate for SparseSgd {
    fn step(&mut self, table: &Tensor, batch: &ValueBatch<'_>) -> Result<()> {
        Self::step_rows(table, &batch.grads.rows, batch.grads, self.lr * batch.lr_mult)?;
        self.t += 1;
        Ok(())
    }

    fn state_tensors(&self) -> Result<HashMap<String, Tensor>> {
        Ok([("value_sgd.step".to_string(), step_tensor(self.t)?)].into())
    }

    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        self.t = read_step(state, "value_sgd.step")?;
        Ok(())
    }

    fn name(&self) -> &'static str {
        "sgd"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::memory_trace::AccessCounts;
    use crate::train::values::fixtures::{batch, rg, table, vals};

    #[test]
    fn sparse_sgd_updates_only_chosen_rows() {
        let (n, d) = (50, 5);
        let tab = table(n, d);
        let before = vals(&tab);
        let g = rg(&[2, 7, 30, 49], d, 3);
        let gv = vals(&g.grads);
        SparseSgd::step_rows(&tab, &[30, 2, 30], &g, 2.0).unwrap();
        let after = vals(&tab);
        for r in 0..n {
            for i in 0..d {
                let x = r * d + i;
                match r {
                    2 => assert!((after[x] - (before[x] - 2.0 * gv[i])).abs() < 1e-6),
                    30 => assert!((after[x] - (before[x] - 2.0 * gv[2 * d + i])).abs() < 1e-6),
                    _ => assert_eq!(after[x].to_bits(), before[x].to_bits(), "row {r}"),
                }
            }
        }
        assert!(SparseSgd::step_rows(&tab, &[3], &g, 1.0).is_err(), "row without gradient");
        // As a ValueUpdate: every touched row, at lr × the schedule's factor.
        let mut sgd = SparseSgd::new(1.0);
        let access = AccessCounts::default();
        sgd.step(&tab, &batch(&g, &access, 0.5)).unwrap();
        let later = vals(&tab);
        assert!((later[49 * d] - (after[49 * d] - 0.5 * gv[3 * d])).abs() < 1e-6);
        assert_eq!(sgd.state_tensors().unwrap()["value_sgd.step"].to_vec1::<u32>().unwrap(), vec![1]);
    }
}
