//! SGD with momentum and L2 weight decay, dense.

use super::tensors::{grad_for, owned_state, param_tensor, step_tensor, update1, update2, validate_groups};
use super::{Optimizer, ParamGroup, CHUNK};
use crate::model::params::ParamStore;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;
use std::collections::{BTreeMap, HashMap};

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
fn sgd_on_device(
    store: &ParamStore,
    bufs: &mut BTreeMap<String, Tensor>,
    momentum: f64,
    name: &str,
    (p, g): (&Tensor, &Tensor),
    (lr, wd, mu): (f32, f32, f32),
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
                    sgd_on_device(&self.store, &mut self.bufs, self.momentum, name, (&p, &g), (lr_g, wd, mu))
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
        let (t, mut kinds) = owned_state(&self.store, &self.groups, state, ("sgd", "SGD"), &["momentum"])?;
        self.t = t;
        self.bufs = kinds.pop().expect("one kind");
        Ok(())
    }

    fn groups(&self) -> &[ParamGroup] {
        &self.groups
    }

    fn name(&self) -> &'static str {
        "sgd"
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;

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
}
