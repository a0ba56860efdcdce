//! Data-dependent initialisation of a memory layer retrofitted onto a trained model.
//!
//! A trained model's hidden states are far from isotropic: they share a large mean direction and a
//! few channels of outsized variance. A random query projection of such inputs points almost the
//! same way for every token, so the product-key top-k sends every token to the same few hundred
//! slots and sparse finetuning has nothing specific to update (docs/design.md, "Memory retrofit").
//! Standardising the query's input per channel (folded into the projection's weight and bias, so
//! the layer stays a plain `Linear`) spreads the queries before training starts.

use crate::data::batches::BatchSource;
use crate::model::memory::{layer_prefix, QUERY};
use crate::model::params::ParamStore;
use crate::model::{ForwardCtx, Llama};
use anyhow::{Context, Result};
use candle_core::{DType, Tensor, D};

/// Floor on a channel's std, so a constant channel is not amplified without bound.
const MIN_STD: f64 = 1e-4;

/// Per memory layer: the ratio of the largest to the smallest channel std of its input (how far
/// from isotropic the input was).
#[derive(Debug, Clone, serde::Serialize)]
pub struct QueryStats {
    pub layer: usize,
    pub tokens: usize,
    pub std_ratio: f64,
}

/// Fold each memory layer's input statistics over `batches` batches of `source` into its query
/// projection: W' = W · diag(s̄/s), b' = b − W'μ (μ, s: the input's per-channel mean and std, s̄
/// their RMS), so the query sees standardised inputs at the same overall scale.
pub fn standardize_memory_queries(
    model: &Llama,
    store: &ParamStore,
    source: &mut dyn BatchSource,
    batches: usize,
) -> Result<Vec<QueryStats>> {
    let dev = model.device().clone();
    let mut inputs: Vec<(usize, Vec<Tensor>)> = vec![];
    for _ in 0..batches {
        let b = source.next_batch()?;
        let (tokens, _) = b.to_tensors(&dev)?;
        let mut ctx = ForwardCtx { memory_inputs: Some(vec![]), skip_memory_traces: true, ..Default::default() };
        model.hidden(&tokens, None, &mut ctx)?;
        let keep = b.mask.as_ref().map(|m| m.iter().enumerate().filter(|(_, &k)| k).map(|(i, _)| i as u32).collect::<Vec<u32>>());
        for (layer, x) in ctx.memory_inputs.unwrap_or_default() {
            let x = match &keep {
                Some(idx) => x.index_select(&Tensor::new(idx.as_slice(), &dev)?, 0)?,
                None => x,
            };
            match inputs.iter_mut().find(|(l, _)| *l == layer) {
                Some((_, xs)) => xs.push(x),
                None => inputs.push((layer, vec![x])),
            }
        }
    }
    let mut out = vec![];
    for (layer, xs) in inputs {
        let x = Tensor::cat(&xs, 0)?.to_dtype(DType::F32)?;
        let n = x.dim(0)?;
        let mu = x.mean_keepdim(0)?;
        let std = x.broadcast_sub(&mu)?.sqr()?.mean_keepdim(0)?.sqrt()?.clamp(MIN_STD, f64::MAX)?;
        let rms = std.sqr()?.mean_all()?.sqrt()?.to_scalar::<f32>()? as f64;
        let scale = std.recip()?.affine(rms, 0.0)?; // (1, D)
        let name = format!("{}.{QUERY}", layer_prefix(layer));
        let w = store.get(&format!("{name}.weight")).with_context(|| format!("{name}.weight is not in the model"))?;
        let b = store.get(&format!("{name}.bias")).with_context(|| format!("{name}.bias is not in the model"))?;
        let w_new = w.as_tensor().to_dtype(DType::F32)?.broadcast_mul(&scale)?;
        let shift = w_new.broadcast_mul(&mu)?.sum(D::Minus1)?; // W'μ, (out)
        let b_new = (b.as_tensor().to_dtype(DType::F32)? - shift)?;
        w.set(&w_new.to_dtype(w.dtype())?)?;
        b.set(&b_new.to_dtype(b.dtype())?)?;
        let v: Vec<f32> = std.flatten_all()?.to_vec1()?;
        let (lo, hi) = v.iter().fold((f32::MAX, 0f32), |(lo, hi), &s| (lo.min(s), hi.max(s)));
        out.push(QueryStats { layer, tokens: n, std_ratio: (hi / lo) as f64 });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::params::ParamBuilder;
    use candle_core::Device;

    /// After the fold, the query of the inputs it was computed on equals W·standardised(x) + b:
    /// zero mean over the tokens for every output.
    #[test]
    fn folded_query_has_zero_mean_over_the_calibration_tokens() {
        let dev = Device::Cpu;
        let cfg = crate::config::ExperimentConfig::from_toml_str(
            include_str!("../../configs/tiny-memory-test.toml"),
            "tiny-memory-test.toml",
            &[],
        )
        .unwrap();
        let store = ParamStore::new();
        let model = Llama::new(&cfg.model, &ParamBuilder::fresh(&store, 0, &dev)).unwrap();
        let tokens: Vec<u32> = (0..64u32).map(|i| (i * 7 + 3) % cfg.model.vocab_size as u32).collect();
        struct Fixed(Vec<u32>);
        impl BatchSource for Fixed {
            fn next_batch(&mut self) -> Result<crate::data::batches::Batch> {
                Ok(crate::data::batches::Batch { inputs: self.0.clone(), targets: self.0.clone(), batch: 2, seq: 32, mask: None })
            }
            fn position(&self) -> crate::data::batches::DataPosition {
                crate::data::batches::DataPosition {
                    kind: "fixed".into(),
                    fingerprint: String::new(),
                    seed: 0,
                    next_doc: 0,
                    doc_offset: 0,
                    batches: 0,
                }
            }
        }
        let mut src = Fixed(tokens.clone());
        let layer = cfg.model.memory.as_ref().unwrap().layers[0];
        let before = store.get(&format!("model.layers.{layer}.memory.query.weight")).unwrap().as_tensor().copy().unwrap();
        let stats = standardize_memory_queries(&model, &store, &mut src, 1).unwrap();
        assert_eq!(stats.len(), 1);
        assert_eq!(stats[0].tokens, 64);
        let after = store.get(&format!("model.layers.{layer}.memory.query.weight")).unwrap().as_tensor().copy().unwrap();
        assert!((before - &after).unwrap().abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0);
        // Re-capture the inputs (the layers below are unchanged) and apply the new projection.
        let mut ctx = ForwardCtx { memory_inputs: Some(vec![]), skip_memory_traces: true, ..Default::default() };
        model.hidden(&Tensor::from_vec(tokens, (2, 32), &dev).unwrap(), None, &mut ctx).unwrap();
        let x = &ctx.memory_inputs.as_ref().unwrap()[0].1;
        let bias = store.get(&format!("model.layers.{layer}.memory.query.bias")).unwrap();
        let q = x.matmul(&after.t().unwrap()).unwrap().broadcast_add(bias.as_tensor()).unwrap();
        let mean: Vec<f32> = q.mean(0).unwrap().to_vec1().unwrap();
        let scale: f32 = q.abs().unwrap().mean_all().unwrap().to_scalar().unwrap();
        assert!(mean.iter().all(|m| m.abs() < 1e-4 * scale.max(1.0)), "query means {mean:?}");
    }
}
