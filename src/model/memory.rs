//! The product-key memory layer (Memory+, Berges et al. 2024; docs/design.md, "The memory layer"), a `FeedForward` that
//! takes the place of a block's MLP or runs beside it.
//!
//! Per token x (dim d): q = W_q x + b_q split into heads of k_dim; optional qk-norm (scaled as in
//! attention, see [`qk_norm_weights`]); the knn best of n_keys² slots per head by product keys
//! (`ops::product_key_topk`); softmax weights; the weighted sum of the selected value rows over
//! heads and slots, y (`ops::embedding_bag`); and the Memory+ output out = W2 (y ⊙ silu(W1 x))
//! (`ops::swiglu`).
//!
//! The value table `memory.values` (n_keys² × v_dim) is one pool shared by all memory layers. It is
//! a `Var` in the `ParamStore` (so checkpoints hold it) but the model only ever sees it detached:
//! each forward reads the rows it selected in place (`ops::embedding_bag_from_table`), gives
//! their gradient to a fresh zero (U, v_dim) `Var` that stands for the U distinct rows, and
//! records a [`MemoryTrace`] in the `ForwardCtx`. The training loop turns the traces' gradients into row updates of the table
//! (`train::values`); nothing of the table's size is allocated per step.
//!
//! Checkpoint names (docs/design.md, "The memory layer"): `model.layers.N.memory.query.weight|bias`,
//! `model.layers.N.memory.keys` (heads, 2, n_keys, k_dim/2), `model.layers.N.memory.swilu.weight|bias`
//! (W1), `model.layers.N.memory.out.weight|bias` (W2), `memory.values` (n_keys², v_dim).

use super::config::{LlamaConfig, MemoryConfig, MemoryPlacement};
use super::feed_forward::{FeedForward, ForwardCtx, SwiGluMlp};
use super::linear::Linear;
use super::memory_trace::MemoryTrace;
use super::params::{Init, ParamBuilder, INIT_STD};
use crate::ops;
use crate::ops::slots::unique_inverse;
use anyhow::{ensure, Context, Result};
use candle_core::{DType, Tensor, Var};
use std::sync::Arc;

/// Name of the shared value table in the `ParamStore` and in checkpoints.
pub const VALUES_NAME: &str = "memory.values";
/// A memory layer's own parameters, under `model.layers.N.memory.`: the query projection, the
/// product keys, W1 (`swilu`) and W2 (`out`).
pub const QUERY: &str = "query";
pub const KEYS: &str = "keys";
pub const SWILU: &str = "swilu";
pub const OUT: &str = "out";

/// The name prefix of block `layer`'s memory layer.
pub fn layer_prefix(layer: usize) -> String {
    format!("model.layers.{layer}.memory")
}

/// A parameter of a memory layer (`model.layers.N.memory.*`) or the shared value table.
pub fn is_memory_param(name: &str) -> bool {
    name.contains(".memory.") || name == VALUES_NAME
}

/// A memory layer's addressing: its query projection and keys (what picks the slots).
pub fn is_addressing_param(name: &str) -> bool {
    name.contains(&format!(".memory.{QUERY}.")) || name.ends_with(&format!(".memory.{KEYS}"))
}

/// The shared value table, created (or taken from the builder's source) under the root builder
/// `pb` and handed out detached. With `placement = "parallel"` it starts at zero: the memory then
/// adds exactly 0 to the block (the model's outputs are unchanged) while the values still get a
/// gradient at the first step (d out / d values = W2 ⊙ silu(W1 x) ≠ 0); keys, query and W1 start
/// learning once the values are non-zero. Otherwise values ~ N(0, 1/v_dim).
pub fn value_table(pb: &ParamBuilder, mem: &MemoryConfig) -> Result<Tensor> {
    let init = match mem.placement {
        MemoryPlacement::Replace => Init::NormalChunked { std: 1.0 / (mem.v_dim as f64).sqrt() },
        MemoryPlacement::Parallel => Init::Zeros,
    };
    Ok(pb.pp("memory").get((mem.n_slots(), mem.v_dim), "values", init)?.detach())
}

/// One memory layer (its own query, keys and projections; the values are shared).
pub struct MemoryLayer {
    /// Index of the block it sits in.
    pub layer: usize,
    pub cfg: MemoryConfig,
    /// W_q: d → heads·k_dim, with bias.
    pub query: Linear,
    /// Sub-keys (heads, 2, n_keys, k_dim/2).
    pub keys: Tensor,
    /// W1: d → v_dim, with bias.
    pub swilu: Linear,
    /// W2: v_dim → d, with bias.
    pub out: Linear,
    /// The shared value table (n_keys², v_dim), detached.
    pub values: Tensor,
    /// RMSNorm epsilon of the qk-norm.
    pub eps: f64,
    /// Fixed (not learned) weights of the qk-norm, each (k_dim/2), when enabled: (query, keys).
    /// See [`qk_norm_weights`].
    qk_weights: Option<(Tensor, Tensor)>,
}

/// The fixed weights of the qk-norm for half-width `half` = k_dim/2: (query, sub-keys).
///
/// Each sub-key is RMS-normalised (weight 1: norm √half) and each half-query is normalised to unit
/// L2 norm (weight 1/√half), so a half-score is √half·cos(q_half, key): std ≈ 1 for unrelated
/// directions, the 1/√d scaling of dot-product attention, whatever k_dim. Weight 1 on both makes
/// the softmax over the top-k nearly one-hot and trains worse (docs/design.md, "qk-norm scale").
pub fn qk_norm_weights(half: usize, device: &candle_core::Device) -> Result<(Tensor, Tensor)> {
    let q = Tensor::full((half as f32).sqrt().recip(), half, device)?;
    Ok((q, Tensor::ones(half, DType::F32, device)?))
}

impl MemoryLayer {
    /// Build under `pb` (= `model.layers.N.memory`), reading from the shared `values`.
    pub fn new(cfg: &LlamaConfig, mem: &MemoryConfig, pb: &ParamBuilder, layer: usize, values: &Tensor) -> Result<Self> {
        let d = cfg.hidden_size;
        let w_std = Init::Normal { std: 1.0 / (d as f64).sqrt() };
        // W2 writes into the residual stream in place of the MLP's down_proj, so it is initialised
        // as down_proj and o_proj are, N(0, 0.02/√(2L)), not the reference code's N(0, d^-1/2):
        // this model's residual stream is at 0.02 whatever d (docs/design.md, "Memory output init").
        let out_std = Init::Normal { std: INIT_STD / (2.0 * cfg.num_hidden_layers as f64).sqrt() };
        let key_bound = Init::Uniform { bound: 1.0 / (mem.k_dim as f64).sqrt() };
        Self::from_parts(
            layer,
            mem.clone(),
            Linear::new(&pb.pp(QUERY), d, mem.heads * mem.k_dim, true, Init::XavierUniform)?,
            pb.get((mem.heads, 2, mem.n_keys, mem.k_dim / 2), KEYS, key_bound)?,
            Linear::new(&pb.pp(SWILU), d, mem.v_dim, true, w_std)?,
            Linear::new(&pb.pp(OUT), mem.v_dim, d, true, out_std)?,
            values.detach(),
            cfg.rms_norm_eps,
        )
    }

    /// Assemble from tensors (e.g. for gradient checks that pass their own inputs); shapes checked.
    #[allow(clippy::too_many_arguments)]
    pub fn from_parts(
        layer: usize,
        cfg: MemoryConfig,
        query: Linear,
        keys: Tensor,
        swilu: Linear,
        out: Linear,
        values: Tensor,
        eps: f64,
    ) -> Result<Self> {
        let half = cfg.k_dim / 2;
        ensure!(
            keys.dims() == [cfg.heads, 2, cfg.n_keys, half],
            "memory layer {layer}: keys have shape {:?}, expected ({}, 2, {}, {half})",
            keys.dims(),
            cfg.heads,
            cfg.n_keys
        );
        ensure!(
            values.dims() == [cfg.n_slots(), cfg.v_dim],
            "memory layer {layer}: value table has shape {:?}, expected ({}, {})",
            values.dims(),
            cfg.n_slots(),
            cfg.v_dim
        );
        ensure!(values.dtype() == DType::F32 && values.is_contiguous(), "memory layer {layer}: value table must be contiguous f32");
        ensure!(
            query.weight.dim(0)? == cfg.heads * cfg.k_dim,
            "memory layer {layer}: query has {} outputs, expected heads·k_dim",
            query.weight.dim(0)?
        );
        ensure!(
            swilu.weight.dim(0)? == cfg.v_dim && out.weight.dim(1)? == cfg.v_dim,
            "memory layer {layer}: swilu / out do not match v_dim"
        );
        let qk_weights = if cfg.qk_norm { Some(qk_norm_weights(half, keys.device())?) } else { None };
        Ok(Self { layer, cfg, query, keys, swilu, out, values: values.detach(), eps, qk_weights })
    }
}

impl FeedForward for MemoryLayer {
    fn forward(&self, x: &Tensor, ctx: &mut ForwardCtx) -> Result<Tensor> {
        let (n, _) = x.dims2()?;
        if let Some(mask) = &ctx.token_mask {
            ensure!(mask.len() == n, "ForwardCtx.token_mask has {} entries for {n} positions", mask.len());
        }
        if let Some(inputs) = ctx.memory_inputs.as_mut() {
            inputs.push((self.layer, x.detach()));
        }
        let c = &self.cfg;
        let half = c.k_dim / 2;
        let q = self.query.forward(x)?;
        let (q, keys) = match &self.qk_weights {
            Some((wq, wk)) => (
                ops::rms_norm(&q.reshape((n, c.heads * 2, half))?, wq, self.eps)?.reshape((n, c.heads, c.k_dim))?,
                ops::rms_norm(&self.keys, wk, self.eps)?,
            ),
            None => (q.reshape((n, c.heads, c.k_dim))?, self.keys.clone()),
        };
        let (scores, handle) = ops::product_key_topk(&q, &keys, c.knn)?;
        let w = ops::softmax_rows(&scores)?;
        let slots = handle.get().context("product-key top-k produced no slots")?;
        // The value rows are read in place from the table (no gathered copy). Inference needs
        // nothing else; training also needs the distinct rows, and a zero (rows, v_dim) leaf that
        // stands for them and receives their gradient.
        let (y, trace) = if ctx.skip_memory_traces {
            (ops::embedding_bag(&w, &self.values, slots.clone())?, None)
        } else {
            let (rows, inverse) = unique_inverse(&slots);
            let leaf = Var::zeros((rows.len(), c.v_dim), DType::F32, x.device())?;
            let inverse = Arc::new(inverse);
            let y = ops::embedding_bag_from_table(&w, leaf.as_tensor(), inverse.clone(), &self.values, slots.clone())?;
            (y, Some((leaf, rows, inverse)))
        };
        let h = ops::swiglu(&self.swilu.forward(x)?, &y)?;
        let out = self.out.forward(&h)?;
        if let Some((values, rows, inverse)) = trace {
            ctx.memory.push(MemoryTrace {
                layer: self.layer,
                n_tokens: n,
                heads: c.heads,
                knn: c.knn,
                slots,
                rows: Arc::new(rows),
                inverse,
                values,
                token_mask: ctx.token_mask.clone(),
            });
        }
        Ok(out)
    }
}

/// A memory layer beside the MLP, for retrofitting a trained model: mlp(x) + gate ⊙ memory(x).
///
/// The gate (d, learnable, `memory.gate_init`) lets training scale the memory's contribution per
/// channel against the pretrained MLP's. The values start at 0 ([`value_table`]), so at step 0 the
/// memory adds exactly 0 and the model computes what it computed before; the gate is non-zero, so
/// the values still get their gradient (gate ⊙ W2 ⊙ silu(W1 x) through the softmax weights).
pub struct ParallelMemory {
    pub mlp: SwiGluMlp,
    pub memory: MemoryLayer,
    /// Per-channel gate (d) on the memory's output.
    pub gate: Tensor,
}

impl ParallelMemory {
    pub fn new(mlp: SwiGluMlp, memory: MemoryLayer, pb: &ParamBuilder, d: usize) -> Result<Self> {
        let gate = pb.get(d, "gate", Init::Constant(memory.cfg.gate_init))?;
        Ok(Self { mlp, memory, gate })
    }
}

impl FeedForward for ParallelMemory {
    fn forward(&self, x: &Tensor, ctx: &mut ForwardCtx) -> Result<Tensor> {
        let a = self.mlp.forward(x, ctx)?;
        let m = self.memory.forward(x, ctx)?.broadcast_mul(&self.gate)?;
        Ok((a + m)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::MemoryConfig;
    use crate::model::params::ParamStore;
    use candle_core::Device;

    #[test]
    fn value_init_is_deterministic_and_scaled() {
        let mem = MemoryConfig { layers: vec![0], n_keys: 300, v_dim: 16, ..Default::default() };
        let make = || {
            let store = ParamStore::new();
            value_table(&ParamBuilder::fresh(&store, 11, &Device::Cpu), &mem).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
        };
        let (a, b) = (make(), make());
        assert_eq!(a.len(), 90_000 * 16);
        assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
        let var = a.iter().map(|x| (x * x) as f64).sum::<f64>() / a.len() as f64;
        assert!((var * 16.0 - 1.0).abs() < 0.01, "variance {var} vs 1/16");
        // Chunks are independent streams.
        assert_ne!(a[..16], a[crate::model::params::INIT_CHUNK..crate::model::params::INIT_CHUNK + 16]);
        let par = MemoryConfig { placement: MemoryPlacement::Parallel, ..mem };
        let store = ParamStore::new();
        let z = value_table(&ParamBuilder::fresh(&store, 11, &Device::Cpu), &par).unwrap();
        assert_eq!(z.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
    }

    /// The memory layer at the size of the brief: 1024 tokens, d 256, n_keys 1024 (1M slots),
    /// heads 4, knn 32, k_dim 128, v_dim 256. Forward + backward of sum(out ⊙ r), no optimiser.
    /// `cargo test --release --lib timing_memory_layer -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn timing_memory_layer() {
        let mem = MemoryConfig { layers: vec![0], n_keys: 1024, heads: 4, knn: 32, k_dim: 128, v_dim: 256, ..Default::default() };
        let cfg = LlamaConfig { hidden_size: 256, num_hidden_layers: 1, memory: Some(mem.clone()), ..Default::default() };
        let store = ParamStore::new();
        let pb = ParamBuilder::fresh(&store, 0, &Device::Cpu);
        let t0 = std::time::Instant::now();
        let values = value_table(&pb, &mem).unwrap();
        println!("value table init (1M x 256): {:.0} ms", t0.elapsed().as_secs_f64() * 1e3);
        let layer = MemoryLayer::new(&cfg, &mem, &pb.pp("m"), 0, &values).unwrap();
        let x = Var::from_tensor(&ops::gradcheck::randn((1024, 256), 1).unwrap()).unwrap();
        let r = ops::gradcheck::randn((1024, 256), 2).unwrap();
        let fwd = ops::timing::time_op(|| {
            let mut ctx = ForwardCtx::default();
            layer.forward(x.as_tensor(), &mut ctx).map(|_| ()).map_err(|e| candle_core::Error::Msg(e.to_string()))
        });
        let mut rows = 0;
        let both = ops::timing::time_op(|| {
            let mut ctx = ForwardCtx::default();
            let y = layer.forward(x.as_tensor(), &mut ctx).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            let g = (y * &r)?.sum_all()?.backward()?;
            assert!(g.get(ctx.memory[0].values.as_tensor()).is_some());
            rows = ctx.memory[0].rows.len();
            Ok(())
        });
        println!("memory layer fwd: {fwd}; fwd+bwd: {both} ({rows} distinct rows touched)");
    }
}
