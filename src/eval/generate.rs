//! Autoregressive decoding with a KV cache: greedy, temperature and nucleus (top-p) sampling.
//! `sample_many` prefills the prompt once and decodes k continuations as one batch.

use crate::model::{ForwardCtx, KvCache, Llama};
use crate::util::rng_for;
use anyhow::Result;
use candle_core::{IndexOp, Tensor};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    /// 0 means greedy.
    pub temperature: f64,
    /// Nucleus sampling mass; 1.0 disables.
    pub top_p: f64,
    pub seed: u64,
    /// Decoding stops after any of these tokens (it is included in the output).
    pub stop_tokens: Vec<u32>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self { max_new_tokens: 32, temperature: 0.0, top_p: 1.0, seed: 0, stop_tokens: vec![] }
    }
}

/// Continue `prompt`; returns only the new tokens.
pub fn generate(model: &Llama, prompt: &[u32], opts: &GenerateOptions) -> Result<Vec<u32>> {
    Ok(sample_many(model, prompt, 1, opts)?.pop().unwrap_or_default())
}

/// k continuations of one prompt, sharing the prefilled cache.
pub fn sample_many(model: &Llama, prompt: &[u32], k: usize, opts: &GenerateOptions) -> Result<Vec<Vec<u32>>> {
    anyhow::ensure!(!prompt.is_empty(), "generation needs a non-empty prompt");
    let max_pos = model.cfg.max_position_embeddings;
    anyhow::ensure!(prompt.len() < max_pos, "prompt of {} tokens leaves no room under max_position_embeddings = {max_pos}", prompt.len());
    let dev = model.device();
    let mut ctx = ForwardCtx::inference();
    let mut cache = KvCache::new(model.cfg.num_hidden_layers);
    let input = Tensor::new(prompt, dev)?.unsqueeze(0)?;
    let last = model.last_logits(&input, Some(&mut cache), &mut ctx)?.i(0)?.to_vec1::<f32>()?;
    let mut cache = if k > 1 { cache.repeat_batch(k)? } else { cache };
    let mut rng = rng_for(opts.seed, "generate");
    let first: Vec<u32> = (0..k).map(|_| pick(&last, opts, &mut rng)).collect();
    let budget = opts.max_new_tokens.min(max_pos - prompt.len());
    decode(model, &mut cache, &mut ctx, first, budget, &opts.stop_tokens, |row| pick(row, opts, &mut rng))
}

/// The decoding loop shared by [`sample_many`] and [`greedy_batch`]: rows (one per sequence of
/// the cache's batch) start from `next`; each step appends every unfinished row's token (a stop
/// token finishes its row and is kept) and feeds all rows' tokens back through the cache;
/// `choose` picks the next token from a row's logits. Stops when every row is done or after
/// `budget` tokens.
fn decode(
    model: &Llama,
    cache: &mut KvCache,
    ctx: &mut ForwardCtx,
    mut next: Vec<u32>,
    budget: usize,
    stop_tokens: &[u32],
    mut choose: impl FnMut(&[f32]) -> u32,
) -> Result<Vec<Vec<u32>>> {
    let k = next.len();
    let dev = model.device();
    let mut outs: Vec<Vec<u32>> = vec![Vec::new(); k];
    let mut done = vec![false; k];
    for step in 0..budget {
        for i in 0..k {
            if !done[i] {
                outs[i].push(next[i]);
                done[i] = stop_tokens.contains(&next[i]);
            }
        }
        if done.iter().all(|d| *d) || step + 1 == budget {
            break;
        }
        let input = Tensor::new(next.as_slice(), dev)?.unsqueeze(1)?; // (k, 1)
        let logits = model.last_logits(&input, Some(cache), ctx)?.to_vec2::<f32>()?;
        next = logits.iter().map(|row| choose(row)).collect();
    }
    Ok(outs)
}

fn pick(logits: &[f32], opts: &GenerateOptions, rng: &mut ChaCha8Rng) -> u32 {
    if opts.temperature <= 0.0 {
        return argmax(logits);
    }
    let t = opts.temperature as f32;
    let m = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let mut probs: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, ((l - m) / t).exp())).collect();
    let z: f32 = probs.iter().map(|p| p.1).sum();
    probs.iter_mut().for_each(|p| p.1 /= z);
    if opts.top_p < 1.0 {
        probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut cum = 0.0;
        let mut keep = 0;
        for p in &probs {
            cum += p.1;
            keep += 1;
            if cum >= opts.top_p as f32 {
                break;
            }
        }
        probs.truncate(keep);
    }
    let total: f32 = probs.iter().map(|p| p.1).sum();
    let mut r = rng.random::<f32>() * total;
    for (id, p) in &probs {
        r -= p;
        if r <= 0.0 {
            return *id;
        }
    }
    probs.last().map(|p| p.0).unwrap_or(0)
}

pub fn argmax(xs: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in xs.iter().enumerate() {
        if *x > xs[best] {
            best = i;
        }
    }
    best as u32
}

/// `memtune generate`: load a model folder and continue `prompt`, returning the new text.
pub fn generate_text(model_dir: &std::path::Path, prompt: &str, opts: &GenerateOptions, device: &candle_core::Device) -> Result<String> {
    let m = crate::train::model_dir::load_base(model_dir, device)?;
    let ids = m.tokenizer.encode(prompt)?;
    let mut opts = opts.clone();
    opts.stop_tokens.push(m.tokenizer.eos_id());
    let out = generate(&m.model, &ids, &opts)?;
    let out: Vec<u32> = out.into_iter().filter(|&t| t != m.tokenizer.eos_id()).collect();
    m.tokenizer.decode(&out)
}

/// Greedy continuations of several prompts, decoded as one batch with a shared KV cache. Shorter
/// prompts are left-padded and attention hides the padding (`ForwardCtx::left_pad`); RoPE scores
/// depend only on position differences, so each row's result is what `generate` gives it alone,
/// up to floating-point rounding. Decoding one row costs about what decoding a batch of them
/// does on a CPU (each step reads every weight once), so batching the questions of a passage
/// makes QA several times faster. A row stops after a stop token; the batch stops when every row
/// has, or after `max_new_tokens` (fewer when the longest prompt leaves less room).
pub fn greedy_batch(model: &Llama, prompts: &[Vec<u32>], max_new_tokens: usize, stop_tokens: &[u32]) -> Result<Vec<Vec<u32>>> {
    if prompts.is_empty() {
        return Ok(vec![]);
    }
    anyhow::ensure!(prompts.iter().all(|p| !p.is_empty()), "generation needs a non-empty prompt");
    let t = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let max_pos = model.cfg.max_position_embeddings;
    anyhow::ensure!(t < max_pos, "prompt of {t} tokens leaves no room under max_position_embeddings = {max_pos}");
    let b = prompts.len();
    let dev = model.device();
    let mut ctx = ForwardCtx::inference();
    ctx.left_pad = prompts.iter().map(|p| t - p.len()).collect();
    if ctx.left_pad.iter().all(|&p| p == 0) {
        ctx.left_pad.clear();
    }
    let mut cache = KvCache::new(model.cfg.num_hidden_layers);
    // Padding positions hold the prompt's first token; attention never reads them.
    let flat: Vec<u32> = prompts.iter().flat_map(|p| std::iter::repeat_n(p[0], t - p.len()).chain(p.iter().copied())).collect();
    let input = Tensor::from_vec(flat, (b, t), dev)?;
    let last = model.last_logits(&input, Some(&mut cache), &mut ctx)?.to_vec2::<f32>()?; // (b, V)
    let next: Vec<u32> = last.iter().map(|row| argmax(row)).collect();
    let budget = max_new_tokens.min(max_pos - t);
    decode(model, &mut cache, &mut ctx, next, budget, stop_tokens, argmax)
}
