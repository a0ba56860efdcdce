//! Finetuning methods: small types given to the one training loop (`trainer::Trainer`), never
//! branches inside it (docs/design.md, "Architecture"). Each prepares, over a copy-on-write view of the base
//! weights (only what it changes is copied), a model built with the right parameters trainable, the dense names its optimiser owns, that optimiser,
//! and how the memory values are updated:
//!
//! | method | model built with | dense optimiser | memory values |
//! |---|---|---|---|
//! | `sparse-memory` | everything frozen | none | SGD (or Adam) on the top-t rows of each batch by TF-IDF (`sparse_memory`) |
//! | `lora` | adapters on the target linears, only they trainable | AdamW on the adapters | frozen |
//! | `full` | every dense weight trainable | AdamW | lazy AdamW (when the model has memory) |
//!
//! Facts are learned one after another: each fact's batch is trained on `steps_per_fact` times,
//! at a constant learning rate, before the next (docs/design.md, "Measured settings"); `epochs` and `replay` (a
//! [`Stream`]) revisit the stream.

use super::optim::{default_groups, AdamW, AdamWParams, Optimizer};
use super::sparse_memory::sparse_memory_update;
use super::tfidf::BackgroundIndex;
use super::trainer::{dense_names, StepStats, Trainer};
use super::values::{LazyAdamW, ValueUpdate};
use crate::config::{FinetuneConfig, MethodKind, ScheduleKind, TrainConfig};
use crate::data::batches::{Batch, BatchList};
use crate::model::config::ValueOptimizerKind;
use crate::model::lora::adapter_names;
use crate::model::{Llama, LlamaConfig, ParamBuilder, ParamStore, VALUES_NAME};
use anyhow::{bail, Result};
use candle_core::Device;

/// A method ready to train: its own copy of the weights, the model over them, and what the loop
/// updates.
pub struct Prepared {
    pub method: MethodKind,
    /// The method's weights: a copy of what it trains in place, the base's storage for the rest
    /// (plus adapters for LoRA); the model shares its storage.
    pub store: ParamStore,
    pub model: Llama,
    /// Dense parameters the optimiser owns (never `memory.values`).
    pub trainable: Vec<String>,
    pub optimizer: Box<dyn Optimizer>,
    /// `None`: the memory values stay frozen.
    pub values: Option<Box<dyn ValueUpdate>>,
    /// The loop's settings: constant lr, no warmup, the method's clipping.
    pub train: TrainConfig,
    pub stream: Stream,
}

/// How the stream of facts is presented: `epochs` passes over it; in each, every fact's batch
/// gets `steps_per_fact` steps, then `replay` earlier facts (drawn with `seed`) get as many.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stream {
    pub steps_per_fact: usize,
    pub epochs: usize,
    pub replay: usize,
    pub seed: u64,
}

impl Stream {
    /// The facts in the order they are trained on, each marked `true` at its first appearance.
    pub fn schedule(&self, n_facts: usize) -> Vec<(usize, bool)> {
        use rand::Rng;
        let mut rng = crate::util::rng_for(self.seed, "replay");
        let mut out = vec![];
        for epoch in 0..self.epochs {
            for i in 0..n_facts {
                out.push((i, epoch == 0));
                if i > 0 {
                    out.extend((0..self.replay).map(|_| (rng.random_range(0..i), false)));
                }
            }
        }
        out
    }
}

/// Build `ft.method` over a copy of `base` (the weights of a model of config `cfg`). Sparse memory
/// finetuning needs a memory layer, and with `ranking = "tfidf"` the background index.
pub fn prepare(
    ft: &FinetuneConfig,
    cfg: &LlamaConfig,
    base: &ParamStore,
    background: Option<&BackgroundIndex>,
    device: &Device,
) -> Result<Prepared> {
    // The method's own copy of what it changes in place; the rest shares the base's storage.
    let store = match ft.method {
        MethodKind::SparseMemory => base.copy_on_write(|n| n == VALUES_NAME)?,
        MethodKind::Lora => base.copy_on_write(|_| false)?,
        MethodKind::Full => base.deep_clone()?,
    };
    let hp = AdamWParams { beta1: ft.beta1, beta2: ft.beta2, eps: ft.eps };
    let memory = cfg.memory.as_ref().filter(|m| !m.layers.is_empty());
    let c = ft.stream_settings(ft.method);
    let train = TrainConfig {
        lr: c.lr,
        grad_clip: c.grad_clip,
        schedule: ScheduleKind::Constant,
        warmup_steps: 0,
        grad_accum: 1,
        ..Default::default()
    };
    let stream = Stream { steps_per_fact: c.steps_per_fact, epochs: c.epochs, replay: c.replay, seed: ft.seed };
    Ok(match ft.method {
        MethodKind::SparseMemory => {
            let sm = &ft.sparse_memory;
            let Some(m) = memory else {
                bail!("method `sparse-memory` needs a model with a memory layer (model.memory.layers); retrofit one with `memtune pretrain --config configs/smollm2-retrofit.toml` (init.model = your model folder)");
            };
            let model = Llama::new(cfg, &ParamBuilder::existing(&store, device).with_precision(ft.precision).with_trainable(|_| false))?;
            let values: Box<dyn ValueUpdate> = Box::new(sparse_memory_update(sm, m.n_slots(), m.v_dim, hp, background.cloned(), ft.seed)?);
            let optimizer = Box::new(AdamW::new(&store, vec![], hp)?);
            Prepared { method: ft.method, store, model, trainable: vec![], optimizer, values: Some(values), train, stream }
        }
        MethodKind::Lora => {
            let lo = &ft.lora;
            let pb = ParamBuilder::existing(&store, device)
                .with_precision(ft.precision)
                .with_init_missing(ft.seed)
                .with_lora(lo.lora())
                .with_trainable(|n| n.contains(".lora_"));
            let model = Llama::new(cfg, &pb)?;
            let names = adapter_names(&store);
            if names.is_empty() {
                bail!("LoRA: no linear layer matches finetune.lora.targets = {:?}", lo.targets);
            }
            let optimizer = Box::new(AdamW::new(&store, default_groups(&store, &names, lo.weight_decay), hp)?);
            Prepared { method: ft.method, store, model, trainable: names, optimizer, values: None, train, stream }
        }
        MethodKind::Full => {
            let fu = &ft.full;
            let model = Llama::new(cfg, &ParamBuilder::existing(&store, device).with_precision(ft.precision))?;
            let names = dense_names(&store);
            let optimizer = Box::new(AdamW::new(&store, default_groups(&store, &names, fu.weight_decay), hp)?);
            let values: Option<Box<dyn ValueUpdate>> = memory.map(|m| {
                let rowwise = m.value_optimizer.resolve(m.n_slots()) == ValueOptimizerKind::AdamwRowwise;
                Box::new(LazyAdamW::new(m.n_slots(), m.v_dim, fu.value_lr.unwrap_or(fu.lr), hp, 0.0, rowwise)) as Box<dyn ValueUpdate>
            });
            Prepared { method: ft.method, store, model, trainable: names, optimizer, values, train, stream }
        }
    })
}

/// What a finetuning run did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FinetuneOutcome {
    /// Optimiser steps (facts × steps_per_fact).
    pub steps: usize,
    pub seconds: f64,
    /// Mean training loss over the first step of each fact (the loss before learning it).
    pub mean_first_loss: f32,
    /// Mean training loss over the last step of each fact.
    pub mean_last_loss: f32,
}

/// The weights after finetuning (the model shares the store's storage).
pub struct Finetuned {
    pub method: MethodKind,
    pub store: ParamStore,
    pub model: Llama,
}

/// Learn the facts' batches in order, each `steps_per_fact` times, with the one training loop.
/// `on_step` sees every step's stats. The optimiser state is dropped at the end.
pub fn finetune(p: Prepared, facts: Vec<Batch>, on_step: impl FnMut(&StepStats)) -> Result<(Finetuned, FinetuneOutcome)> {
    finetune_stream(p, facts, on_step, |_, _| Ok(()))
}

/// As [`finetune`], over the method's whole [`Stream`] (epochs, replay); `after_first(i, model)`
/// runs right after fact i's own steps at its first appearance (to measure plasticity).
pub fn finetune_stream(
    p: Prepared,
    facts: Vec<Batch>,
    mut on_step: impl FnMut(&StepStats),
    mut after_first: impl FnMut(usize, &Llama) -> Result<()>,
) -> Result<(Finetuned, FinetuneOutcome)> {
    let k = p.stream.steps_per_fact;
    let schedule = p.stream.schedule(facts.len());
    let steps = schedule.len() * k;
    let Prepared { method, model, store, trainable, optimizer, values, train, .. } = p;
    let cfg = TrainConfig { steps, ..train };
    let mut trainer = Trainer { model: &model, store: &store, trainable, optimizer, values, cfg };
    let t0 = std::time::Instant::now();
    let (mut first, mut last, mut n_first) = (0.0f64, 0.0f64, 0usize);
    let mut s = 0;
    for &(i, is_first) in &schedule {
        let mut source = BatchList::new(vec![facts[i].clone()], k)?;
        for j in 0..k {
            let st = trainer.step(&mut source, s)?;
            s += 1;
            if is_first && j == 0 {
                first += st.loss as f64;
            }
            if is_first && j == k - 1 {
                last += st.loss as f64;
            }
            on_step(&st);
        }
        if is_first {
            n_first += 1;
            after_first(i, &model)?;
        }
    }
    drop(trainer);
    let n = n_first.max(1) as f64;
    let outcome = FinetuneOutcome {
        steps,
        seconds: t0.elapsed().as_secs_f64(),
        mean_first_loss: (first / n) as f32,
        mean_last_loss: (last / n) as f32,
    };
    Ok((Finetuned { method, store, model }, outcome))
}
