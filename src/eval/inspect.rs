//! `memtune inspect`: how a checkpoint's memory layers use their slots on a corpus: the fraction
//! of slots ever accessed, the access entropy, and the most-used slots, per layer and pooled
//! (the layers share one value table).

use crate::data::batches::BatchSource;
use crate::io::files::EXPERIMENT_FILE;
use crate::model::memory_trace::MemoryTrace;
use crate::model::{ForwardCtx, Llama};
use anyhow::Result;
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct SlotUsage {
    /// Accesses counted (tokens × heads × top-k).
    pub accesses: u64,
    pub slots_used: usize,
    pub fraction_used: f64,
    /// Entropy of the access distribution over slots, in bits, and its maximum log2(N).
    pub entropy_bits: f64,
    pub max_entropy_bits: f64,
    /// (slot, accesses), most used first.
    pub top_slots: Vec<(u32, u64)>,
}

#[derive(Debug, Serialize)]
pub struct InspectReport {
    pub n_slots: usize,
    pub batches: usize,
    pub tokens: usize,
    /// Per memory layer, in layer order.
    pub layers: Vec<(usize, SlotUsage)>,
    /// All layers together (the shared value table's view).
    pub pooled: SlotUsage,
}

impl SlotUsage {
    pub fn from_counts(counts: &[u64], top: usize) -> Self {
        let total: u64 = counts.iter().sum();
        let used = counts.iter().filter(|&&c| c > 0).count();
        let entropy = if total == 0 {
            0.0
        } else {
            counts
                .iter()
                .filter(|&&c| c > 0)
                .map(|&c| {
                    let p = c as f64 / total as f64;
                    -p * p.log2()
                })
                .sum()
        };
        let mut order: Vec<u32> = (0..counts.len() as u32).filter(|&i| counts[i as usize] > 0).collect();
        order.sort_by(|&a, &b| counts[b as usize].cmp(&counts[a as usize]).then(a.cmp(&b)));
        Self {
            accesses: total,
            slots_used: used,
            fraction_used: used as f64 / counts.len().max(1) as f64,
            entropy_bits: entropy,
            max_entropy_bits: (counts.len() as f64).log2(),
            top_slots: order.into_iter().take(top).map(|s| (s, counts[s as usize])).collect(),
        }
    }
}

/// Count slot accesses of every memory layer over `batches` batches (padding excluded).
pub fn inspect(model: &Llama, source: &mut dyn BatchSource, batches: usize, top: usize) -> Result<InspectReport> {
    let mem = model.cfg.memory.as_ref().ok_or_else(|| anyhow::anyhow!("this model has no memory layer ([model.memory] is not set)"))?;
    let n_slots = mem.n_slots();
    let mut per_layer: Vec<(usize, Vec<u64>)> = mem.layers.iter().map(|&l| (l, vec![0u64; n_slots])).collect();
    let mut tokens = 0;
    let dev = model.device().clone();
    for _ in 0..batches {
        let b = source.next_batch()?;
        tokens += b.batch * b.seq;
        let (inputs, _) = b.to_tensors(&dev)?;
        let mut ctx = ForwardCtx::default();
        model.forward(&inputs, None, &mut ctx)?;
        for t in &ctx.memory {
            add_trace(&mut per_layer, t);
        }
    }
    let mut pooled = vec![0u64; n_slots];
    for (_, c) in &per_layer {
        pooled.iter_mut().zip(c).for_each(|(p, x)| *p += x);
    }
    Ok(InspectReport {
        n_slots,
        batches,
        tokens,
        layers: per_layer.iter().map(|(l, c)| (*l, SlotUsage::from_counts(c, top))).collect(),
        pooled: SlotUsage::from_counts(&pooled, top),
    })
}

fn add_trace(per_layer: &mut [(usize, Vec<u64>)], t: &MemoryTrace) {
    if let Some((_, counts)) = per_layer.iter_mut().find(|(l, _)| *l == t.layer) {
        let c = t.access_counts();
        for (s, n) in c.slots.iter().zip(&c.counts) {
            counts[*s as usize] += *n as u64;
        }
    }
}

/// `memtune inspect`: load a model folder and run `batches` batches of `texts` (or of the run's
/// own training distribution, with the held-out seed) through it.
pub fn inspect_command(
    model_dir: &std::path::Path,
    texts: &[std::path::PathBuf],
    batches: usize,
    top: usize,
    device: &candle_core::Device,
) -> Result<InspectReport> {
    use crate::config::DataSource;
    use crate::train::pretrain::{training_stream, HELDOUT_SEED};
    let md = crate::train::model_dir::ModelDir::open(model_dir)?;
    let has_experiment = md.experiment.is_some();
    let mut cfg = md.experiment.clone().unwrap_or_default();
    if !texts.is_empty() {
        cfg.data.source = DataSource::Text;
        cfg.data.text_files = texts.iter().map(|p| p.display().to_string()).collect();
    } else if !has_experiment {
        anyhow::bail!("{} has no {EXPERIMENT_FILE}; pass --text FILE to choose a corpus", md.dir.display());
    }
    let m = md.load(device)?;
    let world = matches!(cfg.data.source, DataSource::Synthetic).then(|| crate::data::synthetic::World::generate(&cfg.data.world));
    let mut source = training_stream(&cfg, world.as_ref(), &m.tokenizer, cfg.train.seed ^ HELDOUT_SEED, None)?;
    inspect(&m.model, source.as_mut(), batches, top)
}
