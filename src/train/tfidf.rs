//! TF-IDF ranking of memory slots for sparse memory finetuning (docs/design.md, "Sparse memory finetuning").
//!
//! Background index: B batches of background data (the pretraining distribution) are run
//! through the model once; df(i) = number of batches in which slot i was accessed at least once.
//! Per training batch: tf(i) = c(i) / Σ c, idf(i) = log((B + 1) / (df(i) + 1)); the accessed slots
//! are ranked by tf·idf and the top t are the only value rows updated. Ablations: rank by tf
//! alone, pick t at random, or update every accessed slot (t = ∞).

use super::values::{RowSelect, ValueBatch};
use crate::data::batches::BatchSource;
use crate::model::{ForwardCtx, Llama};
use crate::util::rng_for;
use anyhow::{ensure, Result};
use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

/// Checkpoint name of the document-frequency table (u32, one entry per slot).
pub const BACKGROUND_DF_NAME: &str = "memory.background_df";
/// Safetensors metadata key holding B, the number of background batches.
pub const BACKGROUND_BATCHES_KEY: &str = "background_batches";

/// Per-slot document frequencies over B background batches.
#[derive(Clone, Debug, PartialEq)]
pub struct BackgroundIndex {
    pub df: Vec<u32>,
    pub batches: u64,
}

impl BackgroundIndex {
    /// Run `batches` batches of `source` through `model` and count, per slot, the batches that
    /// accessed it (padding excluded; all memory layers pooled, as they share the value table).
    pub fn build(model: &Llama, source: &mut dyn BatchSource, batches: usize, mut progress: impl FnMut(usize)) -> Result<Self> {
        let n = model.cfg.memory.as_ref().map(|m| m.n_slots()).ok_or_else(|| anyhow::anyhow!("the model has no memory layer"))?;
        let mut df = vec![0u32; n];
        let dev = model.device().clone();
        let mut seen = vec![false; n];
        for b in 0..batches {
            let batch = source.next_batch()?;
            let (inputs, _) = batch.to_tensors(&dev)?;
            let mut ctx = ForwardCtx { token_mask: batch.mask.clone(), ..Default::default() };
            model.forward(&inputs, None, &mut ctx)?;
            let mut touched = vec![];
            for t in &ctx.memory {
                for &s in &t.access_counts().slots {
                    if !seen[s as usize] {
                        seen[s as usize] = true;
                        touched.push(s);
                    }
                }
            }
            for s in touched {
                df[s as usize] += 1;
                seen[s as usize] = false;
            }
            progress(b + 1);
        }
        Ok(Self { df, batches: batches as u64 })
    }

    pub fn idf(&self, slot: u32) -> f64 {
        ((self.batches as f64 + 1.0) / (self.df[slot as usize] as f64 + 1.0)).ln()
    }

    /// Fraction of slots accessed in at least one background batch.
    pub fn coverage(&self) -> f64 {
        self.df.iter().filter(|&&d| d > 0).count() as f64 / self.df.len().max(1) as f64
    }

    /// The df table as a checkpoint tensor.
    pub fn to_tensor(&self) -> Result<Tensor> {
        Ok(Tensor::from_vec(self.df.clone(), self.df.len(), &Device::Cpu)?)
    }

    pub fn from_tensor(t: &Tensor, batches: u64) -> Result<Self> {
        Ok(Self { df: t.flatten_all()?.to_vec1::<u32>()?, batches })
    }
}

/// How accessed slots are ranked (defined with the configs, `[finetune.sparse_memory] ranking`).
pub use crate::config::Ranking;

/// The top-t rows of a batch's accessed slots (`top_t = None`: all of them).
pub struct TfIdfSelect {
    pub ranking: Ranking,
    pub top_t: Option<usize>,
    pub index: Option<BackgroundIndex>,
    rng: ChaCha8Rng,
}

/// `ranking` can run on a model with (`has_index`) or without a background index.
pub fn check_index(ranking: Ranking, has_index: bool) -> Result<()> {
    ensure!(
        ranking != Ranking::Tfidf || has_index,
        "ranking = \"tfidf\" needs a background index: run `memtune background` on the checkpoint first"
    );
    Ok(())
}

impl TfIdfSelect {
    pub fn new(ranking: Ranking, top_t: Option<usize>, index: Option<BackgroundIndex>, seed: u64) -> Result<Self> {
        check_index(ranking, index.is_some())?;
        Ok(Self { ranking, top_t, index, rng: rng_for(seed, "smf-random-rows") })
    }

    /// Rank `slots` with `counts` (parallel lists); returns the chosen slots, ascending.
    pub fn choose(&mut self, slots: &[u32], counts: &[u32]) -> Vec<u32> {
        let t = self.top_t.unwrap_or(usize::MAX).min(slots.len());
        let mut chosen: Vec<u32> = if t == slots.len() {
            slots.to_vec()
        } else {
            match self.ranking {
                Ranking::Random => {
                    let mut s = slots.to_vec();
                    s.shuffle(&mut self.rng);
                    s.truncate(t);
                    s
                }
                Ranking::Tf | Ranking::Tfidf => {
                    let total: f64 = counts.iter().map(|&c| c as f64).sum::<f64>().max(1.0);
                    let mut scored: Vec<(f64, u32)> = slots
                        .iter()
                        .zip(counts)
                        .map(|(&s, &c)| {
                            let tf = c as f64 / total;
                            let w = match (&self.ranking, &self.index) {
                                (Ranking::Tfidf, Some(ix)) => tf * ix.idf(s),
                                _ => tf,
                            };
                            (w, s)
                        })
                        .collect();
                    // Highest score first; ties by slot id, so the choice is deterministic.
                    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
                    scored.into_iter().take(t).map(|(_, s)| s).collect()
                }
            }
        };
        chosen.sort_unstable();
        chosen
    }
}

impl RowSelect for TfIdfSelect {
    fn select(&mut self, batch: &ValueBatch<'_>) -> Result<Vec<u32>> {
        // Only rows that have a gradient can be updated (a slot read only by padding has none).
        let (slots, counts): (Vec<u32>, Vec<u32>) = batch
            .access
            .slots
            .iter()
            .zip(&batch.access.counts)
            .filter(|(s, _)| batch.grads.position(**s).is_some())
            .map(|(s, c)| (*s, *c))
            .unzip();
        Ok(self.choose(&slots, &counts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index() -> BackgroundIndex {
        // slot 0 is everywhere in the background, slot 3 nowhere
        BackgroundIndex { df: vec![100, 50, 10, 0], batches: 100 }
    }

    #[test]
    fn idf_follows_the_formula() {
        let ix = index();
        assert!((ix.idf(0) - (101.0f64 / 101.0).ln()).abs() < 1e-12);
        assert!((ix.idf(3) - 101.0f64.ln()).abs() < 1e-12);
        assert_eq!(ix.coverage(), 0.75);
    }

    #[test]
    fn tfidf_prefers_batch_specific_slots_and_tf_prefers_frequent_ones() {
        let slots = [0u32, 1, 2, 3];
        let counts = [50u32, 20, 5, 2];
        let mut s = TfIdfSelect::new(Ranking::Tfidf, Some(2), Some(index()), 0).unwrap();
        // tf·idf: 0 → 0, 1 → .26·ln(101/51), 2 → .065·ln(101/11), 3 → .026·ln(101)
        assert_eq!(s.choose(&slots, &counts), vec![1, 2]);
        let mut s = TfIdfSelect::new(Ranking::Tf, Some(2), None, 0).unwrap();
        assert_eq!(s.choose(&slots, &counts), vec![0, 1]);
        let mut s = TfIdfSelect::new(Ranking::Tfidf, None, Some(index()), 0).unwrap();
        assert_eq!(s.choose(&slots, &counts), vec![0, 1, 2, 3]);
        let mut r = TfIdfSelect::new(Ranking::Random, Some(3), None, 0).unwrap();
        let pick = r.choose(&slots, &counts);
        assert_eq!(pick.len(), 3);
        assert!(pick.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn tfidf_without_an_index_is_a_clear_error() {
        let e = TfIdfSelect::new(Ranking::Tfidf, Some(5), None, 0).err().unwrap();
        assert!(e.to_string().contains("memtune background"), "{e}");
    }
}
