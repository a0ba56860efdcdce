//! `memtune bench step`: the speed of the real training step (the same `Trainer` that
//! `pretrain` uses) on random tokens, for sizing hardware and comparing with PyTorch.

use crate::config::ExperimentConfig;
use crate::data::batches::{BatchSource, PackedStream};
use crate::model::{Llama, ParamStore};
use crate::train::pretrain::{init_model, make_optimizer, with_init_model};
use crate::train::trainer::Trainer;
use crate::util::rng_for;
use anyhow::Result;
use rand::Rng;
use serde::Serialize;
use std::time::Instant;

#[derive(Debug, Serialize)]
pub struct StepReport {
    pub device: String,
    /// `train.precision`: what the linear layers multiply in.
    pub precision: crate::config::Precision,
    pub params: usize,
    pub batch_size: usize,
    pub seq_len: usize,
    pub tokens_per_step: usize,
    pub warmup_steps: usize,
    pub timed_steps: usize,
    pub step_ms: f64,
    pub tokens_per_s: f64,
    pub peak_rss_mb: f64,
    pub threads: usize,
}

/// A freshly initialised model and its parameters for a config.
pub struct StepBench {
    pub store: ParamStore,
    pub model: Llama,
    pub cfg: ExperimentConfig,
}

impl StepBench {
    /// The model `pretrain` would start from: random weights of `[model]`, or `[init] model`.
    pub fn new(cfg: &ExperimentConfig) -> Result<Self> {
        let cfg = with_init_model(cfg)?;
        let device = crate::device::open(&cfg.run.device)?;
        let store = ParamStore::new();
        let model = init_model(&cfg, &store, &device)?;
        Ok(Self { store, model, cfg })
    }

    /// A packed stream of random tokens: the step's cost does not depend on the text.
    pub fn random_source(&self) -> Result<Box<dyn BatchSource>> {
        let cfg = &self.cfg;
        let vocab = cfg.model.vocab_size as u32;
        let seed = cfg.train.seed;
        let docs = move |k: u64| -> Result<Vec<u32>> {
            let mut rng = rng_for(seed ^ k, "bench-doc");
            let n = rng.random_range(64..512);
            Ok((0..n).map(|_| rng.random_range(1..vocab)).collect())
        };
        Ok(Box::new(PackedStream::new(docs, 0, cfg.train.batch_size, cfg.train.seq_len, "bench-random", seed, 0)?))
    }

    pub fn trainer(&self) -> Result<Trainer<'_>> {
        // The memory value table (if any) is updated by the trainer's sparse value update.
        let names = crate::train::pretrain::trainable_names(&self.cfg, &self.store);
        let optimizer = make_optimizer(&self.cfg, &self.store, &names)?;
        Ok(Trainer::new(&self.model, &self.store, names, optimizer, self.cfg.train.clone()))
    }
}

/// Peak resident set size of this process in MB (Linux; 0 elsewhere).
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok()))
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

pub fn run(cfg: &ExperimentConfig, warmup: usize, steps: usize) -> Result<StepReport> {
    anyhow::ensure!(steps > 0, "bench step needs --steps ≥ 1");
    let bench = StepBench::new(cfg)?;
    let mut source = bench.random_source()?;
    let mut trainer = bench.trainer()?;
    for s in 0..warmup {
        trainer.step(source.as_mut(), s)?;
    }
    let t0 = Instant::now();
    let mut tokens = 0;
    for s in 0..steps {
        tokens += trainer.step(source.as_mut(), warmup + s)?.tokens;
    }
    let secs = t0.elapsed().as_secs_f64();
    Ok(StepReport {
        device: bench.cfg.run.device.clone(),
        precision: bench.cfg.train.precision,
        params: bench.store.num_elements(),
        batch_size: cfg.train.batch_size,
        seq_len: cfg.train.seq_len,
        tokens_per_step: tokens / steps,
        warmup_steps: warmup,
        timed_steps: steps,
        step_ms: secs * 1000.0 / steps as f64,
        tokens_per_s: tokens as f64 / secs,
        peak_rss_mb: peak_rss_mb(),
        threads: rayon::current_num_threads(),
    })
}
