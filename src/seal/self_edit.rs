//! Self-edit generation: k samples per passage from one prompt (its KV cache prefilled once,
//! `eval::generate::sample_many`), and the split of a self-edit into training sequences.

use super::templates::SplitRule;
use crate::data::tokenizer::Tokenizer;
use crate::eval::generate::{sample_many, GenerateOptions};
use crate::model::Llama;
use anyhow::Result;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SelfEdit {
    pub text: String,
    /// Generated tokens (stop token excluded).
    pub n_tokens: usize,
}

/// Sampling settings of self-edits.
#[derive(Clone, Debug)]
pub struct SampleOptions {
    pub k: usize,
    pub temperature: f64,
    pub top_p: f64,
    pub max_new_tokens: usize,
    pub seed: u64,
}

/// k self-edits for an already formatted prompt (chat template applied). Decoding stops at the
/// tokenizer's end tokens (EOS, `<|im_end|>`); the prompt is cut from the left if it leaves no
/// room for `max_new_tokens` under the model's context.
pub fn sample_self_edits(generator: &Llama, tok: &Tokenizer, prompt: &str, o: &SampleOptions) -> Result<Vec<SelfEdit>> {
    let mut ids = tok.encode(prompt)?;
    let room = generator.cfg.max_position_embeddings.saturating_sub(o.max_new_tokens.min(generator.cfg.max_position_embeddings / 2)).max(1);
    if ids.len() > room {
        ids.drain(..ids.len() - room);
    }
    let mut stops: Vec<u32> = tok.stop_ids().to_vec();
    stops.push(tok.eos_id());
    let opts = GenerateOptions {
        max_new_tokens: o.max_new_tokens,
        temperature: o.temperature,
        top_p: o.top_p,
        seed: o.seed,
        stop_tokens: stops.clone(),
    };
    sample_many(generator, &ids, o.k, &opts)?
        .into_iter()
        .map(|out| {
            let out: Vec<u32> = out.into_iter().filter(|t| !stops.contains(t)).collect();
            Ok(SelfEdit { text: tok.decode(&out)?.trim().to_string(), n_tokens: out.len() })
        })
        .collect()
}

/// The training sequences of a self-edit: one per non-empty line, or per question/answer pair
/// (`Q:`/`Question:` line, then `A:`/`Answer:` line, joined by a space; a line holding both is a
/// pair; other lines are dropped), then the passage itself, last.
pub fn training_sequences(self_edit: &str, rule: SplitRule, passage: &str) -> Vec<String> {
    let mut seqs = match rule {
        SplitRule::Lines => self_edit.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect(),
        SplitRule::QaPairs => qa_pairs(self_edit),
    };
    seqs.push(passage.to_string());
    seqs
}

fn is_question(l: &str) -> bool {
    l.starts_with("Q:") || l.starts_with("Question:")
}

fn is_answer(l: &str) -> bool {
    l.starts_with("A:") || l.starts_with("Answer:")
}

fn qa_pairs(text: &str) -> Vec<String> {
    let mut out = vec![];
    let mut pending: Option<&str> = None;
    for l in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if is_question(l) {
            let both = l.contains(" A:") || l.contains(" Answer:");
            if both {
                out.push(l.to_string());
                pending = None;
            } else {
                pending = Some(l);
            }
        } else if is_answer(l) {
            if let Some(q) = pending.take() {
                out.push(format!("{q} {l}"));
            }
        }
    }
    out
}
