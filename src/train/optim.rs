//! Optimisers (AdamW, SGD), global-norm gradient clipping and gradient accumulation.
//!
//! Why not candle-nn's optimisers: they build ~10 full-size temporaries per step with
//! single-threaded ops and keep their state private, so it cannot be checkpointed
//! (docs/design.md, "The memory layer"). Here every update runs in place on the parameter's storage, slice by slice,
//! in parallel with rayon, and the state (moments, step count) is exported as named tensors that
//! round-trip through safetensors bit-exactly.
//!
//! Gradients are passed by parameter name (`HashMap<String, Tensor>`, see [`grads_by_name`]);
//! parameters are looked up by name in the [`ParamStore`], whose `Var`s share storage with the
//! model, so an update is seen by the model without copying. f32 tensors; on a GPU (`--features
//! cuda`) AdamW runs as in-place kernels (`ops::cuda::update`), SGD as candle ops written back with
//! `Var::set`, and the gradient norm, scaling and accumulation as device tensor ops.
//!
//! Correctness reference: PyTorch's `torch.optim.AdamW` and `torch.optim.SGD` (dampening 0,
//! no Nesterov) and `torch.nn.utils.clip_grad_norm_`; the tests recompute them by hand in f64.

use crate::model::params::ParamStore;
use crate::ops::access::{with_f32, with_f32_mut};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Storage, Tensor};
use rayon::prelude::*;
use std::collections::{BTreeMap, HashMap, HashSet};

/// Elements per rayon task: large enough to amortise scheduling, small enough to balance
/// the work of a few-MB tensor over the cores.
const CHUNK: usize = 16 * 1024;

/// Parameters that share an lr multiplier and a weight decay.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamGroup {
    pub names: Vec<String>,
    /// Multiplier on the scheduled learning rate.
    pub lr_scale: f64,
    pub weight_decay: f64,
}

impl ParamGroup {
    pub fn new(names: Vec<String>, lr_scale: f64, weight_decay: f64) -> Self {
        Self { names, lr_scale, weight_decay }
    }
}

/// The usual split: weight decay for matrices (rank ≥ 2), none for norms and biases (1-D) nor
/// for token embeddings (names containing `embed_tokens`), whose rows are mostly untouched in
/// any one step so decay would shrink rare tokens towards zero. Both groups use `lr_scale` 1;
/// empty groups are left out. A name the store does not know goes to the no-decay group so that
/// the optimiser's constructor reports it.
pub fn default_groups(store: &ParamStore, names: &[String], weight_decay: f64) -> Vec<ParamGroup> {
    let (mut decay, mut no_decay) = (vec![], vec![]);
    for n in names {
        match store.get(n) {
            Some(v) if v.rank() >= 2 && !n.contains("embed_tokens") => decay.push(n.clone()),
            _ => no_decay.push(n.clone()),
        }
    }
    let mut groups = vec![];
    if !decay.is_empty() {
        groups.push(ParamGroup::new(decay, 1.0, weight_decay));
    }
    if !no_decay.is_empty() {
        groups.push(ParamGroup::new(no_decay, 1.0, 0.0));
    }
    groups
}

/// Name → gradient for the named parameters that received one. `names` empty: all of `store`.
pub fn grads_by_name(store: &ParamStore, names: &[String], grads: &candle_core::backprop::GradStore) -> HashMap<String, Tensor> {
    let all;
    let names = if names.is_empty() {
        all = store.names();
        &all
    } else {
        names
    };
    names.iter().filter_map(|n| store.get(n).and_then(|v| grads.get(v.as_tensor()).map(|g| (n.clone(), g.clone())))).collect()
}

/// An optimiser over named parameters of a `ParamStore`.
pub trait Optimizer: Send {
    /// One update with the (already clipped / averaged) gradients at learning rate `lr`
    /// (each group's `lr_scale` applies on top). Parameters without a gradient are left
    /// untouched, bit for bit, and their state does not advance.
    fn step(&mut self, grads: &HashMap<String, Tensor>, lr: f64) -> Result<()>;
    /// Optimiser steps taken so far (restored by `load_state`).
    fn step_count(&self) -> usize;
    /// The state as named tensors (`adamw.m.<param>`, `adamw.v.<param>`, `adamw.step`, ...),
    /// ready for safetensors. The moment tensors SHARE storage with the optimiser: save them
    /// before the next `step`, or `copy()` them to keep a snapshot.
    fn state_tensors(&self) -> Result<HashMap<String, Tensor>>;
    /// Replace the state with one exported by `state_tensors` (copied, so the caller's tensors
    /// stay independent). Errors name the offending tensor.
    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()>;
    fn groups(&self) -> &[ParamGroup];
    fn name(&self) -> &'static str;
}

/// AdamW hyper-parameters (those that are not per group).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWParams {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

impl AdamWParams {
    pub fn from_config(cfg: &crate::config::TrainConfig) -> Self {
        Self { beta1: cfg.beta1, beta2: cfg.beta2, eps: cfg.eps }
    }
}

impl Default for AdamWParams {
    fn default() -> Self {
        Self { beta1: 0.9, beta2: 0.999, eps: 1e-8 }
    }
}

struct Moments {
    m: Tensor,
    v: Tensor,
}

/// AdamW with decoupled weight decay and bias correction, as `torch.optim.AdamW`:
/// p ← p·(1 − lr·wd); m ← β1·m + (1−β1)·g; v ← β2·v + (1−β2)·g²;
/// p ← p − (lr / (1−β1^t)) · m / (√v / √(1−β2^t) + ε).
/// The step counter t is global (one per optimiser, not per parameter); moments are created
/// (zero) the first time a parameter has a gradient.
pub struct AdamW {
    store: ParamStore,
    groups: Vec<ParamGroup>,
    hp: AdamWParams,
    t: usize,
    state: BTreeMap<String, Moments>,
}

impl AdamW {
    pub fn new(store: &ParamStore, groups: Vec<ParamGroup>, hp: AdamWParams) -> Result<Self> {
        validate_groups(store, &groups)?;
        if !(0.0..1.0).contains(&hp.beta1) || !(0.0..1.0).contains(&hp.beta2) || hp.eps.is_nan() || hp.eps < 0.0 {
            bail!("AdamW: betas must be in [0, 1) and eps ≥ 0, got {hp:?}");
        }
        Ok(Self { store: store.clone(), groups, hp, t: 0, state: BTreeMap::new() })
    }
}

impl Optimizer for AdamW {
    fn step(&mut self, grads: &HashMap<String, Tensor>, lr: f64) -> Result<()> {
        self.t += 1;
        let t = self.t as i32;
        let AdamWParams { beta1, beta2, eps } = self.hp;
        let bc1 = 1.0 - beta1.powi(t);
        let bc2 = 1.0 - beta2.powi(t);
        for group in &self.groups {
            let lr_g = lr * group.lr_scale;
            // Scalars are computed once in f64 and rounded to f32 for the kernel.
            let decay = (1.0 - lr_g * group.weight_decay) as f32;
            let step_size = (lr_g / bc1) as f32;
            let inv_sqrt_bc2 = (1.0 / bc2.sqrt()) as f32;
            let (b1, b2, eps) = (beta1 as f32, beta2 as f32, eps as f32);
            let (one_m_b1, one_m_b2) = ((1.0 - beta1) as f32, (1.0 - beta2) as f32);
            let k = AdamWKernel { b1, b2, one_m_b1, one_m_b2, decay, step_size, inv_sqrt_bc2, eps };
            for name in &group.names {
                let Some(g) = grads.get(name) else { continue };
                let p = param_tensor(&self.store, name)?;
                let g = grad_for(name, g, &p)?;
                let st = match self.state.entry(name.clone()) {
                    std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::btree_map::Entry::Vacant(e) => e.insert(Moments {
                        m: Tensor::zeros(p.shape(), DType::F32, p.device())?,
                        v: Tensor::zeros(p.shape(), DType::F32, p.device())?,
                    }),
                };
                #[cfg(feature = "cuda")]
                if p.device().is_cuda() {
                    let c = crate::ops::cuda::update::AdamConsts { b1, b2, one_m_b1, one_m_b2, decay, eps };
                    crate::ops::cuda::update::adam_dense(&p, &st.m, &st.v, &g, c, step_size, inv_sqrt_bc2)
                        .with_context(|| format!("AdamW update of {name}"))?;
                    continue;
                }
                update3(&p, &st.m, &st.v, &g, |p, m, v, g| {
                    p.par_chunks_mut(CHUNK)
                        .zip(m.par_chunks_mut(CHUNK))
                        .zip(v.par_chunks_mut(CHUNK))
                        .zip(g.par_chunks(CHUNK))
                        .for_each(|(((p, m), v), g)| k.run(p, m, v, g));
                })
                .with_context(|| format!("AdamW update of {name}"))?;
            }
        }
        Ok(())
    }

    fn step_count(&self) -> usize {
        self.t
    }

    fn state_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        out.insert("adamw.step".to_string(), step_tensor(self.t)?);
        for (name, st) in &self.state {
            out.insert(format!("adamw.m.{name}"), st.m.clone());
            out.insert(format!("adamw.v.{name}"), st.v.clone());
        }
        Ok(out)
    }

    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        let t = read_step(state, "adamw.step")?;
        let owned = owned_names(&self.groups);
        let mut ms = HashMap::new();
        let mut vs = HashMap::new();
        for (key, tensor) in state {
            let Some(rest) = key.strip_prefix("adamw.") else { continue };
            if rest == "step" {
                continue;
            }
            let (slot, name) = if let Some(n) = rest.strip_prefix("m.") {
                (&mut ms, n)
            } else if let Some(n) = rest.strip_prefix("v.") {
                (&mut vs, n)
            } else {
                bail!("optimizer state: unknown AdamW tensor `{key}`");
            };
            if !owned.contains(name) {
                bail!("optimizer state: `{key}` is for parameter `{name}`, which this optimiser does not train");
            }
            let p = param_tensor(&self.store, name)?;
            if tensor.dims() != p.dims() {
                bail!("optimizer state: `{key}` has shape {:?}, parameter has {:?}", tensor.dims(), p.dims());
            }
            slot.insert(
                name.to_string(),
                private_copy(&tensor.to_device(p.device())?).with_context(|| format!("optimizer state `{key}`"))?,
            );
        }
        let mut new_state = BTreeMap::new();
        for (name, m) in ms {
            let v = vs.remove(&name).with_context(|| format!("optimizer state: `adamw.m.{name}` has no `adamw.v.{name}`"))?;
            new_state.insert(name, Moments { m, v });
        }
        if let Some(name) = vs.keys().next() {
            bail!("optimizer state: `adamw.v.{name}` has no `adamw.m.{name}`");
        }
        self.t = t;
        self.state = new_state;
        Ok(())
    }

    fn groups(&self) -> &[ParamGroup] {
        &self.groups
    }

    fn name(&self) -> &'static str {
        "adamw"
    }
}

/// b ← μ·b + (g + wd·p); p ← p − lr·b, over equal-length slices.
#[inline(never)]
fn sgd_momentum_kernel(p: &mut [f32], b: &mut [f32], g: &[f32], lr: f32, wd: f32, mu: f32) {
    let n = p.len();
    let (b, g) = (&mut b[..n], &g[..n]);
    for i in 0..n {
        let bi = mu * b[i] + (g[i] + wd * p[i]);
        b[i] = bi;
        p[i] -= lr * bi;
    }
}

/// The per-element AdamW update with its scalars, as a plain function over equal-length slices:
/// monomorphic, bounds checks hoisted, so it vectorises however the crate is compiled.
#[derive(Clone, Copy)]
pub(crate) struct AdamWKernel {
    pub(crate) b1: f32,
    pub(crate) b2: f32,
    pub(crate) one_m_b1: f32,
    pub(crate) one_m_b2: f32,
    pub(crate) decay: f32,
    pub(crate) step_size: f32,
    pub(crate) inv_sqrt_bc2: f32,
    pub(crate) eps: f32,
}

impl AdamWKernel {
    #[inline(never)]
    pub(crate) fn run(&self, p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32]) {
        let n = p.len();
        let (m, v, g) = (&mut m[..n], &mut v[..n], &g[..n]);
        let k = *self;
        for i in 0..n {
            let gi = g[i];
            let mi = k.b1 * m[i] + k.one_m_b1 * gi;
            let vi = k.b2 * v[i] + k.one_m_b2 * gi * gi;
            m[i] = mi;
            v[i] = vi;
            // decay is exactly 1 without weight decay, so this multiply leaves p bit-identical.
            p[i] = p[i] * k.decay - k.step_size * mi / (vi.sqrt() * k.inv_sqrt_bc2 + k.eps);
        }
    }
}

/// SGD with optional momentum and L2 weight decay, as `torch.optim.SGD` (dampening 0, no
/// Nesterov): g ← g + wd·p; b ← μ·b + g; p ← p − lr·b (b ≡ g without momentum). The momentum
/// buffer starts at zero, which equals PyTorch's "b ← g on the first step".
pub struct Sgd {
    store: ParamStore,
    groups: Vec<ParamGroup>,
    momentum: f64,
    t: usize,
    bufs: BTreeMap<String, Tensor>,
}

impl Sgd {
    pub fn new(store: &ParamStore, groups: Vec<ParamGroup>, momentum: f64) -> Result<Self> {
        validate_groups(store, &groups)?;
        if !(momentum >= 0.0 && momentum.is_finite()) {
            bail!("SGD: momentum must be a finite number ≥ 0, got {momentum}");
        }
        Ok(Self { store: store.clone(), groups, momentum, t: 0, bufs: BTreeMap::new() })
    }
}

/// The SGD update of a parameter on a GPU, from candle ops (the same arithmetic as the CPU
/// kernels), written back into the parameter's `Var`; `bufs` holds the momentum buffers.
#[allow(clippy::too_many_arguments)]
fn sgd_on_device(
    store: &ParamStore,
    bufs: &mut BTreeMap<String, Tensor>,
    momentum: f64,
    name: &str,
    (p, g): (&Tensor, &Tensor),
    lr: f32,
    wd: f32,
    mu: f32,
) -> Result<()> {
    let d = (g + (p * wd as f64)?)?;
    let step = if momentum == 0.0 {
        d
    } else {
        let b = match bufs.get(name) {
            Some(b) => ((b * mu as f64)? + d)?,
            None => d,
        };
        bufs.insert(name.to_string(), b.clone());
        b
    };
    let var = store.get(name).with_context(|| format!("optimiser: no parameter named `{name}` in the store"))?;
    var.set(&(p - (step * lr as f64)?)?)?;
    Ok(())
}

impl Optimizer for Sgd {
    fn step(&mut self, grads: &HashMap<String, Tensor>, lr: f64) -> Result<()> {
        self.t += 1;
        let mu = self.momentum as f32;
        for group in &self.groups {
            let lr_g = (lr * group.lr_scale) as f32;
            let wd = group.weight_decay as f32;
            for name in &group.names {
                let Some(g) = grads.get(name) else { continue };
                let p = param_tensor(&self.store, name)?;
                let g = grad_for(name, g, &p)?;
                if !p.device().is_cpu() {
                    sgd_on_device(&self.store, &mut self.bufs, self.momentum, name, (&p, &g), lr_g, wd, mu)
                        .with_context(|| format!("SGD update of {name}"))?;
                    continue;
                }
                let res = if self.momentum == 0.0 {
                    update1(&p, &g, |p, g| {
                        p.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK)).for_each(|(p, g)| {
                            for (p, &g) in p.iter_mut().zip(g) {
                                *p -= lr_g * (g + wd * *p);
                            }
                        })
                    })
                } else {
                    let buf = match self.bufs.entry(name.clone()) {
                        std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                        std::collections::btree_map::Entry::Vacant(e) => e.insert(Tensor::zeros(p.shape(), DType::F32, &Device::Cpu)?),
                    };
                    update2(&p, buf, &g, |p, b, g| {
                        p.par_chunks_mut(CHUNK)
                            .zip(b.par_chunks_mut(CHUNK))
                            .zip(g.par_chunks(CHUNK))
                            .for_each(|((p, b), g)| sgd_momentum_kernel(p, b, g, lr_g, wd, mu))
                    })
                };
                res.with_context(|| format!("SGD update of {name}"))?;
            }
        }
        Ok(())
    }

    fn step_count(&self) -> usize {
        self.t
    }

    fn state_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        out.insert("sgd.step".to_string(), step_tensor(self.t)?);
        for (name, b) in &self.bufs {
            out.insert(format!("sgd.momentum.{name}"), b.clone());
        }
        Ok(out)
    }

    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        let t = read_step(state, "sgd.step")?;
        let owned = owned_names(&self.groups);
        let mut bufs = BTreeMap::new();
        for (key, tensor) in state {
            let Some(rest) = key.strip_prefix("sgd.") else { continue };
            if rest == "step" {
                continue;
            }
            let Some(name) = rest.strip_prefix("momentum.") else {
                bail!("optimizer state: unknown SGD tensor `{key}`");
            };
            if !owned.contains(name) {
                bail!("optimizer state: `{key}` is for parameter `{name}`, which this optimiser does not train");
            }
            let p = param_tensor(&self.store, name)?;
            if tensor.dims() != p.dims() {
                bail!("optimizer state: `{key}` has shape {:?}, parameter has {:?}", tensor.dims(), p.dims());
            }
            bufs.insert(
                name.to_string(),
                private_copy(&tensor.to_device(p.device())?).with_context(|| format!("optimizer state `{key}`"))?,
            );
        }
        self.t = t;
        self.bufs = bufs;
        Ok(())
    }

    fn groups(&self) -> &[ParamGroup] {
        &self.groups
    }

    fn name(&self) -> &'static str {
        "sgd"
    }
}

/// The optimiser `cfg.optimizer` names, with its hyper-parameters from `cfg`.
pub fn optimizer_from_config(cfg: &crate::config::TrainConfig, store: &ParamStore, groups: Vec<ParamGroup>) -> Result<Box<dyn Optimizer>> {
    Ok(match cfg.optimizer {
        crate::config::OptimizerKind::Adamw => Box::new(AdamW::new(store, groups, AdamWParams::from_config(cfg))?),
        crate::config::OptimizerKind::Sgd => Box::new(Sgd::new(store, groups, cfg.momentum)?),
    })
}

/// Global-norm clipping as `torch.nn.utils.clip_grad_norm_`: the L2 norm over all gradients of
/// `names` (those present in `grads`) is computed in f64; if it exceeds `max_norm` (> 0) every
/// such gradient is scaled in place by max_norm / (norm + 1e-6). Returns the norm before
/// clipping. A non-finite norm is returned without scaling (the caller decides what to do).
///
/// The map is `&mut` because a gradient that is not a contiguous f32 tensor with storage of its
/// own (a broadcast view, or two names sharing one buffer) is replaced by a private copy before
/// scaling, so that nothing is scaled twice and no other tensor changes.
pub fn clip_grad_norm(grads: &mut HashMap<String, Tensor>, names: &[String], max_norm: f64) -> Result<f64> {
    let norm = grad_sum_squares(grads, names)?.sqrt();
    if max_norm > 0.0 && norm.is_finite() && norm > max_norm {
        scale_grads(grads, names, clip_scale(norm, max_norm))?;
    }
    Ok(norm)
}

/// The factor `clip_grad_norm` scales gradients by when `norm` exceeds `max_norm`.
pub fn clip_scale(norm: f64, max_norm: f64) -> f32 {
    (max_norm / (norm + 1e-6)) as f32
}

/// Σ g² over the gradients of `names` present in `grads`, in f64 (name order, then chunk order:
/// the same bits for any thread count).
pub fn grad_sum_squares(grads: &HashMap<String, Tensor>, names: &[String]) -> Result<f64> {
    let mut sq = 0.0f64;
    for n in names.iter().filter(|n| grads.contains_key(*n)) {
        sq += sum_squares(&grads[n]).with_context(|| format!("gradient norm of {n}"))?;
    }
    Ok(sq)
}

/// Multiply the gradients of `names` present in `grads` by `scale`, in place (see
/// `clip_grad_norm` for why the map is `&mut`).
pub fn scale_grads(grads: &mut HashMap<String, Tensor>, names: &[String], scale: f32) -> Result<()> {
    let present: Vec<&String> = names.iter().filter(|n| grads.contains_key(*n)).collect();
    // First give every gradient storage of its own, then scale: scaling before all copies
    // are made would copy an already scaled buffer.
    let mut seen = HashSet::new();
    for n in &present {
        make_private(grads.get_mut(*n).unwrap(), &mut seen)?;
    }
    for n in present {
        if !grads[n].device().is_cpu() {
            // A fresh tensor on the device: nothing else can share it.
            let scaled = grads[n].affine(scale as f64, 0.0)?;
            grads.insert(n.clone(), scaled);
            continue;
        }
        with_f32_mut(&grads[n], |s| s.par_chunks_mut(CHUNK).for_each(|c| c.iter_mut().for_each(|x| *x *= scale)))?;
    }
    Ok(())
}

/// Sum of squares of a tensor's elements in f64. Per-chunk partial sums are collected in order
/// and added sequentially, so the result does not depend on how rayon split the work (bit-exact
/// resumes need the same clipping scale).
fn sum_squares(t: &Tensor) -> Result<f64> {
    let t = to_f32(t)?;
    if !t.device().is_cpu() {
        // On a GPU: one f64 reduction there.
        return Ok(t.to_dtype(DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>()?);
    }
    let partial: Vec<f64> =
        with_f32(&t, |s| s.par_chunks(CHUNK).map(|c| c.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>()).collect())?;
    Ok(partial.iter().sum())
}

/// Sums the gradients of several micro-batches in place and hands back their mean.
/// Each gradient is copied once into a private contiguous f32 buffer (the first time its name is
/// seen); later micro-batches are added into it in parallel. A parameter missing from a
/// micro-batch counts as a zero gradient there.
#[derive(Default)]
pub struct GradAccumulator {
    sums: HashMap<String, Tensor>,
    micro_batches: usize,
}

impl GradAccumulator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add one micro-batch's gradients.
    pub fn add(&mut self, grads: &HashMap<String, Tensor>) -> Result<()> {
        for (name, g) in grads {
            match self.sums.get_mut(name) {
                Some(sum) => {
                    if sum.dims() != g.dims() {
                        bail!("gradient of {name}: shape {:?} differs from earlier micro-batches' {:?}", g.dims(), sum.dims());
                    }
                    let g = to_f32(g)?;
                    if !sum.device().is_cpu() {
                        *sum = (&*sum + &g)?;
                        continue;
                    }
                    with_f32_mut(sum, |s| {
                        with_f32(&g, |g| {
                            s.par_chunks_mut(CHUNK)
                                .zip(g.par_chunks(CHUNK))
                                .for_each(|(s, g)| s.iter_mut().zip(g).for_each(|(a, b)| *a += b))
                        })
                    })??;
                }
                None => {
                    self.sums.insert(name.clone(), private_copy(g).with_context(|| format!("gradient of {name}"))?);
                }
            }
        }
        self.micro_batches += 1;
        Ok(())
    }

    /// Micro-batches added since the last `take_mean`.
    pub fn micro_batches(&self) -> usize {
        self.micro_batches
    }

    /// The mean gradient (sum / number of micro-batches); the accumulator is empty afterwards.
    pub fn take_mean(&mut self) -> Result<HashMap<String, Tensor>> {
        let n = std::mem::take(&mut self.micro_batches);
        let mut sums = std::mem::take(&mut self.sums);
        if n > 1 {
            let inv = 1.0 / n as f32;
            for g in sums.values_mut() {
                if !g.device().is_cpu() {
                    *g = g.affine(inv as f64, 0.0)?;
                    continue;
                }
                with_f32_mut(g, |s| s.par_chunks_mut(CHUNK).for_each(|c| c.iter_mut().for_each(|x| *x *= inv)))?;
            }
        }
        Ok(sums)
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn validate_groups(store: &ParamStore, groups: &[ParamGroup]) -> Result<()> {
    let mut seen = HashSet::new();
    for g in groups {
        if !(g.lr_scale.is_finite() && g.weight_decay.is_finite()) {
            bail!("parameter group: lr_scale and weight_decay must be finite, got {} and {}", g.lr_scale, g.weight_decay);
        }
        for n in &g.names {
            if !seen.insert(n.as_str()) {
                bail!("parameter `{n}` is in more than one optimiser group");
            }
            param_tensor(store, n)?;
        }
    }
    Ok(())
}

fn owned_names(groups: &[ParamGroup]) -> HashSet<&str> {
    groups.iter().flat_map(|g| g.names.iter().map(|s| s.as_str())).collect()
}

/// The Var's tensor (shares storage with the model), checked to be an updatable CPU f32 tensor.
fn param_tensor(store: &ParamStore, name: &str) -> Result<Tensor> {
    let v = store.get(name).with_context(|| format!("optimiser: no parameter named `{name}` in the store"))?;
    let t = v.as_tensor().clone();
    if !(t.device().is_cpu() || cfg!(feature = "cuda") && t.device().is_cuda()) || t.dtype() != DType::F32 {
        bail!(
            "optimiser: parameter `{name}` is {:?} on {:?}; the optimisers update f32 tensors on the CPU (or CUDA with the cuda feature)",
            t.dtype(),
            t.device()
        );
    }
    if !t.is_contiguous() {
        bail!("optimiser: parameter `{name}` is not contiguous");
    }
    Ok(t)
}

fn grad_for(name: &str, g: &Tensor, p: &Tensor) -> Result<Tensor> {
    if g.dims() != p.dims() {
        bail!("gradient of `{name}` has shape {:?}, the parameter {:?}", g.dims(), p.dims());
    }
    to_f32(g).with_context(|| format!("gradient of `{name}`"))
}

/// As f32, on its device (the CPU, or CUDA with the cuda feature).
fn to_f32(t: &Tensor) -> Result<Tensor> {
    if !(t.device().is_cpu() || cfg!(feature = "cuda") && t.device().is_cuda()) {
        bail!("expected a CPU (or, with the cuda feature, CUDA) tensor, got one on {:?}", t.device());
    }
    Ok(if t.dtype() == DType::F32 { t.clone() } else { t.to_dtype(DType::F32)? })
}

/// A contiguous f32 CPU copy with storage of its own, detached from any graph.
fn private_copy(t: &Tensor) -> Result<Tensor> {
    let t = to_f32(t)?;
    if !t.device().is_cpu() {
        // A compact copy of just the viewed elements, in fresh device storage.
        return Ok(t.affine(1.0, 0.0)?.detach());
    }
    let c = if t.is_contiguous() { t.copy()? } else { t.contiguous()? };
    // A contiguous view into a larger buffer (e.g. a narrow) would copy the whole buffer; keep
    // only the viewed range.
    let c = match c.layout().contiguous_offsets() {
        Some((0, end)) if end == storage_len(&c) => c,
        _ => c.flatten_all()?.to_vec1::<f32>().and_then(|v| Tensor::from_vec(v, c.shape(), &Device::Cpu))?,
    };
    Ok(c.detach())
}

fn storage_len(t: &Tensor) -> usize {
    let (s, _) = t.storage_and_layout();
    match &*s {
        Storage::Cpu(c) => c.as_slice::<f32>().map(|s| s.len()).unwrap_or(0),
        _ => 0,
    }
}

fn storage_addr(t: &Tensor) -> usize {
    let (s, _) = t.storage_and_layout();
    &*s as *const Storage as usize
}

/// Replace `g` by a private copy unless it is already a contiguous CPU f32 tensor whose storage
/// no other gradient of this call uses.
fn make_private(g: &mut Tensor, seen: &mut HashSet<usize>) -> Result<()> {
    if !g.device().is_cpu() {
        // Device gradients are scaled into fresh tensors (`scale_grads`): nothing to unshare.
        return Ok(());
    }
    let ok = g.device().is_cpu() && g.dtype() == DType::F32 && g.is_contiguous() && !seen.contains(&storage_addr(g));
    if !ok {
        *g = private_copy(g)?;
    }
    seen.insert(storage_addr(g));
    Ok(())
}

pub(crate) fn step_tensor(t: usize) -> Result<Tensor> {
    let t = u32::try_from(t).context("optimiser step count exceeds u32")?;
    Ok(Tensor::from_vec(vec![t], 1, &Device::Cpu)?)
}

pub(crate) fn read_step(state: &HashMap<String, Tensor>, key: &str) -> Result<usize> {
    let t = state
        .get(key)
        .with_context(|| format!("optimizer state has no `{key}` (saved by another optimiser, or not an optimiser state?)"))?;
    let v = t.flatten_all()?.to_dtype(DType::U32)?.to_vec1::<u32>()?;
    match v.as_slice() {
        [s] => Ok(*s as usize),
        _ => bail!("optimizer state: `{key}` should hold one number, holds {}", v.len()),
    }
}

/// Run `f` on the mutable slices of `p` and `a` and the slice of `g`. The closures nest: each
/// `with_f32_mut` holds its tensor's storage lock while the inner ones run, so the tensors must
/// not share storage (parameters, optimiser state and gradients never do).
fn update1(p: &Tensor, g: &Tensor, f: impl FnOnce(&mut [f32], &[f32])) -> Result<()> {
    with_f32_mut(p, |p| with_f32(g, |g| f(p, g)))??;
    Ok(())
}

fn update2(p: &Tensor, a: &Tensor, g: &Tensor, f: impl FnOnce(&mut [f32], &mut [f32], &[f32])) -> Result<()> {
    with_f32_mut(p, |p| with_f32_mut(a, |a| with_f32(g, |g| f(p, a, g))))???;
    Ok(())
}

fn update3(p: &Tensor, a: &Tensor, b: &Tensor, g: &Tensor, f: impl FnOnce(&mut [f32], &mut [f32], &mut [f32], &[f32])) -> Result<()> {
    with_f32_mut(p, |p| with_f32_mut(a, |a| with_f32_mut(b, |b| with_f32(g, |g| f(p, a, b, g)))))????;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::access::to_vec_f32;
    use candle_core::Var;

    fn store_with(params: &[(&str, Vec<f32>, Vec<usize>)]) -> ParamStore {
        let s = ParamStore::new();
        for (n, v, shape) in params {
            s.insert(n, Var::from_tensor(&Tensor::from_vec(v.clone(), shape.as_slice(), &Device::Cpu).unwrap()).unwrap());
        }
        s
    }

    fn val(s: &ParamStore, n: &str) -> Vec<f32> {
        to_vec_f32(s.get(n).unwrap().as_tensor()).unwrap()
    }

    fn grads(items: &[(&str, Vec<f32>, Vec<usize>)]) -> HashMap<String, Tensor> {
        items.iter().map(|(n, v, s)| (n.to_string(), Tensor::from_vec(v.clone(), s.as_slice(), &Device::Cpu).unwrap())).collect()
    }

    fn close(a: &[f32], b: &[f64], tol: f64) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((*x as f64 - y).abs() <= tol * (1.0 + y.abs()), "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn adamw_matches_hand_reference() {
        let store = store_with(&[("w", vec![0.5, -1.0, 2.0, 0.1], vec![2, 2]), ("b", vec![0.3, -0.2], vec![2])]);
        let groups = vec![ParamGroup::new(vec!["w".into()], 1.0, 0.1), ParamGroup::new(vec!["b".into()], 0.5, 0.0)];
        let hp = AdamWParams { beta1: 0.9, beta2: 0.95, eps: 1e-8 };
        let mut opt = AdamW::new(&store, groups, hp).unwrap();
        let gw = [[0.1, -0.2, 0.3, 0.0], [0.05, 0.1, -0.3, 1.0], [-0.2, 0.0, 0.1, -0.5]];
        let gb = [[1.0, -1.0], [0.5, 0.2], [-0.3, 0.0]];
        let lrs = [0.1, 0.05, 0.02];
        // f64 reference
        let (mut pw, mut pb) = (vec![0.5f64, -1.0, 2.0, 0.1], vec![0.3f64, -0.2]);
        let (mut mw, mut vw, mut mb, mut vb) = (vec![0.0; 4], vec![0.0; 4], vec![0.0; 2], vec![0.0; 2]);
        for step in 0..3 {
            let g = grads(&[
                ("w", gw[step].iter().map(|&x| x as f32).collect(), vec![2, 2]),
                ("b", gb[step].iter().map(|&x| x as f32).collect(), vec![2]),
            ]);
            opt.step(&g, lrs[step]).unwrap();
            let t = (step + 1) as i32;
            let (bc1, bc2) = (1.0 - 0.9f64.powi(t), 1.0 - 0.95f64.powi(t));
            let upd = |p: &mut Vec<f64>, m: &mut Vec<f64>, v: &mut Vec<f64>, g: &[f64], lr: f64, wd: f64| {
                for i in 0..p.len() {
                    p[i] *= 1.0 - lr * wd;
                    m[i] = 0.9 * m[i] + 0.1 * g[i];
                    v[i] = 0.95 * v[i] + 0.05 * g[i] * g[i];
                    let mh = m[i] / bc1;
                    let vh = v[i] / bc2;
                    p[i] -= lr * mh / (vh.sqrt() + 1e-8);
                }
            };
            upd(&mut pw, &mut mw, &mut vw, &gw[step], lrs[step], 0.1);
            upd(&mut pb, &mut mb, &mut vb, &gb[step], lrs[step] * 0.5, 0.0);
            close(&val(&store, "w"), &pw, 1e-5);
            close(&val(&store, "b"), &pb, 1e-5);
        }
        assert_eq!(opt.step_count(), 3);
    }

    #[test]
    fn sgd_momentum_matches_hand_reference() {
        let store = store_with(&[("w", vec![1.0, -2.0, 0.5], vec![3])]);
        let mut opt = Sgd::new(&store, vec![ParamGroup::new(vec!["w".into()], 1.0, 0.01)], 0.9).unwrap();
        let gs = [[0.1, 0.2, -0.3], [0.0, -0.5, 0.4], [1.0, 0.0, 0.0]];
        let mut p = [1.0f64, -2.0, 0.5];
        let mut b = [0.0f64; 3];
        for (step, g) in gs.iter().enumerate() {
            opt.step(&grads(&[("w", g.iter().map(|&x| x as f32).collect(), vec![3])]), 0.1).unwrap();
            for i in 0..3 {
                let d = g[i] + 0.01 * p[i];
                b[i] = if step == 0 { d } else { 0.9 * b[i] + d };
                p[i] -= 0.1 * b[i];
            }
            close(&val(&store, "w"), &p, 1e-6);
        }
    }

    #[test]
    fn plain_sgd_without_momentum_has_no_state() {
        let store = store_with(&[("w", vec![1.0, 2.0], vec![2])]);
        let mut opt = Sgd::new(&store, vec![ParamGroup::new(vec!["w".into()], 2.0, 0.0)], 0.0).unwrap();
        opt.step(&grads(&[("w", vec![0.5, -1.0], vec![2])]), 0.1).unwrap();
        close(&val(&store, "w"), &[0.9, 2.2], 1e-7);
        assert_eq!(opt.state_tensors().unwrap().len(), 1);
    }

    #[test]
    fn params_without_grads_are_untouched() {
        let store = store_with(&[("a", vec![0.123456, -7.5], vec![2]), ("b", vec![1.0, 2.0], vec![1, 2])]);
        let names = vec!["a".to_string(), "b".to_string()];
        for mut opt in [
            Box::new(AdamW::new(&store, default_groups(&store, &names, 0.1), AdamWParams::default()).unwrap()) as Box<dyn Optimizer>,
            Box::new(Sgd::new(&store, default_groups(&store, &names, 0.1), 0.9).unwrap()),
        ] {
            let before = val(&store, "a");
            opt.step(&grads(&[("b", vec![0.1, 0.1], vec![1, 2])]), 0.1).unwrap();
            let after = val(&store, "a");
            assert_eq!(before.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), after.iter().map(|x| x.to_bits()).collect::<Vec<_>>());
            assert!(!opt.state_tensors().unwrap().keys().any(|k| k.ends_with(".a")));
        }
    }

    #[test]
    fn default_groups_split() {
        let store = store_with(&[
            ("model.embed_tokens.weight", vec![0.0; 4], vec![2, 2]),
            ("model.layers.0.mlp.up_proj.weight", vec![0.0; 4], vec![2, 2]),
            ("model.layers.0.input_layernorm.weight", vec![0.0; 2], vec![2]),
            ("model.layers.0.self_attn.q_proj.bias", vec![0.0; 2], vec![2]),
        ]);
        let groups = default_groups(&store, &store.names(), 0.1);
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].names, vec!["model.layers.0.mlp.up_proj.weight".to_string()]);
        assert_eq!(groups[0].weight_decay, 0.1);
        assert_eq!(groups[1].names.len(), 3);
        assert_eq!(groups[1].weight_decay, 0.0);
        // No decay actually means no shrinkage: with a zero gradient AdamW leaves it unchanged
        // while the decayed matrix shrinks by (1 - lr·wd).
        let store = store_with(&[("n", vec![1.0, 2.0], vec![2]), ("w", vec![1.0, 2.0], vec![1, 2])]);
        let names = store.names();
        let mut opt = AdamW::new(&store, default_groups(&store, &names, 0.5), AdamWParams::default()).unwrap();
        opt.step(&grads(&[("n", vec![0.0, 0.0], vec![2]), ("w", vec![0.0, 0.0], vec![1, 2])]), 0.1).unwrap();
        assert_eq!(val(&store, "n"), vec![1.0, 2.0]);
        close(&val(&store, "w"), &[0.95, 1.9], 1e-7);
    }

    #[test]
    fn unknown_or_duplicate_names_are_errors() {
        let store = store_with(&[("w", vec![1.0], vec![1])]);
        assert!(AdamW::new(&store, vec![ParamGroup::new(vec!["nope".into()], 1.0, 0.0)], AdamWParams::default()).is_err());
        let g = ParamGroup::new(vec!["w".into()], 1.0, 0.0);
        assert!(Sgd::new(&store, vec![g.clone(), g], 0.0).is_err());
    }

    fn roundtrip_is_bit_exact(make: &dyn Fn(&ParamStore) -> Box<dyn Optimizer>) {
        let init: Vec<f32> = (0..40_000).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
        let store = store_with(&[("w", init.clone(), vec![200, 200]), ("b", vec![0.1, 0.2, 0.3], vec![3])]);
        let gsteps: Vec<HashMap<String, Tensor>> = (0..4)
            .map(|k| {
                grads(&[
                    ("w", (0..40_000).map(|i| (((i + 13 * k) * 7919 % 997) as f32 - 498.0) / 1000.0).collect(), vec![200, 200]),
                    ("b", vec![0.3 * k as f32, -0.1, 0.05], vec![3]),
                ])
            })
            .collect();
        let mut opt = make(&store);
        opt.step(&gsteps[0], 0.01).unwrap();
        opt.step(&gsteps[1], 0.01).unwrap();
        // Save params + state through safetensors.
        let dir = tempfile::tempdir().unwrap();
        let sp = dir.path().join("opt.safetensors");
        candle_core::safetensors::save(&opt.state_tensors().unwrap(), &sp).unwrap();
        let saved_params: HashMap<String, Tensor> = store.tensors().into_iter().map(|(k, v)| (k, v.copy().unwrap())).collect();
        // Continue the original.
        opt.step(&gsteps[2], 0.01).unwrap();
        opt.step(&gsteps[3], 0.005).unwrap();
        // Restore into a fresh store and optimiser and replay.
        let store2 = ParamStore::new();
        for (k, v) in &saved_params {
            store2.insert(k, Var::from_tensor(v).unwrap());
        }
        let mut opt2 = make(&store2);
        opt2.load_state(&candle_core::safetensors::load(&sp, &Device::Cpu).unwrap()).unwrap();
        assert_eq!(opt2.step_count(), 2);
        opt2.step(&gsteps[2], 0.01).unwrap();
        opt2.step(&gsteps[3], 0.005).unwrap();
        for n in ["w", "b"] {
            let a: Vec<u32> = val(&store, n).iter().map(|x| x.to_bits()).collect();
            let b: Vec<u32> = val(&store2, n).iter().map(|x| x.to_bits()).collect();
            assert_eq!(a, b, "{n}");
        }
    }

    #[test]
    fn adamw_state_roundtrip_bit_exact() {
        roundtrip_is_bit_exact(&|s| {
            let names = s.names();
            Box::new(AdamW::new(s, default_groups(s, &names, 0.1), AdamWParams { beta1: 0.9, beta2: 0.95, eps: 1e-8 }).unwrap())
        });
    }

    #[test]
    fn sgd_state_roundtrip_bit_exact() {
        roundtrip_is_bit_exact(&|s| {
            let names = s.names();
            Box::new(Sgd::new(s, default_groups(s, &names, 0.01), 0.9).unwrap())
        });
    }

    #[test]
    fn load_state_rejects_foreign_state() {
        let store = store_with(&[("w", vec![1.0, 2.0], vec![2])]);
        let names = store.names();
        let mut sgd = Sgd::new(&store, default_groups(&store, &names, 0.0), 0.9).unwrap();
        sgd.step(&grads(&[("w", vec![1.0, 1.0], vec![2])]), 0.1).unwrap();
        let mut adam = AdamW::new(&store, default_groups(&store, &names, 0.0), AdamWParams::default()).unwrap();
        let err = adam.load_state(&sgd.state_tensors().unwrap()).unwrap_err().to_string();
        assert!(err.contains("adamw.step"), "{err}");
        let mut bad = HashMap::new();
        bad.insert("sgd.step".to_string(), step_tensor(1).unwrap());
        bad.insert("sgd.momentum.w".to_string(), Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap());
        assert!(sgd.load_state(&bad).unwrap_err().to_string().contains("shape"));
    }

    #[test]
    fn clipping_scales_to_max_norm() {
        // norm = sqrt(3² + 4² + 12²) = 13
        let mut g = grads(&[("a", vec![3.0, 4.0], vec![2]), ("b", vec![12.0], vec![1])]);
        let names = vec!["a".to_string(), "b".to_string(), "missing".to_string()];
        let norm = clip_grad_norm(&mut g, &names, 1.0).unwrap();
        assert!((norm - 13.0).abs() < 1e-9);
        let after = clip_grad_norm(&mut g, &names, 100.0).unwrap();
        assert!((after - 1.0).abs() < 1e-5, "{after}");
        close(&to_vec_f32(&g["a"]).unwrap(), &[3.0 / 13.0, 4.0 / 13.0], 1e-5);
        // Below the threshold nothing changes.
        let before = to_vec_f32(&g["b"]).unwrap();
        clip_grad_norm(&mut g, &names, 2.0).unwrap();
        assert_eq!(before, to_vec_f32(&g["b"]).unwrap());
    }

    #[test]
    fn clipping_handles_views_and_shared_storage() {
        // A stride-0 broadcast gradient and two names sharing one tensor.
        let base = Tensor::new(&[2.0f32], &Device::Cpu).unwrap();
        let bc = base.broadcast_as(4).unwrap(); // norm 4
        let shared = Tensor::new(&[3.0f32, 0.0], &Device::Cpu).unwrap();
        let mut g = HashMap::new();
        g.insert("bc".to_string(), bc);
        g.insert("s1".to_string(), shared.clone());
        g.insert("s2".to_string(), shared.clone());
        // total = sqrt(16 + 9 + 9) = sqrt(34)
        let names: Vec<String> = vec!["bc".into(), "s1".into(), "s2".into()];
        let n = clip_grad_norm(&mut g, &names, 1.0).unwrap();
        assert!((n - 34f64.sqrt()).abs() < 1e-9);
        let after = clip_grad_norm(&mut g, &names, 100.0).unwrap();
        assert!((after - 1.0).abs() < 1e-5, "{after}");
        assert_eq!(to_vec_f32(&base).unwrap(), vec![2.0]);
    }

    #[test]
    fn accumulation_of_two_micro_batches_is_the_mean() {
        let mut acc = GradAccumulator::new();
        let g1 = grads(&[("a", vec![1.0, 2.0, 3.0, 4.0], vec![2, 2]), ("b", vec![4.0], vec![1])]);
        let t = Tensor::new(&[[10.0f32, 20.0], [30.0, 40.0]], &Device::Cpu).unwrap();
        let mut g2 = HashMap::new();
        let tt = t.t().unwrap();
        assert!(!tt.is_contiguous());
        g2.insert("a".to_string(), tt); // [[10, 30], [20, 40]], non-contiguous
        acc.add(&g1).unwrap();
        acc.add(&g2).unwrap();
        assert_eq!(acc.micro_batches(), 2);
        let mean = acc.take_mean().unwrap();
        close(&to_vec_f32(&mean["a"]).unwrap(), &[5.5, 16.0, 11.5, 22.0], 1e-7);
        close(&to_vec_f32(&mean["b"]).unwrap(), &[2.0], 1e-7); // missing in batch 2: counts as zero
        assert_eq!(to_vec_f32(&g1["a"]).unwrap(), vec![1.0, 2.0, 3.0, 4.0]); // inputs untouched
        assert_eq!(to_vec_f32(&t).unwrap(), vec![10.0, 20.0, 30.0, 40.0]);
        assert_eq!(acc.micro_batches(), 0);
    }

    /// Timing, not a test of correctness: `cargo test --release --lib optimizer_speed -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn optimizer_speed() {
        let n = 5_250_000;
        let store = store_with(&[("w", vec![0.01; n], vec![n / 1000, 1000])]);
        let mut opt = AdamW::new(&store, default_groups(&store, &store.names(), 0.1), AdamWParams::default()).unwrap();
        let g = grads(&[("w", vec![0.001; n], vec![n / 1000, 1000])]);
        opt.step(&g, 1e-3).unwrap();
        let t0 = std::time::Instant::now();
        let k = 20;
        for _ in 0..k {
            opt.step(&g, 1e-3).unwrap();
        }
        let adamw = t0.elapsed().as_secs_f64() * 1e3 / k as f64;
        // Memory-bandwidth yardstick: one parallel pass reading two buffers and writing one.
        let p = store.get("w").unwrap().as_tensor().clone();
        let t0 = std::time::Instant::now();
        for _ in 0..k {
            update1(&p, &g["w"], |p, g| {
                p.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK)).for_each(|(p, g)| p.iter_mut().zip(g).for_each(|(p, g)| *p += g))
            })
            .unwrap();
        }
        let axpy = t0.elapsed().as_secs_f64() * 1e3 / k as f64;
        let mut sgd = Sgd::new(&store, default_groups(&store, &store.names(), 0.1), 0.9).unwrap();
        sgd.step(&g, 1e-3).unwrap();
        let t0 = std::time::Instant::now();
        for _ in 0..k {
            sgd.step(&g, 1e-3).unwrap();
        }
        let sgd = t0.elapsed().as_secs_f64() * 1e3 / k as f64;
        eprintln!("step over {n} params: AdamW {adamw:.2} ms, SGD+momentum {sgd:.2} ms (p += g: {axpy:.2} ms)");
    }
}
