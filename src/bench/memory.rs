//! `memtune bench memory`: forward + backward time per token of one memory layer alone, for
//! several pool sizes with the other dimensions fixed. Product keys make the cost grow with
//! √N and k, not N: this is where that is checked.

use crate::model::memory::{value_table, MemoryLayer};
use crate::model::{FeedForward, ForwardCtx, LlamaConfig, MemoryConfig, ParamBuilder, ParamStore};
use crate::util::rng_for;
use anyhow::Result;
use candle_core::{Device, Tensor};
use rand_distr::{Distribution, StandardNormal};
use serde::Serialize;
use std::sync::Arc;
use std::time::Instant;

#[derive(Clone, Debug)]
pub struct MemoryBenchOptions {
    pub n_keys: Vec<usize>,
    pub tokens: usize,
    pub d_model: usize,
    pub heads: usize,
    pub knn: usize,
    pub k_dim: usize,
    pub v_dim: usize,
    pub warmup: usize,
    pub reps: usize,
    pub device: Device,
}

#[derive(Debug, Serialize)]
pub struct MemoryBenchLine {
    pub n_keys: usize,
    pub slots: usize,
    pub tokens: usize,
    pub fwd_ms: f64,
    pub fwd_bwd_ms: f64,
    pub us_per_token: f64,
    /// Distinct value rows touched per step.
    pub rows_touched: usize,
    /// fwd+bwd time relative to the first (smallest) pool of this run.
    pub ratio_to_first: f64,
    /// Median time of the value read alone: the embedding bag over the layer's own slots, reading
    /// the rows in place from the table (what the published EmbeddingBag / Triton kernels time).
    pub value_read_ms: f64,
    /// tokens × heads × knn rows of v_dim f32 per second in `value_read_ms`, against the device's
    /// memory bandwidth (an H100: ~3,000 GB/s).
    pub value_read_gb_per_s: f64,
    /// The same bytes per second of the whole layer forward (`fwd_ms`: queries, top-k, read,
    /// output projection).
    pub layer_fwd_gb_per_s: f64,
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// One memory layer and a fixed input, ready to time.
pub struct LayerBench {
    layer: MemoryLayer,
    x: Tensor,
    proj: Tensor,
    values: Tensor,
}

impl LayerBench {
    pub fn new(o: &MemoryBenchOptions, n_keys: usize) -> Result<Self> {
        let dev = o.device.clone();
        let mut rng = rng_for(0, "bench-memory");
        let mut normal = |n: usize| -> Vec<f32> { (0..n).map(|_| StandardNormal.sample(&mut rng)).collect() };
        let x = Tensor::from_vec(normal(o.tokens * o.d_model), (o.tokens, o.d_model), &dev)?;
        let proj = Tensor::from_vec(normal(o.tokens * o.d_model), (o.tokens, o.d_model), &dev)?;
        let mem =
            MemoryConfig { layers: vec![0], n_keys, heads: o.heads, knn: o.knn, k_dim: o.k_dim, v_dim: o.v_dim, ..Default::default() };
        let cfg = LlamaConfig { hidden_size: o.d_model, num_hidden_layers: 1, memory: Some(mem.clone()), ..Default::default() };
        let pb = ParamBuilder::fresh(&ParamStore::new(), 0, &dev);
        let values = value_table(&pb, &mem)?;
        let layer = MemoryLayer::new(&cfg, &mem, &pb.pp("model.layers.0.memory"), 0, &values)?;
        Ok(Self { layer, x, proj, values })
    }

    /// The value read's inputs: random weights over the slots this input selects.
    pub fn value_read_inputs(&self) -> Result<(Tensor, Arc<Vec<u32>>)> {
        let mut ctx = ForwardCtx::default();
        self.layer.forward(&self.x, &mut ctx)?;
        let slots = ctx.memory.swap_remove(0).slots;
        let w = Tensor::rand(0f32, 1.0, slots.len(), self.x.device())?.reshape((self.x.dim(0)?, ()))?;
        Ok((w, slots))
    }

    /// The value read alone, once, in place from the table: (ms).
    pub fn value_read(&self, w: &Tensor, slots: &Arc<Vec<u32>>) -> Result<f64> {
        self.x.device().synchronize()?;
        let t0 = Instant::now();
        let y = crate::ops::embedding_bag(w, &self.values, slots.clone())?;
        self.x.device().synchronize()?;
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        std::hint::black_box(y);
        Ok(ms)
    }

    /// Forward and backward once: (forward ms, forward+backward ms, distinct rows touched).
    pub fn fwd_bwd(&self) -> Result<(f64, f64, usize)> {
        let t0 = Instant::now();
        let mut ctx = ForwardCtx::default();
        let y = self.layer.forward(&self.x, &mut ctx)?;
        // A GPU runs asynchronously: wait for it before reading the clock.
        self.x.device().synchronize()?;
        let t_fwd = t0.elapsed().as_secs_f64();
        let grads = (y * &self.proj)?.sum_all()?.backward()?;
        std::hint::black_box(grads.get(ctx.memory[0].values.as_tensor()));
        self.x.device().synchronize()?;
        Ok((t_fwd * 1e3, t0.elapsed().as_secs_f64() * 1e3, ctx.memory[0].rows.len()))
    }
}

/// One JSON-able line per pool size, in the order given.
pub fn run(o: &MemoryBenchOptions, mut on_line: impl FnMut(&MemoryBenchLine)) -> Result<Vec<MemoryBenchLine>> {
    let mut out: Vec<MemoryBenchLine> = vec![];
    for &n_keys in &o.n_keys {
        let bench = LayerBench::new(o, n_keys)?;
        let (mut fwd, mut both, mut rows) = (vec![], vec![], 0);
        for rep in 0..o.warmup + o.reps {
            let (f, b, r) = bench.fwd_bwd()?;
            rows = r;
            if rep >= o.warmup {
                fwd.push(f);
                both.push(b);
            }
        }
        let (w, slots) = bench.value_read_inputs()?;
        let read: Vec<f64> = (0..o.warmup + o.reps).map(|_| bench.value_read(&w, &slots)).collect::<Result<_>>()?;
        let value_read_ms = median(read[o.warmup..].to_vec());
        let fwd_bwd_ms = median(both);
        let median_fwd_ms = median(fwd);
        let first = out.first().map(|l| l.fwd_bwd_ms).unwrap_or(fwd_bwd_ms);
        let value_bytes = (o.tokens * o.heads * o.knn * o.v_dim * 4) as f64;
        let line = MemoryBenchLine {
            n_keys,
            slots: n_keys * n_keys,
            tokens: o.tokens,
            fwd_ms: median_fwd_ms,
            fwd_bwd_ms,
            us_per_token: fwd_bwd_ms * 1e3 / o.tokens as f64,
            rows_touched: rows,
            ratio_to_first: fwd_bwd_ms / first,
            value_read_ms,
            value_read_gb_per_s: value_bytes / (value_read_ms * 1e-3) / 1e9,
            layer_fwd_gb_per_s: value_bytes / (median_fwd_ms * 1e-3) / 1e9,
        };
        on_line(&line);
        out.push(line);
    }
    Ok(out)
}
