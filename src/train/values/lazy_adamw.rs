//! Lazy AdamW over the rows of the memory value table: state only for rows ever touched, each row
//! with its own step count (see the module doc of `train::values`). The state lives in host pages
//! ([`HostPages`]) or, once a step ran on a GPU, in device memory (`device_rows`).

use super::{check_table, RowState, ValueBatch, ValueUpdate};
use crate::ops::access::{with_f32, with_f32_mut};
use crate::ops::kernels;
use crate::train::optim::{read_step, step_tensor, AdamWKernel, AdamWParams};
use anyhow::{bail, ensure, Context, Result};
use candle_core::{Device, Tensor};
use rayon::prelude::*;
use std::collections::HashMap;

/// Rows per lazily allocated page of optimiser state.
pub const PAGE_ROWS: usize = 32;

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

/// The state in host memory: one optional page per `PAGE_ROWS` rows of the table, allocated on
/// first touch.
pub struct HostPages {
    dim: usize,
    rowwise: bool,
    pages: Vec<Option<Box<Page>>>,
}

impl HostPages {
    fn new(n_rows: usize, dim: usize, rowwise: bool) -> Self {
        Self { dim, rowwise, pages: (0..n_rows.div_ceil(PAGE_ROWS)).map(|_| None).collect() }
    }

    fn v_dim(&self) -> usize {
        if self.rowwise {
            1
        } else {
            self.dim
        }
    }

    fn touched_rows(&self) -> usize {
        self.pages.iter().flatten().map(|p| p.steps.iter().filter(|&&s| s > 0).count()).sum()
    }

    fn state_bytes(&self) -> usize {
        self.pages.iter().flatten().map(|p| 4 * (p.steps.len() + p.m.len() + p.v.len())).sum()
    }

    /// Every touched row's state, rows ascending.
    fn export(&self) -> RowState {
        let (dim, vd) = (self.dim, self.v_dim());
        let mut out = RowState::default();
        for (p, page) in self.pages.iter().enumerate() {
            let Some(page) = page else { continue };
            for (r, &s) in page.steps.iter().enumerate().filter(|(_, &s)| s > 0) {
                out.rows.push((p * PAGE_ROWS + r) as u32);
                out.steps.push(s);
                out.m.extend_from_slice(&page.m[r * dim..(r + 1) * dim]);
                out.v.extend_from_slice(&page.v[r * vd..(r + 1) * vd]);
            }
        }
        out
    }

    /// Write exported rows into the pages (allocating the pages they fall in).
    fn import(&mut self, state: RowState) -> Result<()> {
        let (dim, vd, rowwise) = (self.dim, self.v_dim(), self.rowwise);
        let RowState { rows, steps, m, v } = state;
        ensure!(
            m.len() == rows.len() * dim && v.len() == rows.len() * vd && steps.len() == rows.len(),
            "lazy AdamW: inconsistent row state"
        );
        for (k, (&row, &s)) in rows.iter().zip(&steps).enumerate() {
            let (p, r) = (row as usize / PAGE_ROWS, row as usize % PAGE_ROWS);
            let page = self.pages[p].get_or_insert_with(|| Box::new(Page::new(dim, rowwise)));
            page.steps[r] = s;
            page.m[r * dim..(r + 1) * dim].copy_from_slice(&m[k * dim..(k + 1) * dim]);
            page.v[r * vd..(r + 1) * vd].copy_from_slice(&v[k * vd..(k + 1) * vd]);
        }
        Ok(())
    }

    /// One step on the rows of `rows`/`grads` (ascending), in place on `table`, in parallel over
    /// the touched pages; `kernel(t)` gives the scalars of a row's t-th step.
    fn step(&mut self, table: &Tensor, rows: &[u32], grads: &Tensor, kernel: impl Fn(u32) -> AdamWKernel + Sync) -> Result<()> {
        let (dim, rowwise) = (self.dim, self.rowwise);
        let groups = page_groups(rows);
        let pages = &mut self.pages;
        with_f32(grads, |gd| {
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
                        let r = rows[k] as usize - p * PAGE_ROWS;
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
}

/// Where the state is: host pages, or (after a step on a GPU) device memory.
enum RowStore {
    Host(HostPages),
    #[cfg(feature = "cuda")]
    Device(super::device_rows::DeviceRowState),
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
    store: RowStore,
}

impl LazyAdamW {
    pub fn new(n_rows: usize, dim: usize, lr: f64, hp: AdamWParams, weight_decay: f64, rowwise: bool) -> Self {
        Self { lr, hp, weight_decay, rowwise, n_rows, dim, t: 0, store: RowStore::Host(HostPages::new(n_rows, dim, rowwise)) }
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
        match &self.store {
            RowStore::Host(h) => h.touched_rows(),
            #[cfg(feature = "cuda")]
            RowStore::Device(d) => d.touched_rows(),
        }
    }

    /// Bytes held by the state (allocated pages).
    pub fn state_bytes(&self) -> usize {
        match &self.store {
            RowStore::Host(h) => h.state_bytes(),
            #[cfg(feature = "cuda")]
            RowStore::Device(d) => d.state_bytes(),
        }
    }

    fn export(&self) -> Result<RowState> {
        match &self.store {
            RowStore::Host(h) => Ok(h.export()),
            #[cfg(feature = "cuda")]
            RowStore::Device(d) => d.export(),
        }
    }

    /// The state in host pages, brought back from the device if it was there.
    fn host_pages(&mut self) -> Result<&mut HostPages> {
        #[cfg(feature = "cuda")]
        if let RowStore::Device(d) = &self.store {
            let mut host = HostPages::new(self.n_rows, self.dim, self.rowwise);
            host.import(d.export()?)?;
            self.store = RowStore::Host(host);
        }
        match &mut self.store {
            RowStore::Host(h) => Ok(h),
            #[cfg(feature = "cuda")]
            RowStore::Device(_) => unreachable!("the state was just moved to the host"),
        }
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
        let (hp, weight_decay) = (self.hp, self.weight_decay);
        // Scalars of a row that has taken t steps, as the dense AdamW's.
        let kernel = move |t: u32| hp.kernel(lr, weight_decay, t as usize);
        #[cfg(feature = "cuda")]
        if table.device().is_cuda() {
            if let RowStore::Host(h) = &self.store {
                // First step on the GPU: move the state there (loaded from a checkpoint, or empty).
                let rows = h.export();
                self.store = RowStore::Device(super::device_rows::DeviceRowState::from_rows(self.dim, self.rowwise, rows, table.device())?);
            }
            let consts = kernel(1).consts();
            let RowStore::Device(state) = &mut self.store else { unreachable!("the state was just moved to the device") };
            return state.step(table, &g.rows, &g.grads, |t| (kernel(t).step_size, kernel(t).inv_sqrt_bc2), consts);
        }
        // Back on the CPU after GPU steps, the state returns to the pages.
        self.host_pages()?.step(table, &g.rows, &g.grads, kernel)
    }

    fn state_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let pre = self.prefix();
        let mut out = HashMap::new();
        out.insert(format!("{pre}.step"), step_tensor(self.t)?);
        let RowState { rows, steps, m, v } = self.export()?;
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
            let get =
                |k: &str| state.get(&format!("{pre}.{k}")).with_context(|| format!("optimizer state has `{pre}.rows` but no `{pre}.{k}`"));
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
            loaded = Some(RowState { rows, steps, m, v });
        }
        self.t = t;
        // Loaded state goes to the host pages; a GPU step moves it to the device.
        let mut host = HostPages::new(self.n_rows, self.dim, self.rowwise);
        if let Some(rows) = loaded {
            host.import(rows)?;
        }
        self.store = RowStore::Host(host);
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::memory_trace::AccessCounts;
    use crate::train::values::fixtures::{batch, rg, table, vals};
    use crate::train::values::RowGrads;

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
        let mut re =
            Reference { p: before.iter().map(|&x| x as f64).collect(), m: vec![0.0; n * d], v: vec![0.0; n * d], t: vec![0; n], d };
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
}
