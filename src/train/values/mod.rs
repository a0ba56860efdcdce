//! Sparse updates of the memory value table (`memory.values`, n_keys² × v_dim; docs/design.md,
//! "Gradients of the memory layer").
//!
//! The table's gradient is never dense. Each memory layer's forward gathers the rows it touched
//! into a small `Var` (see `model::memory`); after backward, [`RowGrads::from_traces`] collects
//! those gradients into one list of (row, gradient) with rows ascending, summing a row touched by
//! several layers, and the training loop averages it over micro-batches and clips it together
//! with the dense gradients. A [`ValueUpdate`], given to the loop, then changes those rows only,
//! in place on the table's storage and in parallel over rows:
//! - [`LazyAdamW`] (`lazy_adamw`): AdamW whose state exists only for rows that were ever touched (allocated on
//!   first touch, in pages of `PAGE_ROWS` rows); a row's moments and bias correction advance only
//!   on the steps that touch it, so untouched rows stay bit-identical. Variant `adamw` keeps m and
//!   v per element (state 2× the touched rows); `adamw-rowwise` keeps m per element and one v per
//!   row, the mean of g² over the row (state ~1×), for tables too large for 3× their size.
//! - [`SparseSgd`] (`sparse_sgd`): plain SGD on the touched rows (sparse memory finetuning restricts it, or a
//!   `LazyAdamW`, to the top-t rows by TF-IDF through a [`RowSelect`]: `sparse_memory`).
//!
//! Optimiser state is exported as named tensors (prefix `value_adamw.`, `value_adamw_rowwise.` or
//! `value_sgd.`, so it can share `optimizer.safetensors` with the dense optimiser's `adamw.*`)
//! and loads back bit-exactly.
//!
//! Correctness reference: `torch.optim.AdamW` applied row by row, each row with its own step
//! count (the tests recompute it in f64), and p ← p − lr·g for SGD.

#[cfg(feature = "cuda")]
pub mod device_rows;
pub mod lazy_adamw;
pub mod row_grads;
pub mod row_state;
pub mod sparse_sgd;

pub use lazy_adamw::{LazyAdamW, PAGE_ROWS};
pub use row_grads::RowGrads;
pub use row_state::RowState;
pub use sparse_sgd::{RowSelect, SparseSgd};

use super::optim::AdamWParams;
use crate::config::TrainConfig;
use crate::model::config::{LlamaConfig, ValueOptimizerKind};
use crate::model::memory_trace::AccessCounts;
use anyhow::{ensure, Result};
use candle_core::{DType, Tensor};
use std::collections::HashMap;

/// What a value update sees of one training step.
pub struct ValueBatch<'a> {
    /// The step's value gradient: mean over micro-batches, clipped with the dense gradients.
    pub grads: &'a RowGrads,
    /// Accesses per slot over the step's batches (tokens × heads × top-k, padding excluded).
    pub access: &'a AccessCounts,
    /// The schedule's factor for this step (scheduled lr / base lr).
    pub lr_mult: f64,
    /// 0-based index of the optimiser step.
    pub step: usize,
}

/// How the value table is updated from its row gradients: a method given to the training loop.
pub trait ValueUpdate: Send {
    /// Update rows of `table` (the `memory.values` Var's tensor, changed in place).
    fn step(&mut self, table: &Tensor, batch: &ValueBatch<'_>) -> Result<()>;
    /// The state as named tensors (copies), for `optimizer.safetensors`.
    fn state_tensors(&self) -> Result<HashMap<String, Tensor>>;
    /// Restore a state exported by `state_tensors` (other keys of the map are ignored).
    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()>;
    fn name(&self) -> &'static str;
}

/// The value update a model config asks for: lazy AdamW (`memory.value_optimizer`) at
/// `memory.value_lr` with the run's betas and eps, no weight decay (docs/design.md, "Measured settings"). `None` when
/// the model has no memory layer.
pub fn value_update_from_config(model: &LlamaConfig, train: &TrainConfig) -> Option<Box<dyn ValueUpdate>> {
    let m = model.memory.as_ref().filter(|m| !m.layers.is_empty())?;
    let rowwise = m.value_optimizer.resolve(m.n_slots()) == ValueOptimizerKind::AdamwRowwise;
    Some(Box::new(LazyAdamW::new(m.n_slots(), m.v_dim, m.value_lr, AdamWParams::from_config(train), 0.0, rowwise)))
}

fn check_table(table: &Tensor, n_rows: usize, dim: usize, who: &str) -> Result<()> {
    ensure!(table.dims() == [n_rows, dim], "{who}: value table has shape {:?}, the optimiser was made for ({n_rows}, {dim})", table.dims());
    ensure!(table.dtype() == DType::F32 && table.is_contiguous(), "{who}: value table must be a contiguous f32 tensor");
    ensure!(
        table.device().is_cpu() || cfg!(feature = "cuda") && table.device().is_cuda(),
        "{who}: value table on {:?} is not supported by this build",
        table.device()
    );
    Ok(())
}

#[cfg(test)]
pub(crate) mod fixtures {
    use super::{RowGrads, ValueBatch};
    use crate::model::memory_trace::AccessCounts;
    use candle_core::{Device, Tensor};

    pub fn table(n: usize, d: usize) -> Tensor {
        Tensor::from_vec((0..n * d).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect::<Vec<f32>>(), (n, d), &Device::Cpu).unwrap()
    }

    pub fn rg(rows: &[u32], d: usize, seed: usize) -> RowGrads {
        let data: Vec<f32> = (0..rows.len() * d).map(|i| (((i + 7 * seed) * 7919 % 997) as f32 - 498.0) / 1000.0).collect();
        RowGrads::new(rows.to_vec(), Tensor::from_vec(data, (rows.len(), d), &Device::Cpu).unwrap()).unwrap()
    }

    pub fn vals(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    pub fn batch<'a>(g: &'a RowGrads, access: &'a AccessCounts, lr_mult: f64) -> ValueBatch<'a> {
        ValueBatch { grads: g, access, lr_mult, step: 0 }
    }
}
