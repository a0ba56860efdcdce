//! `memtune bench generate`: prefill and decode speed with the KV cache, for a model folder (a
//! real checkpoint) or a config's architecture with random weights. Decoding is greedy over
//! random prompt tokens: the cost does not depend on what is generated.

use crate::model::{ForwardCtx, KvCache, Llama};
use crate::util::rng_for;
use anyhow::{ensure, Result};
use candle_core::Tensor;
use rand::Rng;
use serde::Serialize;
use std::time::Instant;

#[derive(Clone, Debug)]
pub struct GenerateBenchOptions {
    pub prompt_tokens: usize,
    pub new_tokens: usize,
    /// Sequences decoded together (prompts of one length).
    pub batch: usize,
    /// Untimed runs before the timed ones.
    pub warmup: usize,
    /// Timed runs; the report gives the median.
    pub runs: usize,
    pub seed: u64,
}

impl Default for GenerateBenchOptions {
    fn default() -> Self {
        Self { prompt_tokens: 128, new_tokens: 64, batch: 1, warmup: 1, runs: 3, seed: 0 }
    }
}

#[derive(Debug, Serialize)]
pub struct GenerateReport {
    pub params: usize,
    pub batch: usize,
    pub prompt_tokens: usize,
    pub new_tokens: usize,
    /// Median over runs: the prompt's forward pass (filling the cache), in ms and tokens/s.
    pub prefill_ms: f64,
    pub prefill_tokens_per_s: f64,
    /// Median over runs: one-token steps with the cache, per generated token (all rows).
    pub decode_ms_per_token: f64,
    pub decode_tokens_per_s: f64,
    pub threads: usize,
}

/// One timed run: (prefill seconds, decode seconds) for `new_tokens` greedy steps.
fn one_run(model: &Llama, prompts: &Tensor, new_tokens: usize) -> Result<(f64, f64)> {
    let mut ctx = ForwardCtx::inference();
    let mut cache = KvCache::new(model.cfg.num_hidden_layers);
    let t0 = Instant::now();
    let mut next = model.last_logits(prompts, Some(&mut cache), &mut ctx)?.argmax(1)?.to_dtype(candle_core::DType::U32)?;
    let prefill = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    for _ in 1..new_tokens {
        let logits = model.last_logits(&next.unsqueeze(1)?, Some(&mut cache), &mut ctx)?; // (b, V)
        next = logits.argmax(1)?.to_dtype(candle_core::DType::U32)?;
    }
    next.to_vec1::<u32>()?; // wait for the last step
    Ok((prefill, t1.elapsed().as_secs_f64()))
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

pub fn run(model: &Llama, params: usize, o: &GenerateBenchOptions) -> Result<GenerateReport> {
    ensure!(
        o.prompt_tokens > 0 && o.new_tokens > 1 && o.batch > 0 && o.runs > 0,
        "bench generate needs --prompt-tokens ≥ 1, --new-tokens ≥ 2, --batch ≥ 1, --runs ≥ 1"
    );
    let max = model.cfg.max_position_embeddings;
    ensure!(
        o.prompt_tokens + o.new_tokens <= max,
        "--prompt-tokens + --new-tokens = {} exceeds max_position_embeddings = {max}",
        o.prompt_tokens + o.new_tokens
    );
    let mut rng = rng_for(o.seed, "bench-generate");
    let vocab = model.cfg.vocab_size as u32;
    let ids: Vec<u32> = (0..o.batch * o.prompt_tokens).map(|_| rng.random_range(0..vocab)).collect();
    let prompts = Tensor::from_vec(ids, (o.batch, o.prompt_tokens), model.device())?;
    for _ in 0..o.warmup {
        one_run(model, &prompts, o.new_tokens)?;
    }
    let bar = crate::util::progress_bar("bench generate", o.runs);
    let mut pre = vec![];
    let mut dec = vec![];
    for _ in 0..o.runs {
        let (p, d) = one_run(model, &prompts, o.new_tokens)?;
        pre.push(p);
        dec.push(d / (o.new_tokens - 1) as f64);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let (p, d) = (median(pre), median(dec));
    Ok(GenerateReport {
        params,
        batch: o.batch,
        prompt_tokens: o.prompt_tokens,
        new_tokens: o.new_tokens,
        prefill_ms: p * 1e3,
        prefill_tokens_per_s: (o.batch * o.prompt_tokens) as f64 / p,
        decode_ms_per_token: d * 1e3,
        decode_tokens_per_s: o.batch as f64 / d,
        threads: rayon::current_num_threads(),
    })
}
