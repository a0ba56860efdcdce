//! Per-token log-likelihood of texts under a model (`memtune score`).

use crate::data::tokenizer::Tokenizer;
use crate::model::pretrained::load_model_dir;
use crate::model::Llama;
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
    let m = load_model_dir(model_dir, device)?;
    texts.iter().map(|t| score_text(&m.model, &m.tokenizer, t)).collect()
}
