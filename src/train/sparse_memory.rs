//! Sparse memory finetuning's value update (docs/design.md, "Sparse memory finetuning"): each
//! step, a [`RowSelect`] picks the top-t of the rows the batch read (by TF-IDF against the
//! background index, or an ablation), and an update (`finetune.sparse_memory.optimizer`: SGD, or
//! Adam with state for the rows it has updated) changes those rows only. Every other row of the
//! table, and every other weight of the model, stays bit-identical.

use super::optim::AdamWParams;
use super::tfidf::{BackgroundIndex, TfIdfSelect};
use super::values::{LazyAdamW, RowSelect, SparseSgd, ValueBatch, ValueUpdate};
use crate::config::{Ranking, SparseMemoryConfig, SparseOptimizer};
use anyhow::Result;
use candle_core::Tensor;
use std::collections::HashMap;

/// An update restricted to the rows `select` picks: the other touched rows (and any optimiser
/// state of theirs) are left as they are.
pub struct SelectedRows {
    pub select: Box<dyn RowSelect>,
    pub update: Box<dyn ValueUpdate>,
}

impl ValueUpdate for SelectedRows {
    fn step(&mut self, table: &Tensor, batch: &ValueBatch<'_>) -> Result<()> {
        let rows = self.select.select(batch)?;
        let grads = batch.grads.subset(&rows)?;
        self.update.step(table, &ValueBatch { grads: &grads, ..*batch })
    }

    fn state_tensors(&self) -> Result<HashMap<String, Tensor>> {
        self.update.state_tensors()
    }

    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        self.update.load_state(state)
    }

    fn name(&self) -> &'static str {
        self.update.name()
    }
}

/// The value update of `[finetune.sparse_memory]` for a table of `n_rows` × `dim`; Adam takes
/// `hp` (`finetune.beta1/beta2/eps`) and no weight decay. `background` is needed for
/// `ranking = "tfidf"`.
pub fn sparse_memory_update(
    sm: &SparseMemoryConfig,
    n_rows: usize,
    dim: usize,
    hp: AdamWParams,
    background: Option<BackgroundIndex>,
    seed: u64,
) -> Result<SelectedRows> {
    // TfIdfSelect names the missing background index for ranking = "tfidf".
    let index = if sm.ranking == Ranking::Tfidf { background } else { None };
    let select = Box::new(TfIdfSelect::new(sm.ranking, sm.top_t.0, index, seed)?);
    let update: Box<dyn ValueUpdate> = match sm.optimizer {
        SparseOptimizer::Sgd => Box::new(SparseSgd::new(sm.lr)),
        SparseOptimizer::Adam => Box::new(LazyAdamW::new(n_rows, dim, sm.lr, hp, 0.0, false)),
    };
    Ok(SelectedRows { select, update })
}
