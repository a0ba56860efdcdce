//! LoRA (Hu et al. 2021): y = x Wᵀ + b + (alpha / r) · dropout(x) Aᵀ Bᵀ, with A (r, in) and
//! B (out, r). B starts at zero so the adapted model equals the base model at step 0; only the
//! adapter's delta is scaled, never the base output. Adapters are saved on their own in PEFT's
//! layout (`adapter_model.safetensors` with `base_model.model.` names, `adapter_config.json`)
//! and can be merged into the base weights.

pub use super::lora_config::{LoraConfig, TARGETS};
use super::params::{Init, ParamBuilder, ParamStore};
use crate::io::files::{ADAPTER_CONFIG_FILE, ADAPTER_MODEL_FILE};
use crate::util::rng_for;
use anyhow::{bail, Result};
use candle_core::{Tensor, Var};
use rand::Rng;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// One adapter pair on a linear layer.
#[derive(Clone, Debug)]
pub struct LoraAdapter {
    pub a: Tensor,
    pub b: Tensor,
    pub scale: f64,
    pub dropout: f64,
    /// Dropout masks are drawn from (name, call count): deterministic for a given run.
    name: String,
    calls: Arc<AtomicU64>,
}

impl LoraAdapter {
    /// `lora_A.weight` (r, in) ~ U(±1/√in) (PEFT's Kaiming-uniform with a = √5), `lora_B.weight`
    /// (out, r) = 0, under the linear layer's path.
    pub fn new(pb: &ParamBuilder, cfg: &LoraConfig, in_dim: usize, out_dim: usize) -> Result<Self> {
        let a = pb.pp("lora_A").get((cfg.rank, in_dim), "weight", Init::Uniform { bound: 1.0 / (in_dim as f64).sqrt() })?;
        let b = pb.pp("lora_B").get((out_dim, cfg.rank), "weight", Init::Zeros)?;
        Ok(Self { a, b, scale: cfg.scale(), dropout: cfg.dropout, name: pb.path("lora"), calls: Arc::new(AtomicU64::new(0)) })
    }

    /// scale · dropout(x) Aᵀ Bᵀ for x (N, in).
    pub fn delta(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = if self.dropout > 0.0 && self.a.is_variable() {
            let call = self.calls.fetch_add(1, Ordering::Relaxed);
            let mut rng = rng_for(call, &self.name);
            let keep = 1.0 - self.dropout;
            let mask: Vec<f32> = (0..x.elem_count()).map(|_| if rng.random::<f64>() < keep { (1.0 / keep) as f32 } else { 0.0 }).collect();
            (x * Tensor::from_vec(mask, x.shape(), x.device())?)?
        } else {
            x.clone()
        };
        x.matmul(&self.a.t()?)?.matmul(&self.b.t()?)? * self.scale
    }
}

/// PEFT's name for a memtune adapter tensor.
pub fn peft_name(name: &str) -> String {
    format!("base_model.model.{name}")
}

/// The adapter tensors of a store (names containing `.lora_A.` / `.lora_B.`).
pub fn adapter_names(store: &ParamStore) -> Vec<String> {
    store.names().into_iter().filter(|n| n.contains(".lora_A.") || n.contains(".lora_B.")).collect()
}

/// Save the adapters of `store` in PEFT's layout into `dir`.
pub fn save_peft(store: &ParamStore, cfg: &LoraConfig, base_model: &str, dir: &std::path::Path) -> Result<()> {
    let names = adapter_names(store);
    if names.is_empty() {
        bail!("the model has no LoRA adapters to save");
    }
    std::fs::create_dir_all(dir)?;
    let tensors: HashMap<String, Tensor> = names.iter().map(|n| (peft_name(n), store.get(n).unwrap().as_detached_tensor())).collect();
    let path = dir.join(ADAPTER_MODEL_FILE);
    crate::io::atomic::write_atomic_with(&path, |tmp| Ok(candle_core::safetensors::save(&tensors, tmp)?))?;
    let config = serde_json::json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": cfg.rank,
        "lora_alpha": cfg.alpha,
        "lora_dropout": cfg.dropout,
        "target_modules": cfg.module_names(),
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
    });
    crate::io::atomic::write_atomic(&dir.join(ADAPTER_CONFIG_FILE), serde_json::to_string_pretty(&config)?.as_bytes())
}

/// Fold every adapter into its base weight (W ← W + scale · B A) and remove the adapters from the
/// store. The model must be rebuilt from the store afterwards.
pub fn merge_into_base(store: &ParamStore, cfg: &LoraConfig) -> Result<()> {
    for a_name in adapter_names(store).into_iter().filter(|n| n.contains(".lora_A.")) {
        let base = a_name.replace(".lora_A.weight", ".weight");
        let b_name = a_name.replace(".lora_A.", ".lora_B.");
        let (a, b, w) = match (store.get(&a_name), store.get(&b_name), store.get(&base)) {
            (Some(a), Some(b), Some(w)) => (a, b, w),
            _ => bail!("cannot merge {a_name}: its pair or base weight is missing"),
        };
        let delta = (b.as_tensor().matmul(a.as_tensor())? * cfg.scale())?;
        // A new tensor, not a write into w: other stores may share w's storage (`copy_on_write`).
        store.insert(&base, Var::from_tensor(&(w.as_tensor() + delta)?)?);
        store.remove(&a_name);
        store.remove(&b_name);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn merging_into_a_copy_on_write_view_leaves_the_shared_base_weight_as_it_was() {
        let dev = Device::Cpu;
        let base = ParamStore::new();
        let w = Tensor::new(&[[1f32, 2.0], [3.0, 4.0]], &dev).unwrap();
        base.insert("l.weight", Var::from_tensor(&w).unwrap());
        let view = base.copy_on_write(|_| false).unwrap();
        view.insert("l.lora_A.weight", Var::from_tensor(&Tensor::new(&[[1f32, 1.0]], &dev).unwrap()).unwrap());
        view.insert("l.lora_B.weight", Var::from_tensor(&Tensor::new(&[[1f32], [0.0]], &dev).unwrap()).unwrap());
        let cfg = LoraConfig { rank: 1, alpha: 2.0, ..Default::default() };
        merge_into_base(&view, &cfg).unwrap();
        let merged: Vec<Vec<f32>> = view.get("l.weight").unwrap().as_tensor().to_vec2().unwrap();
        assert_eq!(merged, vec![vec![3.0, 4.0], vec![3.0, 4.0]], "W + (alpha/r) B A");
        let kept: Vec<Vec<f32>> = base.get("l.weight").unwrap().as_tensor().to_vec2().unwrap();
        assert_eq!(kept, vec![vec![1.0, 2.0], vec![3.0, 4.0]], "the merge wrote into the shared base weight");
        assert_eq!(view.names(), vec!["l.weight"]);
    }
}
