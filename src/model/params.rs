//! Named parameters. Names mirror Hugging Face checkpoint names (`model.layers.0.self_attn.q_proj.weight`):
//! a module asks a `ParamBuilder` for a tensor by path, as with candle-nn's `VarBuilder`.
//!
//! Every parameter is a `Var` in the store. Whether the model sees it as trainable is decided when
//! the model is built: frozen parameters are handed out detached (same storage, no gradient), so
//! backward does no work for them.

use crate::util::rng_for;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Shape, Tensor, Var};
use rand_distr::{Distribution, Normal, Uniform};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Standard deviation of the weights a fresh model draws (GPT-2's; residual projections divide
/// it by sqrt(2 · layers)).
pub const INIT_STD: f64 = 0.02;

/// What the linear layers multiply in. The parameters, their gradients and the optimiser state are
/// f32 either way (the master copies); with `Bf16` each projection casts its input and weight to
/// bf16, multiplies (tensor cores on a GPU), and casts the product back to f32. Norms, RoPE,
/// attention, the loss and the memory layer's value reads stay f32.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    Bf16,
}

impl Precision {
    pub fn is_f32(&self) -> bool {
        *self == Precision::F32
    }

    /// The dtype the linear layers multiply in.
    pub fn matmul_dtype(self) -> candle_core::DType {
        match self {
            Precision::F32 => candle_core::DType::F32,
            Precision::Bf16 => candle_core::DType::BF16,
        }
    }
}

/// How a fresh parameter is initialised.
#[derive(Clone, Copy, Debug)]
pub enum Init {
    Zeros,
    Ones,
    Constant(f64),
    Normal {
        std: f64,
    },
    /// N(0, std²) drawn in parallel for large tables: chunk i of `INIT_CHUNK` elements comes from
    /// its own stream `rng_for(seed, "<name>/chunk-i")`, so the values do not depend on the number
    /// of threads.
    NormalChunked {
        std: f64,
    },
    Uniform {
        bound: f64,
    },
    /// U(±sqrt(6 / (fan_in + fan_out))) for a (out, in) matrix.
    XavierUniform,
}

/// All parameters of a model by name, in a stable (sorted) order.
#[derive(Clone, Default)]
pub struct ParamStore {
    vars: Arc<Mutex<BTreeMap<String, Var>>>,
}

impl ParamStore {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn names(&self) -> Vec<String> {
        self.vars.lock().unwrap().keys().cloned().collect()
    }

    pub fn get(&self, name: &str) -> Option<Var> {
        self.vars.lock().unwrap().get(name).cloned()
    }

    pub fn remove(&self, name: &str) -> Option<Var> {
        self.vars.lock().unwrap().remove(name)
    }

    pub fn insert(&self, name: &str, var: Var) {
        self.vars.lock().unwrap().insert(name.to_string(), var);
    }

    /// (name, var) pairs in name order.
    pub fn all(&self) -> Vec<(String, Var)> {
        self.vars.lock().unwrap().iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    pub fn num_elements(&self) -> usize {
        self.vars.lock().unwrap().values().map(|v| v.elem_count()).sum()
    }

    /// Snapshot of every tensor (detached, sharing storage) for saving.
    pub fn tensors(&self) -> HashMap<String, Tensor> {
        self.vars.lock().unwrap().iter().map(|(k, v)| (k.clone(), v.as_detached_tensor())).collect()
    }

    /// Deep copy (new storage) of every parameter.
    pub fn deep_clone(&self) -> Result<Self> {
        self.copy_on_write(|_| true)
    }

    /// A store of its own over the same parameters: the names `copy` picks get a deep copy (what
    /// a finetuning method will change in place), every other one shares this store's storage.
    /// Inserting, removing or replacing names in either store leaves the other as it is, so a
    /// candidate model costs only what it trains (docs/design.md, "Frozen weights cost nothing").
    pub fn copy_on_write(&self, copy: impl Fn(&str) -> bool) -> Result<Self> {
        let out = ParamStore::new();
        for (k, v) in self.all() {
            let v = if copy(&k) { Var::from_tensor(&v.as_tensor().copy()?)? } else { v };
            out.insert(&k, v);
        }
        Ok(out)
    }

    /// Overwrite values of existing parameters from `tensors` (shapes must agree).
    pub fn assign_from(&self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        for (k, v) in self.all() {
            if let Some(t) = tensors.get(&k) {
                if t.dims() != v.dims() {
                    bail!("tensor {k}: shape {:?} does not match the model's {:?}", t.dims(), v.dims());
                }
                v.set(&t.to_dtype(v.dtype())?.to_device(v.device())?)?;
            }
        }
        Ok(())
    }
}

/// Where a builder takes values from.
#[derive(Clone)]
enum Source {
    /// Fresh, seeded initialisation: each tensor's RNG stream is derived from (seed, name).
    Init { seed: u64 },
    /// Tensors loaded from a checkpoint; a missing or mis-shaped tensor is an error naming it.
    Loaded(Arc<HashMap<String, Tensor>>),
}

/// A path into a `ParamStore`, like candle-nn's `VarBuilder`.
#[derive(Clone)]
pub struct ParamBuilder {
    store: ParamStore,
    prefix: Vec<String>,
    source: Source,
    device: Device,
    trainable: Arc<dyn Fn(&str) -> bool + Send + Sync>,
    /// With loaded tensors: initialise the ones the checkpoint lacks from this seed (new modules
    /// added to a trained model: LoRA adapters, a retrofitted memory layer).
    init_missing: Option<u64>,
    /// LoRA adapters to attach to the linear layers it targets.
    lora: Option<Arc<super::lora_config::LoraConfig>>,
    /// What the linear layers multiply in (`train.precision`); parameters are f32 regardless.
    precision: Precision,
}

impl ParamBuilder {
    /// Builder that initialises fresh parameters from `seed`.
    pub fn fresh(store: &ParamStore, seed: u64, device: &Device) -> Self {
        Self {
            store: store.clone(),
            prefix: vec![],
            source: Source::Init { seed },
            device: device.clone(),
            trainable: Arc::new(|_| true),
            init_missing: None,
            lora: None,
            precision: Precision::F32,
        }
    }

    /// Builder that takes every parameter from `tensors`.
    pub fn from_tensors(store: &ParamStore, tensors: HashMap<String, Tensor>, device: &Device) -> Self {
        Self {
            store: store.clone(),
            prefix: vec![],
            source: Source::Loaded(Arc::new(tensors)),
            device: device.clone(),
            trainable: Arc::new(|_| true),
            init_missing: None,
            lora: None,
            precision: Precision::F32,
        }
    }

    /// Builder over parameters already in `store` (rebuilding a model, e.g. with other parameters frozen).
    pub fn existing(store: &ParamStore, device: &Device) -> Self {
        Self::from_tensors(store, store.tensors(), device)
    }

    /// Parameters whose full name fails `pred` are handed out detached (frozen).
    pub fn with_trainable(mut self, pred: impl Fn(&str) -> bool + Send + Sync + 'static) -> Self {
        self.trainable = Arc::new(pred);
        self
    }

    /// Initialise tensors missing from the loaded ones (seeded by `seed` and their names).
    pub fn with_init_missing(mut self, seed: u64) -> Self {
        self.init_missing = Some(seed);
        self
    }

    /// Attach LoRA adapters (created fresh when absent) to the linear layers `cfg` targets.
    pub fn with_lora(mut self, cfg: super::lora_config::LoraConfig) -> Self {
        self.lora = Some(Arc::new(cfg));
        self
    }

    pub fn lora(&self) -> Option<&super::lora_config::LoraConfig> {
        self.lora.as_deref()
    }

    /// Linear layers multiply in `precision` (bf16 copies of the f32 masters under `Bf16`).
    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        self
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The last component of this builder's path (`q_proj` under `...self_attn.q_proj`).
    pub fn name(&self) -> &str {
        self.prefix.last().map(String::as_str).unwrap_or("")
    }

    pub fn pp(&self, s: impl ToString) -> Self {
        let mut b = self.clone();
        b.prefix.push(s.to_string());
        b
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn path(&self, name: &str) -> String {
        let mut p = self.prefix.clone();
        p.push(name.to_string());
        p.join(".")
    }

    pub fn store(&self) -> &ParamStore {
        &self.store
    }

    /// Get (creating if needed) the parameter `name` under this path.
    pub fn get(&self, shape: impl Into<Shape>, name: &str, init: Init) -> Result<Tensor> {
        let shape = shape.into();
        let full = self.path(name);
        let var = match self.store.get(&full) {
            Some(v) => {
                if v.shape() != &shape {
                    bail!("parameter {full}: stored shape {:?} differs from expected {:?}", v.dims(), shape.dims());
                }
                v
            }
            None => {
                // One copy at most: fresh values become the Var's storage directly, and `from_tensor`
                // gives a loaded tensor storage of its own (this matters for the memory value table).
                let v = match &self.source {
                    Source::Init { seed } => Var::from_vec(init_values(&shape, init, *seed, &full)?, shape.clone(), &self.device)?,
                    Source::Loaded(map) if !map.contains_key(&full) && self.init_missing.is_some() => {
                        Var::from_vec(init_values(&shape, init, self.init_missing.unwrap(), &full)?, shape.clone(), &self.device)?
                    }
                    Source::Loaded(map) => {
                        let t = map.get(&full).with_context(|| format!("tensor `{full}` is missing from the checkpoint"))?;
                        if t.shape() != &shape {
                            bail!("tensor `{full}` has shape {:?} in the checkpoint; the config expects {:?}", t.dims(), shape.dims());
                        }
                        Var::from_tensor(&t.to_dtype(DType::F32)?.to_device(&self.device)?.detach())?
                    }
                };
                self.store.insert(&full, v.clone());
                v
            }
        };
        Ok(if (self.trainable)(&full) { var.as_tensor().clone() } else { var.as_detached_tensor() })
    }

    /// Whether this builder has a value for `name` (for optional tensors such as biases).
    pub fn contains(&self, name: &str) -> bool {
        let full = self.path(name);
        self.store.get(&full).is_some() || matches!(&self.source, Source::Loaded(m) if m.contains_key(&full))
    }

    pub fn is_fresh(&self) -> bool {
        matches!(self.source, Source::Init { .. })
    }
}

/// Elements per independently seeded chunk of `Init::NormalChunked`.
pub const INIT_CHUNK: usize = 1 << 16;

fn init_values(shape: &Shape, init: Init, seed: u64, name: &str) -> Result<Vec<f32>> {
    let n = shape.elem_count();
    let mut rng = rng_for(seed, name);
    let data: Vec<f32> = match init {
        Init::Zeros => vec![0.0; n],
        Init::Ones => vec![1.0; n],
        Init::Constant(c) => vec![c as f32; n],
        Init::Normal { std } => {
            let d = Normal::new(0.0f32, std as f32)?;
            (0..n).map(|_| d.sample(&mut rng)).collect()
        }
        Init::NormalChunked { std } => {
            use rayon::prelude::*;
            let d = Normal::new(0.0f32, std as f32)?;
            let mut data = vec![0f32; n];
            data.par_chunks_mut(INIT_CHUNK).enumerate().for_each(|(i, c)| {
                let mut rng = rng_for(seed, &format!("{name}/chunk-{i}"));
                c.iter_mut().for_each(|x| *x = d.sample(&mut rng));
            });
            data
        }
        Init::Uniform { bound } => {
            let d = Uniform::new_inclusive(-bound as f32, bound as f32)?;
            (0..n).map(|_| d.sample(&mut rng)).collect()
        }
        Init::XavierUniform => {
            let dims = shape.dims();
            let (fan_out, fan_in) = match dims {
                [o, i] => (*o, *i),
                _ => (n, n),
            };
            let b = (6.0 / (fan_in + fan_out) as f64).sqrt() as f32;
            let d = Uniform::new_inclusive(-b, b)?;
            (0..n).map(|_| d.sample(&mut rng)).collect()
        }
    };
    Ok(data)
}

/// Load every tensor of one or more safetensors files (sharded checkpoints), as f32.
pub fn load_safetensors(paths: &[impl AsRef<Path>], device: &Device) -> Result<HashMap<String, Tensor>> {
    let mut out = HashMap::new();
    for p in paths {
        let p = p.as_ref();
        let m = candle_core::safetensors::load(p, device)
            .map_err(|e| crate::MemtuneError::BadCheckpoint { path: p.to_path_buf(), msg: e.to_string() })?;
        for (k, t) in m {
            let t = if t.dtype() == DType::F32 || t.dtype() == DType::U32 { t } else { t.to_dtype(DType::F32)? };
            out.insert(k, t);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> ParamStore {
        let s = ParamStore::new();
        s.insert("a", Var::from_tensor(&Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap()).unwrap());
        s.insert("b", Var::from_tensor(&Tensor::new(&[3f32, 4.0], &Device::Cpu).unwrap()).unwrap());
        s
    }

    fn values(s: &ParamStore, n: &str) -> Vec<f32> {
        s.get(n).unwrap().as_tensor().to_vec1().unwrap()
    }

    #[test]
    fn copy_on_write_copies_only_what_it_is_told_and_the_stores_stay_apart() {
        let base = store();
        let view = base.copy_on_write(|n| n == "b").unwrap();
        // "a" is shared: a write through the view's Var is visible in the base (so methods must
        // copy what they change in place); "b" is a copy: a write stays in the view.
        view.get("b").unwrap().set(&Tensor::new(&[9f32, 9.0], &Device::Cpu).unwrap()).unwrap();
        assert_eq!(values(&base, "b"), vec![3.0, 4.0]);
        assert_eq!(values(&view, "b"), vec![9.0, 9.0]);
        view.get("a").unwrap().set(&Tensor::new(&[5f32, 6.0], &Device::Cpu).unwrap()).unwrap();
        assert_eq!(values(&base, "a"), vec![5.0, 6.0], "`a` was copied although copy() did not pick it");
        // Names added, replaced or removed in the view leave the base's map as it was.
        view.insert("lora", Var::from_tensor(&Tensor::new(&[0f32], &Device::Cpu).unwrap()).unwrap());
        view.insert("a", Var::from_tensor(&Tensor::new(&[7f32, 7.0], &Device::Cpu).unwrap()).unwrap());
        view.remove("b");
        assert_eq!(base.names(), vec!["a", "b"]);
        assert_eq!(values(&base, "a"), vec![5.0, 6.0]);
    }
}
