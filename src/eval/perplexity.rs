//! Held-out perplexity on real text: the first `max_tokens` tokens of each of the first `docs`
//! documents of a corpus, each after the start token; perplexity = exp(total NLL / total tokens),
//! with a standard error over documents (the delta method on the ratio estimator).

use super::score::continuation_logprobs;
use crate::data::text::read_documents;
use crate::data::tokenizer::Tokenizer;
use crate::model::Llama;
use anyhow::{ensure, Result};
use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct PerplexityReport {
    pub docs: usize,
    pub tokens: usize,
    pub perplexity: f64,
    pub perplexity_stderr: f64,
}

/// The documents' token ids (see the module doc); errors name the file.
pub fn read_heldout(files: &[String], docs: usize, max_tokens: usize, tok: &Tokenizer) -> Result<Vec<Vec<u32>>> {
    ensure!(!files.is_empty(), "no held-out text files given");
    let mut texts = read_documents(files)?;
    if docs > 0 {
        texts.truncate(docs);
    }
    let ids: Vec<Vec<u32>> = texts
        .iter()
        .map(|t| Ok(tok.encode(t)?.into_iter().take(max_tokens).collect::<Vec<u32>>()))
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .filter(|d| !d.is_empty())
        .collect();
    ensure!(!ids.is_empty(), "held-out text {files:?} has no non-empty document");
    Ok(ids)
}

pub fn perplexity(model: &Llama, tok: &Tokenizer, docs: &[Vec<u32>]) -> Result<PerplexityReport> {
    let pairs: Vec<(Vec<u32>, Vec<u32>)> = docs.iter().map(|d| (vec![], d.clone())).collect();
    let nll: Vec<f64> = continuation_logprobs(model, tok, &pairs)?.into_iter().map(|lp| -lp).collect();
    let n: Vec<f64> = docs.iter().map(|d| d.len() as f64).collect();
    let (total_nll, total_n) = (nll.iter().sum::<f64>(), n.iter().sum::<f64>());
    let r = total_nll / total_n;
    let k = docs.len() as f64;
    let se = if docs.len() > 1 {
        let ss: f64 = nll.iter().zip(&n).map(|(l, m)| (l - r * m).powi(2)).sum();
        (ss / (k * (k - 1.0))).sqrt() / (total_n / k)
    } else {
        0.0
    };
    let ppl = r.exp();
    Ok(PerplexityReport { docs: docs.len(), tokens: total_n as usize, perplexity: ppl, perplexity_stderr: ppl * se })
}
