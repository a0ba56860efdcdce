//! `memtune bench step`: the speed of the real training step (the same `Trainer` that
//! `pretrain` uses) on random tokens, for sizing hardware and comparing with PyTorch.

use crate::config::{ExperimentConfig, MethodKind, Ranking, TrainConfig};
use crate::data::batches::{BatchSource, PackedStream};
use crate::model::{Llama, ParamStore};
use crate::train::methods::{prepare, Prepared};
use crate::train::pretrain::{init_model, make_optimizer, with_init_model};
use crate::train::tfidf::BackgroundIndex;
use crate::train::trainer::Trainer;
use crate::util::rng_for;
use anyhow::Result;
use candle_core::Device;
use rand::Rng;
use serde::Serialize;
use std::time::Instant;

#[derive(Debug, Serialize)]
pub struct StepReport {
    pub device: String,
    /// `pretrain`, or the finetuning method timed (`--method`).
    pub method: String,
    /// The CPU's model name: figures are only comparable on the same one.
    pub cpu: String,
    /// The f32 GEMM kernel family this CPU runs (`machine::gemm_simd`).
    pub simd: &'static str,
    /// `train.precision`: what the linear layers multiply in.
    pub precision: crate::config::Precision,
    pub params: usize,
    /// Elements the optimiser updates (dense names; the memory values not counted).
    pub trainable_params: usize,
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
    pub fn new(cfg: &ExperimentConfig, device: &Device) -> Result<Self> {
        let cfg = with_init_model(cfg)?;
        let store = ParamStore::new();
        let model = init_model(&cfg, &store, device)?;
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

    /// `cfg.finetune.method` prepared over these weights (a background index of random batches
    /// when it ranks by TF-IDF).
    pub fn finetune_method(&self, source: &mut dyn BatchSource) -> Result<Prepared> {
        let ft = &self.cfg.finetune;
        let tfidf = ft.method == MethodKind::SparseMemory && ft.sparse_memory.ranking == Ranking::Tfidf && self.cfg.model.memory.is_some();
        let background = if tfidf { Some(BackgroundIndex::build(&self.model, source, BACKGROUND_BATCHES, |_| {})?) } else { None };
        prepare(ft, &self.cfg.model, &self.store, background.as_ref(), self.model.device())
    }

    pub fn trainer(&self) -> Result<Trainer<'_>> {
        // The memory value table (if any) is updated by the trainer's sparse value update.
        let names = crate::train::pretrain::trainable_names(&self.cfg, &self.store);
        let optimizer = make_optimizer(&self.cfg, &self.store, &names)?;
        Ok(Trainer::new(&self.model, &self.store, names, optimizer, self.cfg.train.clone()))
    }
}

/// Background batches of random tokens for a method that ranks by TF-IDF (the ranking's cost does
/// not depend on which slots the background favours).
const BACKGROUND_BATCHES: usize = 4;

/// Time pretraining steps of `cfg`, or with `finetune_method` the steps of `cfg.finetune.method`
/// (prepared as `memtune finetune` prepares it, over the same weights).
pub fn run(cfg: &ExperimentConfig, warmup: usize, steps: usize, finetune_method: bool, device: &Device) -> Result<StepReport> {
    anyhow::ensure!(steps > 0, "bench step needs --steps ≥ 1");
    let bench = StepBench::new(cfg, device)?;
    let mut source = bench.random_source()?;
    let (method, precision, timed) = if finetune_method {
        let Prepared { method, store, model, trainable, optimizer, values, train, .. } = bench.finetune_method(source.as_mut())?;
        let train = TrainConfig { steps: warmup + steps, ..train };
        let trainer = Trainer { model: &model, store: &store, trainable, optimizer, values, cfg: train };
        (method.name().to_string(), cfg.finetune.precision, time_steps(trainer, source.as_mut(), warmup, steps)?)
    } else {
        ("pretrain".to_string(), cfg.train.precision, time_steps(bench.trainer()?, source.as_mut(), warmup, steps)?)
    };
    Ok(StepReport {
        device: bench.cfg.run.device.clone(),
        method,
        cpu: super::machine::cpu_model(),
        simd: super::machine::gemm_simd(),
        precision,
        params: bench.store.num_elements(),
        trainable_params: timed.trainable_params,
        batch_size: cfg.train.batch_size,
        seq_len: cfg.train.seq_len,
        tokens_per_step: timed.tokens / steps,
        warmup_steps: warmup,
        timed_steps: steps,
        step_ms: timed.secs * 1000.0 / steps as f64,
        tokens_per_s: timed.tokens as f64 / timed.secs,
        peak_rss_mb: super::machine::peak_rss_mb(),
        threads: rayon::current_num_threads(),
    })
}

struct Timed {
    secs: f64,
    tokens: usize,
    trainable_params: usize,
}

fn time_steps(mut trainer: Trainer, source: &mut dyn BatchSource, warmup: usize, steps: usize) -> Result<Timed> {
    for s in 0..warmup {
        trainer.step(source, s)?;
    }
    let t0 = Instant::now();
    let mut tokens = 0;
    for s in 0..steps {
        tokens += trainer.step(source, warmup + s)?.tokens;
    }
    let secs = t0.elapsed().as_secs_f64();
    let trainable_params = trainer.trainable.iter().filter_map(|n| trainer.store.get(n)).map(|v| v.elem_count()).sum();
    Ok(Timed { secs, tokens, trainable_params })
}
