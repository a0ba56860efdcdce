//! Per-token log-likelihood of texts under a model (`memtune score`).

use crate::data::tokenizer::Tokenizer;
use crate::model::Llama;
use crate::train::model_dir::load_base;
use anyhow::Result;
use candle_core::{Device, Tensor};
use serde::Serialize;
use std::path::Path;

#[derive(Debug, Serialize)]
pub struct ScoreLine {
    pub text: String,
    /// Each scored token as text.
    pub tokens: Vec<String>,
    /// log p(token | everything before it), natural log.
    pub logprobs: Vec<f32>,
    pub total_logprob: f64,
    /// exp(-mean logprob).
    pub perplexity: f64,
}

/// Score one text. Every token is predicted: the text is preceded by the BOS (or EOS) token as context.
pub fn score_text(model: &Llama, tok: &Tokenizer, text: &str) -> Result<ScoreLine> {
    let ids = tok.encode(text)?;
    anyhow::ensure!(!ids.is_empty(), "text {text:?} encodes to no tokens");
    let start = tok.bos_id().unwrap_or(tok.eos_id());
    let max = model.cfg.max_position_embeddings;
    anyhow::ensure!(ids.len() < max, "text of {} tokens is longer than max_position_embeddings = {max}", ids.len());
    let mut inputs = vec![start];
    inputs.extend_from_slice(&ids[..ids.len() - 1]);
    let dev = model.device();
    let n = ids.len();
    let lp = model.token_logprobs(&Tensor::from_vec(inputs, (1, n), dev)?, &Tensor::from_vec(ids.clone(), (1, n), dev)?)?;
    let total: f64 = lp.iter().map(|&x| x as f64).sum();
    Ok(ScoreLine {
        text: text.to_string(),
        tokens: ids.iter().map(|&i| tok.decode(&[i])).collect::<Result<_>>()?,
        logprobs: lp,
        total_logprob: total,
        perplexity: (-total / n as f64).exp(),
    })
}

/// `memtune score`: load the model folder and score each text.
pub fn score_texts(model_dir: &Path, texts: &[String], device: &Device) -> Result<Vec<ScoreLine>> {
    let m = load_base(model_dir, device)?;
    texts.iter().map(|t| score_text(&m.model, &m.tokenizer, t)).collect()
}

/// Rows scored per forward pass by [`continuation_logprobs`].
pub const SCORE_BATCH: usize = 16;

/// For each (context, continuation) pair of token ids, the summed log-probability of the
/// continuation's tokens given the start token (BOS, else EOS) and the context: the quantity
/// lm-evaluation-harness ranks multiple-choice answers by, and with an empty context a text's
/// log-likelihood. Pairs are scored in right-padded batches (padding is never read back: a row's
/// scored positions come before its padding, and attention is causal).
pub fn continuation_logprobs(model: &Llama, tok: &Tokenizer, pairs: &[(Vec<u32>, Vec<u32>)]) -> Result<Vec<f64>> {
    let start = tok.bos_id().unwrap_or(tok.eos_id());
    let max = model.cfg.max_position_embeddings;
    let dev = model.device();
    let mut out = Vec::with_capacity(pairs.len());
    for chunk in pairs.chunks(SCORE_BATCH) {
        let seqs: Vec<Vec<u32>> =
            chunk.iter().map(|(c, x)| std::iter::once(start).chain(c.iter().copied()).chain(x.iter().copied()).collect()).collect();
        let t = seqs.iter().map(|s| s.len() - 1).max().unwrap_or(0);
        anyhow::ensure!(t < max, "a scored text of {t} tokens is longer than max_position_embeddings = {max}");
        if t == 0 {
            out.extend(chunk.iter().map(|_| 0.0));
            continue;
        }
        let (mut inputs, mut targets) = (Vec::with_capacity(seqs.len() * t), Vec::with_capacity(seqs.len() * t));
        for s in &seqs {
            let n = s.len() - 1;
            inputs.extend(s[..n].iter().copied().chain(std::iter::repeat_n(start, t - n)));
            targets.extend(s[1..].iter().copied().chain(std::iter::repeat_n(start, t - n)));
        }
        let b = seqs.len();
        let lp = model.token_logprobs(&Tensor::from_vec(inputs, (b, t), dev)?, &Tensor::from_vec(targets, (b, t), dev)?)?;
        for (r, (c, x)) in chunk.iter().enumerate() {
            // Target j predicts token j + 1 of the row: the continuation is targets c.len()..c.len() + x.len().
            out.push(lp[r * t + c.len()..r * t + c.len() + x.len()].iter().map(|&v| v as f64).sum());
        }
    }
    Ok(out)
}
