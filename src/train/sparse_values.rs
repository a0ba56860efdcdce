//! Sparse updates of the memory value table (`memory.values`, n_keys² × v_dim; DESIGN.md §1
//! "Gradients").
//!
//! The table's gradient is never dense. Each memory layer's forward gathers the rows it touched
//! into a small `Var` (see `model::memory`); after backward, [`RowGrads::from_traces`] collects
//! those gradients into one list of (row, gradient) with rows ascending, summing a row touched by
//! several layers, and the training loop averages it over micro-batches and clips it together
//! with the dense gradients. A [`ValueUpdate`], given to the loop, then changes those rows only,
//! in place on the table's storage and in parallel over rows:
//! - [`LazyAdamW`]: AdamW whose state exists only for rows that were ever touched (allocated on
//!   first touch, in pages of `PAGE_ROWS` rows); a row's moments and bias correction advance only
//!   on the steps that touch it, so untouched rows stay bit-identical. Variant `adamw` keeps m and
//!   v per element (state 2× the touched rows); `adamw-rowwise` keeps m per element and one v per
//!   row, the mean of g² over the row (state ~1×), for tables too large for 3× their size.
//! - [`SparseSgd`]: plain SGD on the touched rows (sparse memory finetuning restricts it, or a
//!   `LazyAdamW`, to the top-t rows by TF-IDF through a [`RowSelect`]: `sparse_memory`).
//!
//! Optimiser state is exported as named tensors (prefix `value_adamw.`, `value_adamw_rowwise.` or
//! `value_sgd.`, so it can share `optimizer.safetensors` with the dense optimiser's `adamw.*`)
//! and loads back bit-exactly.
//!
//! Correctness reference: `torch.optim.AdamW` applied row by row, each row with its own step
//! count (the tests recompute it in f64), and p ← p − lr·g for SGD.

use super::optim::{read_step, step_tensor, AdamWKernel, AdamWParams};
use crate::config::TrainConfig;
use crate::model::config::{LlamaConfig, ValueOptimizerKind};
use crate::model::memory::{AccessCounts, MemoryTrace};
use crate::ops::access::{with_f32, with_f32_mut};
use crate::ops::kernels::{self, rows_per_task, SendPtr};
use anyhow::{bail, ensure, Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;
use std::collections::HashMap;

/// Rows per lazily allocated page of optimiser state.
pub const PAGE_ROWS: usize = 32;

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
        let keep: Vec<usize> = rows.iter().map(|&r| self.position(r).with_context(|| format!("row gradients: row {r} has no gradient this step"))).collect::<Result<_>>()?;
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
        let mut plan: Vec<(u32, Option<usize>, Option<usize>)> = Vec::with_capacity(self.len() + other.len());
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
    fn merge_on_device(&self, plan: &[(u32, Option<usize>, Option<usize>)], other: &RowGrads) -> Result<RowGrads> {
        let dev = self.grads.device();
        let at = |pick: fn(&(u32, Option<usize>, Option<usize>)) -> Option<usize>, n: usize| -> Result<Tensor> {
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

/// The state of a lazy AdamW's touched rows, rows ascending: (rows, steps, m (n·dim), v (n·dim or n)).
pub type ExportedRows = (Vec<u32>, Vec<u32>, Vec<f32>, Vec<f32>);

/// Rows `keep` of a (R, d) buffer.
fn gather_rows(src: &[f32], d: usize, keep: &[usize]) -> Vec<f32> {
    let mut out = vec![0f32; keep.len() * d];
    if d > 0 {
        out.par_chunks_mut(d).zip(keep.par_iter()).for_each(|(o, &i)| o.copy_from_slice(&src[i * d..(i + 1) * d]));
    }
    out
}

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
/// `memory.value_lr` with the run's betas and eps, no weight decay (DESIGN.md §4b). `None` when
/// the model has no memory layer.
pub fn value_update_from_config(model: &LlamaConfig, train: &TrainConfig) -> Option<Box<dyn ValueUpdate>> {
    let m = model.memory.as_ref().filter(|m| !m.layers.is_empty())?;
    let rowwise = m.value_optimizer.resolve(m.n_slots()) == ValueOptimizerKind::AdamwRowwise;
    Some(Box::new(LazyAdamW::new(m.n_slots(), m.v_dim, m.value_lr, AdamWParams::from_config(train), 0.0, rowwise)))
}

struct Page {
    /// Steps taken by each row (0: never touched).
    steps: Vec<u32>,
    m: Vec<f32>,
    /// Per element (PAGE_ROWS·dim) or per row (PAGE_ROWS).
    v: Vec<f32>,
}

impl Page {
    fn new(dim: usize, rowwise: bool) -> Self {
        Self { steps: vec![0; PAGE_ROWS], m: vec![0.0; PAGE_ROWS * dim], v: vec![0.0; if rowwise { PAGE_ROWS } else { PAGE_ROWS * dim }] }
    }
}

/// Lazy AdamW over the rows of the value table (see the module doc). Each row is its own AdamW
/// with its own step count t_r: m ← β1·m + (1−β1)·g, v ← β2·v + (1−β2)·g² (row-wise: the row mean of
/// g²), p ← p·(1 − lr·wd) − lr/(1−β1^t_r) · m / (√v/√(1−β2^t_r) + ε), at lr = base lr × the schedule's
/// factor. Per-row bias correction: a row first touched late in training takes a full-size first
/// step, as a fresh AdamW would, rather than one shrunk by a global step count.
pub struct LazyAdamW {
    lr: f64,
    hp: AdamWParams,
    weight_decay: f64,
    rowwise: bool,
    n_rows: usize,
    dim: usize,
    /// Steps taken (with any rows).
    t: usize,
    pages: Vec<Option<Box<Page>>>,
    /// The state on a GPU, once a step ran there (the pages are then empty).
    #[cfg(feature = "cuda")]
    device: Option<super::device_rows::DeviceRowState>,
}

impl LazyAdamW {
    pub fn new(n_rows: usize, dim: usize, lr: f64, hp: AdamWParams, weight_decay: f64, rowwise: bool) -> Self {
        Self {
            lr,
            hp,
            weight_decay,
            rowwise,
            n_rows,
            dim,
            t: 0,
            pages: (0..n_rows.div_ceil(PAGE_ROWS)).map(|_| None).collect(),
            #[cfg(feature = "cuda")]
            device: None,
        }
    }

    fn prefix(&self) -> &'static str {
        if self.rowwise {
            "value_adamw_rowwise"
        } else {
            "value_adamw"
        }
    }

    /// Rows that have optimiser state.
    pub fn touched_rows(&self) -> usize {
        #[cfg(feature = "cuda")]
        if let Some(d) = &self.device {
            return d.touched_rows();
        }
        self.pages.iter().flatten().map(|p| p.steps.iter().filter(|&&s| s > 0).count()).sum()
    }

    /// Bytes held by the state (allocated pages).
    pub fn state_bytes(&self) -> usize {
        #[cfg(feature = "cuda")]
        if let Some(d) = &self.device {
            return d.state_bytes();
        }
        self.pages.iter().flatten().map(|p| 4 * (p.steps.len() + p.m.len() + p.v.len())).sum()
    }
}

impl LazyAdamW {
    /// The pages' state of every touched row, rows ascending.
    fn export_pages(&self) -> ExportedRows {
        let (mut rows, mut steps, mut m, mut v) = (vec![], vec![], vec![], vec![]);
        let vd = if self.rowwise { 1 } else { self.dim };
        for (p, page) in self.pages.iter().enumerate() {
            let Some(page) = page else { continue };
            for (r, &s) in page.steps.iter().enumerate().filter(|(_, &s)| s > 0) {
                rows.push((p * PAGE_ROWS + r) as u32);
                steps.push(s);
                m.extend_from_slice(&page.m[r * self.dim..(r + 1) * self.dim]);
                v.extend_from_slice(&page.v[r * vd..(r + 1) * vd]);
            }
        }
        (rows, steps, m, v)
    }

    /// Write exported rows into the pages (allocating the pages they fall in).
    fn import_pages(&mut self, (rows, steps, m, v): ExportedRows) -> Result<()> {
        let vd = if self.rowwise { 1 } else { self.dim };
        ensure!(m.len() == rows.len() * self.dim && v.len() == rows.len() * vd && steps.len() == rows.len(), "lazy AdamW: inconsistent row state");
        for (k, (&row, &s)) in rows.iter().zip(&steps).enumerate() {
            let (p, r) = (row as usize / PAGE_ROWS, row as usize % PAGE_ROWS);
            let page = self.pages[p].get_or_insert_with(|| Box::new(Page::new(self.dim, self.rowwise)));
            page.steps[r] = s;
            page.m[r * self.dim..(r + 1) * self.dim].copy_from_slice(&m[k * self.dim..(k + 1) * self.dim]);
            page.v[r * vd..(r + 1) * vd].copy_from_slice(&v[k * vd..(k + 1) * vd]);
        }
        Ok(())
    }
}

/// (page, range of positions in `rows`) for ascending `rows`.
fn page_groups(rows: &[u32]) -> Vec<(usize, std::ops::Range<usize>)> {
    let mut out = vec![];
    let mut i = 0;
    while i < rows.len() {
        let p = rows[i] as usize / PAGE_ROWS;
        let mut j = i + 1;
        while j < rows.len() && rows[j] as usize / PAGE_ROWS == p {
            j += 1;
        }
        out.push((p, i..j));
        i = j;
    }
    out
}

fn check_table(table: &Tensor, n_rows: usize, dim: usize, who: &str) -> Result<()> {
    ensure!(
        table.dims() == [n_rows, dim],
        "{who}: value table has shape {:?}, the optimiser was made for ({n_rows}, {dim})",
        table.dims()
    );
    ensure!(table.dtype() == DType::F32 && table.is_contiguous(), "{who}: value table must be a contiguous f32 tensor");
    ensure!(table.device().is_cpu() || cfg!(feature = "cuda") && table.device().is_cuda(), "{who}: value table on {:?} is not supported by this build", table.device());
    Ok(())
}

impl ValueUpdate for LazyAdamW {
    fn step(&mut self, table: &Tensor, batch: &ValueBatch<'_>) -> Result<()> {
        check_table(table, self.n_rows, self.dim, "lazy AdamW")?;
        let g = batch.grads;
        ensure!(g.dim() == self.dim, "lazy AdamW: gradient rows have dim {}, the table {}", g.dim(), self.dim);
        if let Some(&last) = g.rows.last() {
            ensure!((last as usize) < self.n_rows, "lazy AdamW: row {last} out of range ({} rows)", self.n_rows);
        }
        self.t += 1;
        let lr = self.lr * batch.lr_mult;
        let AdamWParams { beta1, beta2, eps } = self.hp;
        let (dim, rowwise) = (self.dim, self.rowwise);
        let decay = (1.0 - lr * self.weight_decay) as f32;
        // Scalars of a row that has taken t steps, computed in f64 and rounded once, as the dense AdamW.
        let kernel = move |t: u32| AdamWKernel {
            b1: beta1 as f32,
            b2: beta2 as f32,
            one_m_b1: (1.0 - beta1) as f32,
            one_m_b2: (1.0 - beta2) as f32,
            decay,
            step_size: (lr / (1.0 - beta1.powi(t as i32))) as f32,
            inv_sqrt_bc2: (1.0 / (1.0 - beta2.powi(t as i32)).sqrt()) as f32,
            eps: eps as f32,
        };
        #[cfg(feature = "cuda")]
        if table.device().is_cuda() {
            if self.device.is_none() {
                // First step on the GPU: move the state there (loaded from a checkpoint, or empty).
                let rows = self.export_pages();
                self.device = Some(super::device_rows::DeviceRowState::from_rows(dim, rowwise, rows, table.device())?);
                self.pages.iter_mut().for_each(|p| *p = None);
            }
            let consts = crate::ops::cuda::update::AdamConsts {
                b1: beta1 as f32,
                b2: beta2 as f32,
                one_m_b1: (1.0 - beta1) as f32,
                one_m_b2: (1.0 - beta2) as f32,
                decay,
                eps: eps as f32,
            };
            let state = self.device.as_mut().expect("device state was just made");
            return state.step(table, &g.rows, &g.grads, |t| (kernel(t).step_size, kernel(t).inv_sqrt_bc2), consts);
        }
        #[cfg(feature = "cuda")]
        if let Some(d) = self.device.take() {
            // Back on the CPU after GPU steps: the state returns to the pages.
            self.import_pages(d.export()?)?;
        }
        let groups = page_groups(&g.rows);
        let pages = &mut self.pages;
        with_f32(&g.grads, |gd| {
            with_f32_mut(table, |tab| {
                // Pair each touched page of the table with its state; pages are disjoint, so the
                // pairs can be updated in parallel.
                let mut work = Vec::with_capacity(groups.len());
                let mut tab_pages = tab.chunks_mut(PAGE_ROWS * dim);
                let mut st_pages = pages.iter_mut();
                let mut next = 0;
                for (p, range) in &groups {
                    let tp = tab_pages.nth(p - next).expect("page inside the table");
                    let sp = st_pages.nth(p - next).expect("page inside the state");
                    next = p + 1;
                    work.push((*p, tp, sp, range.clone()));
                }
                work.into_par_iter().for_each(|(p, tp, sp, range)| {
                    let page = sp.get_or_insert_with(|| Box::new(Page::new(dim, rowwise)));
                    for k in range {
                        let r = g.rows[k] as usize - p * PAGE_ROWS;
                        page.steps[r] += 1;
                        let kr = kernel(page.steps[r]);
                        let (prow, grow) = (&mut tp[r * dim..(r + 1) * dim], &gd[k * dim..(k + 1) * dim]);
                        let mrow = &mut page.m[r * dim..(r + 1) * dim];
                        if rowwise {
                            rowwise_update(&kr, prow, mrow, &mut page.v[r], grow);
                        } else {
                            kr.run(prow, mrow, &mut page.v[r * dim..(r + 1) * dim], grow);
                        }
                    }
                });
            })
        })??;
        Ok(())
    }

    fn state_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let pre = self.prefix();
        let mut out = HashMap::new();
        out.insert(format!("{pre}.step"), step_tensor(self.t)?);
        #[cfg(feature = "cuda")]
        let (rows, steps, m, v) = match &self.device {
            Some(d) => d.export()?,
            None => self.export_pages(),
        };
        #[cfg(not(feature = "cuda"))]
        let (rows, steps, m, v) = self.export_pages();
        // No rows yet: only the step (empty tensors are left out of the file).
        if !rows.is_empty() {
            let n = rows.len();
            out.insert(format!("{pre}.rows"), Tensor::from_vec(rows, n, &Device::Cpu)?);
            out.insert(format!("{pre}.row_steps"), Tensor::from_vec(steps, n, &Device::Cpu)?);
            out.insert(format!("{pre}.m"), Tensor::from_vec(m, (n, self.dim), &Device::Cpu)?);
            let v = if self.rowwise { Tensor::from_vec(v, n, &Device::Cpu)? } else { Tensor::from_vec(v, (n, self.dim), &Device::Cpu)? };
            out.insert(format!("{pre}.v"), v);
        }
        Ok(out)
    }

    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        let pre = self.prefix();
        let other = if self.rowwise { "value_adamw" } else { "value_adamw_rowwise" };
        if !state.contains_key(&format!("{pre}.step")) && state.contains_key(&format!("{other}.step")) {
            bail!("optimizer state holds `{other}.*` (value optimiser {other}), but this run's value optimiser is {pre}: set model.memory.value_optimizer to match");
        }
        let t = read_step(state, &format!("{pre}.step"))?;
        let mut loaded = None;
        if let Some(rows) = state.get(&format!("{pre}.rows")) {
            let get = |k: &str| state.get(&format!("{pre}.{k}")).with_context(|| format!("optimizer state has `{pre}.rows` but no `{pre}.{k}`"));
            let rows: Vec<u32> = rows.to_vec1().with_context(|| format!("`{pre}.rows` must be a 1-D u32 tensor"))?;
            let steps: Vec<u32> = get("row_steps")?.to_vec1().with_context(|| format!("`{pre}.row_steps` must be a 1-D u32 tensor"))?;
            let n = rows.len();
            let (mt, vt) = (get("m")?, get("v")?);
            ensure!(mt.dims() == [n, self.dim], "optimizer state `{pre}.m` has shape {:?}, expected ({n}, {})", mt.dims(), self.dim);
            let v_ok = if self.rowwise { vt.dims() == [n] } else { vt.dims() == [n, self.dim] };
            ensure!(v_ok, "optimizer state `{pre}.v` has shape {:?} for {n} rows of dim {}", vt.dims(), self.dim);
            ensure!(steps.len() == n, "optimizer state `{pre}.row_steps` has {} entries for {n} rows", steps.len());
            ensure!(rows.windows(2).all(|w| w[0] < w[1]), "optimizer state `{pre}.rows` must be strictly ascending");
            if let Some(&last) = rows.last() {
                ensure!((last as usize) < self.n_rows, "optimizer state `{pre}.rows` has row {last}, the table has {}", self.n_rows);
            }
            let (m, v): (Vec<f32>, Vec<f32>) = (mt.flatten_all()?.to_vec1()?, vt.flatten_all()?.to_vec1()?);
            loaded = Some((rows, steps, m, v));
        }
        self.t = t;
        self.pages = (0..self.n_rows.div_ceil(PAGE_ROWS)).map(|_| None).collect();
        #[cfg(feature = "cuda")]
        {
            // A GPU step rebuilds the device state from the pages.
            self.device = None;
        }
        match loaded {
            Some(rows) => self.import_pages(rows),
            None => Ok(()),
        }
    }

    fn name(&self) -> &'static str {
        if self.rowwise {
            "adamw-rowwise"
        } else {
            "adamw"
        }
    }
}

/// One row of row-wise AdamW: m per element, one v for the row (mean of g² over the row).
fn rowwise_update(k: &AdamWKernel, p: &mut [f32], m: &mut [f32], v: &mut f32, g: &[f32]) {
    let g2 = kernels::sum_sq(g) / g.len().max(1) as f32;
    *v = k.b2 * *v + k.one_m_b2 * g2;
    let denom = v.sqrt() * k.inv_sqrt_bc2 + k.eps;
    for ((p, m), &g) in p.iter_mut().zip(m.iter_mut()).zip(g) {
        let mi = k.b1 * *m + k.one_m_b1 * g;
        *m = mi;
        *p = *p * k.decay - k.step_size * mi / denom;
    }
}

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

    fn table(n: usize, d: usize) -> Tensor {
        Tensor::from_vec((0..n * d).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect::<Vec<f32>>(), (n, d), &Device::Cpu).unwrap()
    }

    fn rg(rows: &[u32], d: usize, seed: usize) -> RowGrads {
        let data: Vec<f32> = (0..rows.len() * d).map(|i| (((i + 7 * seed) * 7919 % 997) as f32 - 498.0) / 1000.0).collect();
        RowGrads::new(rows.to_vec(), Tensor::from_vec(data, (rows.len(), d), &Device::Cpu).unwrap()).unwrap()
    }

    fn vals(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    fn batch<'a>(g: &'a RowGrads, access: &'a AccessCounts, lr_mult: f64) -> ValueBatch<'a> {
        ValueBatch { grads: g, access, lr_mult, step: 0 }
    }

    /// Row-by-row AdamW in f64 with per-row step counts; `rowwise` uses the row mean of g².
    struct Reference {
        p: Vec<f64>,
        m: Vec<f64>,
        v: Vec<f64>,
        t: Vec<i32>,
        d: usize,
    }

    impl Reference {
        fn step(&mut self, g: &RowGrads, lr: f64, hp: AdamWParams, rowwise: bool) {
            let gv = vals(&g.grads);
            let d = self.d;
            for (k, &r) in g.rows.iter().enumerate() {
                let r = r as usize;
                self.t[r] += 1;
                let t = self.t[r];
                let row = &gv[k * d..(k + 1) * d];
                let g2 = row.iter().map(|&x| x as f64 * x as f64).sum::<f64>() / d as f64;
                if rowwise {
                    self.v[r * d] = hp.beta2 * self.v[r * d] + (1.0 - hp.beta2) * g2;
                }
                for (i, &gi) in row.iter().enumerate() {
                    let gi = gi as f64;
                    let x = r * d + i;
                    self.m[x] = hp.beta1 * self.m[x] + (1.0 - hp.beta1) * gi;
                    let v = if rowwise {
                        self.v[r * d]
                    } else {
                        self.v[x] = hp.beta2 * self.v[x] + (1.0 - hp.beta2) * gi * gi;
                        self.v[x]
                    };
                    let mh = self.m[x] / (1.0 - hp.beta1.powi(t));
                    let vh = v / (1.0 - hp.beta2.powi(t));
                    self.p[x] -= lr * mh / (vh.sqrt() + hp.eps);
                }
            }
        }
    }

    fn adamw_matches_reference(rowwise: bool) {
        let (n, d) = (100, 12);
        let tab = table(n, d);
        let before = vals(&tab);
        let hp = AdamWParams { beta1: 0.9, beta2: 0.95, eps: 1e-8 };
        let mut opt = LazyAdamW::new(n, d, 0.01, hp, 0.0, rowwise);
        let mut re = Reference { p: before.iter().map(|&x| x as f64).collect(), m: vec![0.0; n * d], v: vec![0.0; n * d], t: vec![0; n], d };
        let access = AccessCounts::default();
        // Steps touch overlapping row sets spanning several pages; row 40 is touched late.
        let steps: [&[u32]; 4] = [&[0, 3, 31, 32, 99], &[3, 32, 33], &[0, 3, 40, 99], &[40]];
        for (s, rows) in steps.iter().enumerate() {
            let g = rg(rows, d, s);
            opt.step(&tab, &batch(&g, &access, 0.5)).unwrap();
            re.step(&g, 0.005, hp, rowwise);
        }
        let after = vals(&tab);
        let touched: Vec<usize> = vec![0, 3, 31, 32, 33, 40, 99];
        for r in 0..n {
            for i in 0..d {
                let x = r * d + i;
                if touched.contains(&r) {
                    assert!((after[x] as f64 - re.p[x]).abs() < 1e-5, "row {r}: {} vs {}", after[x], re.p[x]);
                    assert_ne!(after[x], before[x], "row {r} did not move");
                } else {
                    assert_eq!(after[x].to_bits(), before[x].to_bits(), "untouched row {r} changed");
                }
            }
        }
        assert_eq!(opt.touched_rows(), touched.len());
    }

    #[test]
    fn lazy_adamw_matches_reference_and_leaves_untouched_rows() {
        adamw_matches_reference(false);
    }

    #[test]
    fn lazy_adamw_rowwise_matches_reference_and_leaves_untouched_rows() {
        adamw_matches_reference(true);
    }

    #[test]
    fn rowwise_state_is_about_half() {
        let (n, d) = (256, 64);
        let tab = table(n, d);
        let g = rg(&(0..n as u32).collect::<Vec<_>>(), d, 1);
        let access = AccessCounts::default();
        let mut sizes = vec![];
        for rowwise in [false, true] {
            let mut opt = LazyAdamW::new(n, d, 0.01, AdamWParams::default(), 0.0, rowwise);
            assert_eq!(opt.state_bytes(), 0);
            opt.step(&tab, &batch(&g, &access, 1.0)).unwrap();
            sizes.push(opt.state_bytes());
        }
        let table_bytes = n * d * 4;
        assert!(sizes[0] > 2 * table_bytes && sizes[1] < table_bytes * 11 / 10, "{sizes:?}");
    }

    fn state_roundtrip(rowwise: bool) {
        let (n, d) = (70, 9);
        let tab = table(n, d);
        let hp = AdamWParams { beta1: 0.9, beta2: 0.95, eps: 1e-8 };
        let access = AccessCounts::default();
        let gs: Vec<RowGrads> = [&[1u32, 5, 64][..], &[5, 6], &[1, 69], &[0, 5, 64]].iter().enumerate().map(|(s, r)| rg(r, d, s)).collect();
        let mut opt = LazyAdamW::new(n, d, 0.01, hp, 0.1, rowwise);
        // An empty state (no rows yet) round-trips too.
        opt.load_state(&opt.state_tensors().unwrap()).unwrap();
        opt.step(&tab, &batch(&gs[0], &access, 1.0)).unwrap();
        opt.step(&tab, &batch(&gs[1], &access, 0.7)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("opt.safetensors");
        candle_core::safetensors::save(&opt.state_tensors().unwrap(), &path).unwrap();
        let tab2 = tab.copy().unwrap();
        opt.step(&tab, &batch(&gs[2], &access, 0.5)).unwrap();
        opt.step(&tab, &batch(&gs[3], &access, 0.3)).unwrap();
        let mut opt2 = LazyAdamW::new(n, d, 0.01, hp, 0.1, rowwise);
        opt2.load_state(&candle_core::safetensors::load(&path, &Device::Cpu).unwrap()).unwrap();
        opt2.step(&tab2, &batch(&gs[2], &access, 0.5)).unwrap();
        opt2.step(&tab2, &batch(&gs[3], &access, 0.3)).unwrap();
        let bits = |t: &Tensor| vals(t).iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&tab), bits(&tab2));
        // The other variant's state is refused with a message naming the setting.
        let mut other = LazyAdamW::new(n, d, 0.01, hp, 0.1, !rowwise);
        let err = other.load_state(&opt.state_tensors().unwrap()).unwrap_err().to_string();
        assert!(err.contains("value_optimizer"), "{err}");
    }

    #[test]
    fn lazy_adamw_state_roundtrip_bit_exact() {
        state_roundtrip(false);
        state_roundtrip(true);
    }

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
