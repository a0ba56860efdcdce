//! ReST-EM (docs/design.md, "SEAL"): per passage keep the best self-edits by reward, then
//! supervised-finetune the generator on prompt → kept self-edit with the loss on the completion
//! only (prompt positions get the cross-entropy ignore index), LoRA (merged after) or full.

use super::inner::merged;
use crate::config::{FinetuneConfig, MethodKind, SealFilter};
use crate::data::batches::{Batch, PaddedBatch};
use crate::data::tokenizer::Tokenizer;
use crate::model::{Llama, LlamaConfig, ParamStore};
use crate::train::methods::{finetune, prepare};
use crate::util::rng_for;
use anyhow::{ensure, Result};
use rand::seq::SliceRandom;

/// Indices of the self-edits `filter` keeps, given their rewards and the reward of the
/// passage-only update. Top-1 ties go to the earlier sample.
pub fn select(rewards: &[f64], passage_only: f64, filter: SealFilter) -> Vec<usize> {
    let Some(best) = (0..rewards.len()).fold(None, |b: Option<usize>, i| match b {
        Some(j) if rewards[j] >= rewards[i] => Some(j),
        _ => Some(i),
    }) else {
        return vec![];
    };
    match filter {
        SealFilter::Top1 => vec![best],
        SealFilter::Positive => {
            if rewards[best] > passage_only {
                vec![best]
            } else {
                vec![]
            }
        }
        SealFilter::AboveGroupMean => {
            let m = rewards.iter().sum::<f64>() / rewards.len() as f64;
            (0..rewards.len()).filter(|&i| rewards[i] > m).collect()
        }
    }
}

/// One SFT row: prompt tokens (cut from the left so the row fits `max_pos`) and completion
/// tokens (the self-edit, then `end`, the token that closes a generation).
pub fn sft_pair(tok: &Tokenizer, prompt: &str, completion: &str, end: u32, max_pos: usize) -> Result<(Vec<u32>, Vec<u32>)> {
    let mut c = tok.encode(completion)?;
    c.push(end);
    c.truncate(max_pos.saturating_sub(1).max(1));
    let mut p = tok.encode(prompt)?;
    ensure!(!p.is_empty(), "an SFT prompt must not be empty");
    let room = (max_pos + 1).saturating_sub(c.len()).max(1);
    if p.len() > room {
        p.drain(..p.len() - room);
    }
    Ok((p, c))
}

/// Batches of prompt → completion rows, loss on completion tokens only; `epochs` passes in a
/// seeded order.
pub fn sft_batches(pairs: &[(Vec<u32>, Vec<u32>)], pad: u32, batch_size: usize, epochs: usize, seed: u64) -> Result<Vec<Batch>> {
    let mut rng = rng_for(seed, "seal-sft-order");
    let mut out = vec![];
    for _ in 0..epochs {
        let mut order: Vec<usize> = (0..pairs.len()).collect();
        order.shuffle(&mut rng);
        for chunk in order.chunks(batch_size.max(1)) {
            let rows: Vec<(Vec<u32>, Vec<u32>)> = chunk.iter().map(|&i| pairs[i].clone()).collect();
            out.push(PaddedBatch::from_prompt_completions(&rows, pad)?.to_batch());
        }
    }
    Ok(out)
}

/// How one round's SFT of the generator runs: `method` (lora or full) at `lr`, seeded by `seed`.
#[derive(Clone, Copy, Debug)]
pub struct SftStep {
    pub method: MethodKind,
    pub lr: f64,
    pub seed: u64,
}

/// The generator's weights after SFT on `batches` with `method` (lora: merged) at `lr`; the
/// other settings of `[finetune.<method>]` apply. `store` itself is not changed.
pub fn sft_generator(
    cfg: &LlamaConfig,
    store: &ParamStore,
    model: &Llama,
    ft: &FinetuneConfig,
    sft: SftStep,
    batches: Vec<Batch>,
) -> Result<(ParamStore, f32, f32)> {
    let SftStep { method, lr, seed } = sft;
    ensure!(method != MethodKind::SparseMemory, "seal.sft_method must be lora or full");
    let mut ft = ft.clone();
    ft.method = method;
    ft.seed = seed;
    match method {
        MethodKind::Lora => {
            ft.lora.lr = lr;
            ft.lora.steps_per_fact = 1;
        }
        _ => {
            ft.full.lr = lr;
            ft.full.steps_per_fact = 1;
        }
    }
    let p = prepare(&ft, cfg, store, None, model.device())?;
    let (first, mut last) = (std::cell::Cell::new(None), 0.0f32);
    let (t, _) = finetune(p, batches, |s| {
        if first.get().is_none() {
            first.set(Some(s.loss));
        }
        last = s.loss;
    })?;
    Ok((merged(t, &ft)?, first.get().unwrap_or(0.0), last))
}
