//! Lazy AdamW state of the memory value table on a GPU (`--features cuda`), for
//! `values::LazyAdamW` when the table lives there.
//!
//! The state of a touched row sits in one device tensor `state` (cap, width): m (dim) then v (dim,
//! or 1 for the row-wise variant) per state slot. A row gets the next free slot the first time it
//! is touched; `cap` grows by doubling (a copy on the device). Row → slot, each slot's row and its
//! step count stay on the host (4 bytes each, for the rows ever touched): the per-row bias
//! corrections are computed there in f64, as on the CPU, and uploaded with the step's rows. The
//! update itself is two kernels (`ops::cuda::update::adam_rows`) writing into the state and into
//! the table's storage in place.
//!
//! Correctness reference: the CPU `LazyAdamW` (tests/cuda.rs runs both on the same gradients).

use super::RowState;
use crate::ops::cuda::update::{adam_rows, AdamConsts};
use anyhow::{ensure, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;

pub struct DeviceRowState {
    dim: usize,
    rowwise: bool,
    /// (cap, width) on the device; None until the first row is touched.
    state: Option<Tensor>,
    slot_of: HashMap<u32, u32>,
    /// Table row of each slot.
    rows: Vec<u32>,
    /// Steps taken by each slot's row.
    steps: Vec<u32>,
}

impl DeviceRowState {
    fn width(dim: usize, rowwise: bool) -> usize {
        if rowwise {
            dim + 1
        } else {
            2 * dim
        }
    }

    /// State holding `rows` (ascending) with their steps and moments, uploaded to `device`.
    pub fn from_rows(dim: usize, rowwise: bool, RowState { rows, steps, m, v }: RowState, device: &Device) -> Result<Self> {
        let n = rows.len();
        let vd = if rowwise { 1 } else { dim };
        let width = Self::width(dim, rowwise);
        let state = if n == 0 {
            None
        } else {
            let mut host = Vec::with_capacity(n * width);
            for k in 0..n {
                host.extend_from_slice(&m[k * dim..(k + 1) * dim]);
                host.extend_from_slice(&v[k * vd..(k + 1) * vd]);
            }
            Some(Tensor::from_vec(host, (n, width), device)?)
        };
        let slot_of = rows.iter().enumerate().map(|(s, &r)| (r, s as u32)).collect();
        Ok(Self { dim, rowwise, state, slot_of, rows, steps })
    }

    /// Rows with state.
    pub fn touched_rows(&self) -> usize {
        self.rows.len()
    }

    /// Bytes of device state plus host bookkeeping.
    pub fn state_bytes(&self) -> usize {
        self.state.as_ref().map_or(0, |s| s.elem_count() * 4) + self.rows.len() * 12
    }

    /// One step on the rows of `grads` (ascending `rows`, (K, dim) on the device), in place on `table`.
    /// `coef(t)` gives (step_size, inv_sqrt_bc2) for a row's t-th step.
    pub fn step(&mut self, table: &Tensor, rows: &[u32], grads: &Tensor, coef: impl Fn(u32) -> (f32, f32), k: AdamConsts) -> Result<()> {
        let mut meta = Vec::with_capacity(rows.len());
        let mut coefs = Vec::with_capacity(rows.len());
        for &r in rows {
            let slot = *self.slot_of.entry(r).or_insert_with(|| {
                self.rows.push(r);
                self.steps.push(0);
                (self.rows.len() - 1) as u32
            });
            self.steps[slot as usize] += 1;
            meta.push((r, slot));
            coefs.push(coef(self.steps[slot as usize]));
        }
        self.reserve(self.rows.len(), table.device())?;
        let Some(state) = &self.state else { return Ok(()) };
        adam_rows(table, state, grads, &meta, &coefs, self.rowwise, k)?;
        Ok(())
    }

    /// Grow the state to at least `n` slots (doubling; new slots are zero).
    fn reserve(&mut self, n: usize, device: &Device) -> Result<()> {
        let width = Self::width(self.dim, self.rowwise);
        let cap = self.state.as_ref().map_or(0, |s| s.dims()[0]);
        if n <= cap {
            return Ok(());
        }
        let new_cap = n.max(2 * cap).max(1024);
        let fresh = Tensor::zeros((new_cap - cap, width), DType::F32, device)?;
        self.state = Some(match &self.state {
            None => fresh,
            Some(old) => Tensor::cat(&[old, &fresh], 0)?,
        });
        Ok(())
    }

    /// The state of every touched row, rows ascending, copied to the host.
    pub fn export(&self) -> Result<RowState> {
        let (dim, vd) = (self.dim, if self.rowwise { 1 } else { self.dim });
        let mut order: Vec<(u32, u32)> = self.rows.iter().enumerate().map(|(s, &r)| (r, s as u32)).collect();
        order.sort_unstable();
        let rows: Vec<u32> = order.iter().map(|o| o.0).collect();
        let steps = order.iter().map(|o| self.steps[o.1 as usize]).collect();
        let (mut m, mut v) = (Vec::with_capacity(rows.len() * dim), Vec::with_capacity(rows.len() * vd));
        if let Some(state) = &self.state {
            let slots: Vec<u32> = order.iter().map(|o| o.1).collect();
            let idx = Tensor::from_vec(slots, order.len(), state.device())?;
            let host: Vec<f32> = state.index_select(&idx, 0)?.flatten_all()?.to_vec1()?;
            let width = Self::width(dim, self.rowwise);
            ensure!(host.len() == order.len() * width, "device row state: unexpected size");
            for row in host.chunks_exact(width) {
                m.extend_from_slice(&row[..dim]);
                v.extend_from_slice(&row[dim..dim + vd]);
            }
        }
        Ok(RowState { rows, steps, m, v })
    }
}
