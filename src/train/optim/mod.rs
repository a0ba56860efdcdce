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

mod accumulate;
mod adamw;
mod clip;
mod sgd;
mod tensors;

pub use accumulate::GradAccumulator;
pub(crate) use adamw::AdamWKernel;
pub use adamw::{AdamW, AdamWParams};
pub use clip::{clip_grad_norm, clip_scale, grad_sum_squares, scale_grads};
pub use sgd::Sgd;
pub(crate) use tensors::{read_step, step_tensor};

use crate::model::params::ParamStore;
use anyhow::Result;
use candle_core::Tensor;
use std::collections::HashMap;

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

/// The optimiser `cfg.optimizer` names, with its hyper-parameters from `cfg`.
pub fn optimizer_from_config(cfg: &crate::config::TrainConfig, store: &ParamStore, groups: Vec<ParamGroup>) -> Result<Box<dyn Optimizer>> {
    Ok(match cfg.optimizer {
        crate::config::OptimizerKind::Adamw => Box::new(AdamW::new(store, groups, AdamWParams::from_config(cfg))?),
        crate::config::OptimizerKind::Sgd => Box::new(Sgd::new(store, groups, cfg.momentum)?),
    })
}

#[cfg(test)]
mod test_util {
    use crate::model::params::ParamStore;
    use crate::ops::access::to_vec_f32;
    use candle_core::{Device, Tensor, Var};
    use std::collections::HashMap;

    pub(super) fn store_with(params: &[(&str, Vec<f32>, Vec<usize>)]) -> ParamStore {
        let s = ParamStore::new();
        for (n, v, shape) in params {
            s.insert(n, Var::from_tensor(&Tensor::from_vec(v.clone(), shape.as_slice(), &Device::Cpu).unwrap()).unwrap());
        }
        s
    }

    pub(super) fn val(s: &ParamStore, n: &str) -> Vec<f32> {
        to_vec_f32(s.get(n).unwrap().as_tensor()).unwrap()
    }

    pub(super) fn grads(items: &[(&str, Vec<f32>, Vec<usize>)]) -> HashMap<String, Tensor> {
        items.iter().map(|(n, v, s)| (n.to_string(), Tensor::from_vec(v.clone(), s.as_slice(), &Device::Cpu).unwrap())).collect()
    }

    pub(super) fn close(a: &[f32], b: &[f64], tol: f64) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((*x as f64 - y).abs() <= tol * (1.0 + y.abs()), "{a:?} vs {b:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::tensors::update1;
    use super::test_util::*;
    use super::*;
    use candle_core::{DType, Device, Var};
    use rayon::prelude::*;

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
