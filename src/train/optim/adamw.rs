//! AdamW, dense: every element of every parameter with a gradient, in place (the kernel is
//! shared with the pretraining's lazy AdamW over memory rows, `train::values::lazy_adamw`).

use super::tensors::{grad_for, owned_state, param_tensor, step_tensor, update3, validate_groups};
use super::{Optimizer, ParamGroup, CHUNK};
use crate::model::params::ParamStore;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor};
use rayon::prelude::*;
use std::collections::{BTreeMap, HashMap};

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

impl AdamWParams {
    /// The kernel's scalars for a step at `lr` with `weight_decay`, the `t`-th of a parameter
    /// (or row): computed in f64 and rounded to f32 once, the same bits wherever it runs.
    pub(crate) fn kernel(&self, lr: f64, weight_decay: f64, t: usize) -> AdamWKernel {
        let Self { beta1, beta2, eps } = *self;
        let t = t as i32;
        AdamWKernel {
            b1: beta1 as f32,
            b2: beta2 as f32,
            one_m_b1: (1.0 - beta1) as f32,
            one_m_b2: (1.0 - beta2) as f32,
            decay: (1.0 - lr * weight_decay) as f32,
            step_size: (lr / (1.0 - beta1.powi(t))) as f32,
            inv_sqrt_bc2: (1.0 / (1.0 - beta2.powi(t)).sqrt()) as f32,
            eps: eps as f32,
        }
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
        for group in &self.groups {
            let k = self.hp.kernel(lr * group.lr_scale, group.weight_decay, self.t);
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
                    crate::ops::cuda::update::adam_dense(&p, &st.m, &st.v, &g, k.consts(), k.step_size, k.inv_sqrt_bc2)
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
        let (t, kinds) = owned_state(&self.store, &self.groups, state, ("adamw", "AdamW"), &["m", "v"])?;
        let [ms, mut vs]: [BTreeMap<String, Tensor>; 2] = kinds.try_into().expect("two kinds");
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
    /// The scalars every element of a step shares, for the CUDA kernels.
    #[cfg(feature = "cuda")]
    pub(crate) fn consts(&self) -> crate::ops::cuda::update::AdamConsts {
        let Self { b1, b2, one_m_b1, one_m_b2, decay, eps, .. } = *self;
        crate::ops::cuda::update::AdamConsts { b1, b2, one_m_b1, one_m_b2, decay, eps }
    }

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

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;

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
}
