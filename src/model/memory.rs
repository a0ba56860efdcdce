//! The product-key memory layer (Memory+, Berges et al. 2024; DESIGN.md §1), a `FeedForward` that
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
//! (`train::sparse_values`); nothing of the table's size is allocated per step.
//!
//! Checkpoint names (DESIGN.md §1): `model.layers.N.memory.query.weight|bias`,
//! `model.layers.N.memory.keys` (heads, 2, n_keys, k_dim/2), `model.layers.N.memory.swilu.weight|bias`
//! (W1), `model.layers.N.memory.out.weight|bias` (W2), `memory.values` (n_keys², v_dim).

use super::config::{LlamaConfig, MemoryConfig, MemoryPlacement};
use super::linear::Linear;
use super::llama::{FeedForward, ForwardCtx, SwiGluMlp};
use super::params::{Init, ParamBuilder};
use crate::ops;
use anyhow::{ensure, Context, Result};
use candle_core::{DType, Tensor, Var};
use rayon::prelude::*;
use std::sync::Arc;

/// Name of the shared value table in the `ParamStore` and in checkpoints.
pub const VALUES_NAME: &str = "memory.values";

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

/// Std of the model's residual-stream init (`llama.rs`: embeddings N(0, 0.02); output projections
/// into the residual stream N(0, 0.02/√(2L))).
const RESID_INIT_STD: f64 = 0.02;

/// The fixed weights of the qk-norm for half-width `half` = k_dim/2: (query, sub-keys).
///
/// Each sub-key is RMS-normalised (weight 1: norm √half) and each half-query is normalised to unit
/// L2 norm (weight 1/√half), so a half-score is √half·cos(q_half, key): std ≈ 1 for unrelated
/// directions, at most √half — the 1/√d scaling of dot-product attention, whatever k_dim. With
/// weight 1 on both (what DESIGN.md §1's "RMSNorm on each half-query and on the sub-keys" gives
/// without a scale) a half-score is half·cos, √half times larger, and the softmax over the top-k is
/// nearly one-hot. Measured on configs/tiny-memory-test.toml (k_dim 32, knn 8): top-1 weight 0.45
/// at init, 0.76 after 800 steps (top-1 minus top-8 score 5.5); the memory acted as a hard hash
/// whose output jumps whenever a selection changes, and the model trained worse than with the slot
/// left empty (held-out 0.578 vs 0.490 at 1,600 steps; the MLP 0.492). With one block, 800 steps:
/// unscaled 0.81 (empty slot 0.80, MLP 0.655), scaled 0.69–0.72, no qk-norm 0.72–0.73. With this
/// scale the top-1 weight is ~0.25, about the reference code's (no qk-norm: keys U(±1/√k_dim),
/// queries of RMS ~1). The sharp version memorises a random input → class table faster (a lone
/// layer, 30K items: 71% vs 44% after 200 full-batch steps), but a language model is not that.
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
        // as this model initialises down_proj and o_proj, N(0, 0.02/√(2L)), not N(0, d^-1/2)
        // (DESIGN.md §1, from the reference code). The reference builds its residual stream at the
        // same d^-1/2 scale (embeddings N(0, d^-1/2), ≈ 0.02 at its widths, d ≥ 1024); this model
        // builds it at 0.02 whatever d, so at d 64 a d^-1/2 W2 made the memory's output 3× the
        // residual stream at init (RMS 0.061 vs 0.02) and 0.23 after 800 steps: a large,
        // slot-dependent signal the rest of the model had to learn around. The values' effect on
        // the output scales with W2: the tiny config raises value_lr from 1e-2 to 1e-1 with it (the
        // §4b config's 5e-3 did as well as 2e-2 and 5e-2 there, 1e-1 worse).
        // Measured, one-block tiny model, 800 steps, seeds 0/1: 0.693 / 0.722 with d^-1/2 (value_lr
        // 1e-2; 3e-2: 0.687 / 0.740), 0.673 / 0.655 with this init (the MLP 0.653 / 0.660). §4b
        // config, 600 steps, seeds 0/1: 1.136 / 1.174 before both changes, 1.095 / 1.104 after (the
        // MLP 1.118 / 1.094).
        let out_std = Init::Normal { std: RESID_INIT_STD / (2.0 * cfg.num_hidden_layers as f64).sqrt() };
        let key_bound = Init::Uniform { bound: 1.0 / (mem.k_dim as f64).sqrt() };
        Self::from_parts(
            layer,
            mem.clone(),
            Linear::new(&pb.pp("query"), d, mem.heads * mem.k_dim, true, Init::XavierUniform)?,
            pb.get((mem.heads, 2, mem.n_keys, mem.k_dim / 2), "keys", key_bound)?,
            Linear::new(&pb.pp("swilu"), d, mem.v_dim, true, w_std)?,
            Linear::new(&pb.pp("out"), mem.v_dim, d, true, out_std)?,
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
        ensure!(query.weight.dim(0)? == cfg.heads * cfg.k_dim, "memory layer {layer}: query has {} outputs, expected heads·k_dim", query.weight.dim(0)?);
        ensure!(swilu.weight.dim(0)? == cfg.v_dim && out.weight.dim(1)? == cfg.v_dim, "memory layer {layer}: swilu / out do not match v_dim");
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

/// What one memory layer read in one forward.
pub struct MemoryTrace {
    /// Index of the block.
    pub layer: usize,
    pub n_tokens: usize,
    pub heads: usize,
    pub knn: usize,
    /// Selected slots (n_tokens, heads, knn), token-major.
    pub slots: Arc<Vec<u32>>,
    /// The distinct selected slots, ascending: row i of `values` is slot `rows[i]` of the table.
    pub rows: Arc<Vec<u32>>,
    /// For each entry of `slots`, its position in `rows`.
    pub inverse: Arc<Vec<u32>>,
    /// A zero (U, v_dim) leaf standing for the rows (the forward reads them in place from the
    /// table): its gradient is the table's sparse gradient, row i for slot `rows[i]`.
    pub values: Var,
    /// `ForwardCtx::token_mask` of the forward (None: every position is a real token).
    pub token_mask: Option<Vec<bool>>,
}

impl MemoryTrace {
    fn is_real(&self, t: usize) -> bool {
        self.token_mask.as_ref().is_none_or(|m| m[t])
    }

    /// Accesses (token × head × top-k) of each of `rows` by real tokens; padding is not counted.
    pub fn row_access_counts(&self) -> Vec<u32> {
        let mut c = vec![0u32; self.rows.len()];
        let per_tok = self.heads * self.knn;
        for t in (0..self.n_tokens).filter(|&t| self.is_real(t)) {
            for &u in &self.inverse[t * per_tok..(t + 1) * per_tok] {
                c[u as usize] += 1;
            }
        }
        c
    }

    /// Slot → number of accesses by real tokens.
    pub fn access_counts(&self) -> AccessCounts {
        let c = self.row_access_counts();
        let (slots, counts) = self.rows.iter().zip(&c).filter(|(_, &n)| n > 0).map(|(&s, &n)| (s, n)).unzip();
        AccessCounts { slots, counts }
    }
}

/// Accesses per slot (over tokens × heads × top-k, padding excluded), sparse and sorted by slot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccessCounts {
    /// Accessed slots, ascending.
    pub slots: Vec<u32>,
    /// Number of accesses of each slot (> 0).
    pub counts: Vec<u32>,
}

impl AccessCounts {
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Σ counts
    pub fn total(&self) -> u64 {
        self.counts.iter().map(|&c| c as u64).sum()
    }

    /// Accesses of `slot` (0 if never accessed).
    pub fn get(&self, slot: u32) -> u32 {
        self.slots.binary_search(&slot).map(|i| self.counts[i]).unwrap_or(0)
    }

    /// Add another batch's (or layer's) counts.
    pub fn merge(&mut self, other: &AccessCounts) {
        let (a, b) = (std::mem::take(self), other);
        let (mut i, mut j) = (0, 0);
        while i < a.len() || j < b.len() {
            let take_a = j == b.len() || (i < a.len() && a.slots[i] <= b.slots[j]);
            let take_b = i == a.len() || (j < b.len() && b.slots[j] <= a.slots[i]);
            let slot = if take_a { a.slots[i] } else { b.slots[j] };
            let mut n = 0;
            if take_a {
                n += a.counts[i];
                i += 1;
            }
            if take_b {
                n += b.counts[j];
                j += 1;
            }
            self.slots.push(slot);
            self.counts.push(n);
        }
    }
}

/// Access counts of one forward over all its memory layers (a slot read by two layers counts
/// twice: it is the same row of the shared table).
pub fn access_counts(traces: &[MemoryTrace]) -> AccessCounts {
    let mut out = AccessCounts::default();
    for t in traces {
        out.merge(&t.access_counts());
    }
    out
}

/// (distinct values ascending, position of each input value among them).
pub fn unique_inverse(slots: &[u32]) -> (Vec<u32>, Vec<u32>) {
    let mut rows = slots.to_vec();
    rows.par_sort_unstable();
    rows.dedup();
    let inverse = slots.par_iter().map(|s| rows.binary_search(s).expect("value is among the rows") as u32).collect();
    (rows, inverse)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::MemoryConfig;
    use crate::model::params::ParamStore;
    use candle_core::Device;

    #[test]
    fn unique_inverse_roundtrip() {
        let s = vec![5u32, 3, 5, 9, 0, 3];
        let (rows, inv) = unique_inverse(&s);
        assert_eq!(rows, vec![0, 3, 5, 9]);
        assert_eq!(inv.iter().map(|&i| rows[i as usize]).collect::<Vec<_>>(), s);
    }

    #[test]
    fn access_counts_merge_and_mask() {
        let a = AccessCounts { slots: vec![1, 4, 7], counts: vec![2, 1, 3] };
        let b = AccessCounts { slots: vec![0, 4, 9], counts: vec![1, 5, 1] };
        let mut m = a.clone();
        m.merge(&b);
        assert_eq!(m, AccessCounts { slots: vec![0, 1, 4, 7, 9], counts: vec![1, 2, 6, 3, 1] });
        assert_eq!((m.total(), m.get(4), m.get(5)), (13, 6, 0));
        // Two tokens, one head, knn 2; the second token is padding.
        let slots = Arc::new(vec![8u32, 3, 3, 6]);
        let (rows, inv) = unique_inverse(&slots);
        let trace = MemoryTrace {
            layer: 0,
            n_tokens: 2,
            heads: 1,
            knn: 2,
            slots,
            rows: Arc::new(rows),
            inverse: Arc::new(inv),
            values: Var::zeros((3, 1), DType::F32, &Device::Cpu).unwrap(),
            token_mask: Some(vec![true, false]),
        };
        assert_eq!(trace.access_counts(), AccessCounts { slots: vec![3, 8], counts: vec![1, 1] });
        assert_eq!(trace.row_access_counts(), vec![1, 0, 1]);
    }

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
