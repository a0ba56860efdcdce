//! Closed-book question answering: greedy answers scored by exact match, token F1 and `contains`.

use super::generate::{generate, GenerateOptions};
use super::metrics::{contains_answer, exact_match, mean_stderr, token_f1};
use crate::data::synthetic::{qa_prompt, Split, World};
use crate::data::tokenizer::Tokenizer;
use crate::io::files::EXPERIMENT_FILE;
use crate::model::Llama;
use crate::train::model_dir::ModelDir;
use anyhow::{Context, Result};
use candle_core::Device;
use serde::Serialize;
use std::path::Path;

pub use crate::data::qa::{read_jsonl, QaItem};

#[derive(Clone, Debug, Serialize)]
pub struct QaReport {
    pub n: usize,
    pub em: f64,
    pub em_stderr: f64,
    pub f1: f64,
    pub f1_stderr: f64,
    /// A gold answer occurs in the prediction as whole words (lenient: a model that answers in a
    /// sentence still scores).
    pub contains: f64,
    pub contains_stderr: f64,
}

/// Longest answer the evaluator generates, in tokens.
pub const MAX_ANSWER_TOKENS: usize = 12;

/// Greedy answer to an already formatted prompt (after an end-of-text token,
/// [`Tokenizer::encode_after_eos`]), cut at the first newline or end of text.
pub fn answer(model: &Llama, tok: &Tokenizer, prompt: &str) -> Result<String> {
    let ids = tok.encode_after_eos(prompt)?;
    let opts = GenerateOptions { max_new_tokens: MAX_ANSWER_TOKENS, stop_tokens: vec![tok.eos_id()], ..Default::default() };
    let out = generate(model, &ids, &opts)?;
    let out: Vec<u32> = out.into_iter().filter(|&t| t != tok.eos_id()).collect();
    let text = tok.decode(&out)?;
    Ok(text.split('\n').next().unwrap_or("").trim().to_string())
}

/// A seeded sample of at most `n` questions (all, shuffled, when `n` is 0).
pub fn sample_items(mut items: Vec<QaItem>, n: usize, seed: u64) -> Vec<QaItem> {
    use rand::seq::SliceRandom;
    items.shuffle(&mut crate::util::rng_for(seed, "eval-sample"));
    if n > 0 {
        items.truncate(n);
    }
    items
}

/// Ask every item closed-book (prompt = `qa_prompt(question)`), score EM, F1 and `contains`.
pub fn evaluate(model: &Llama, tok: &Tokenizer, items: &[QaItem]) -> Result<(QaReport, Vec<String>)> {
    let mut preds = Vec::with_capacity(items.len());
    let bar = crate::util::progress_bar("eval", items.len());
    for it in items {
        bar.inc(1);
        preds.push(answer(model, tok, &qa_prompt(&it.question))?);
    }
    bar.finish_and_clear();
    let golds: Vec<&[String]> = items.iter().map(|it| it.answers.as_slice()).collect();
    Ok((score(&preds, &golds), preds))
}

/// Prompts per decoded batch in [`evaluate_batched`].
pub const QA_BATCH: usize = 64;

/// As [`evaluate`], but prompts are answered together in left-padded batches
/// (`generate::greedy_batch`): the same greedy answers up to rounding, many times faster.
/// Predictions come back in `items` order.
pub fn evaluate_batched(model: &Llama, tok: &Tokenizer, items: &[QaItem]) -> Result<(QaReport, Vec<String>)> {
    evaluate_prompts(model, tok, items, items.iter().map(|it| qa_prompt(&it.question)).collect())
}

/// As [`evaluate_batched`], with `prompts[i]` (already formatted) asking `items[i]`.
pub fn evaluate_prompts(model: &Llama, tok: &Tokenizer, items: &[QaItem], prompts: Vec<String>) -> Result<(QaReport, Vec<String>)> {
    let preds = greedy_answers(model, tok, &prompts)?;
    let golds: Vec<&[String]> = items.iter().map(|it| it.answers.as_slice()).collect();
    Ok((score(&preds, &golds), preds))
}

/// EM, F1 and `contains` of predictions against gold answer lists.
pub fn score(preds: &[String], golds: &[&[String]]) -> QaReport {
    let per =
        |f: fn(&str, &[String]) -> f64| -> (f64, f64) { mean_stderr(&preds.iter().zip(golds).map(|(p, g)| f(p, g)).collect::<Vec<_>>()) };
    let (em, em_stderr) = per(exact_match);
    let (f1, f1_stderr) = per(token_f1);
    let (contains, contains_stderr) = per(contains_answer);
    QaReport { n: preds.len(), em, em_stderr, f1, f1_stderr, contains, contains_stderr }
}

/// Greedy continuations (at most `MAX_ANSWER_TOKENS`, cut at end of text and the first newline,
/// trimmed) of already formatted prompts, each after an end-of-text token ([`Tokenizer::encode_after_eos`]),
/// decoded in batches of up to `QA_BATCH` prompts of similar token length.
pub fn greedy_answers(model: &Llama, tok: &Tokenizer, prompts: &[String]) -> Result<Vec<String>> {
    let ids: Vec<Vec<u32>> = prompts.iter().map(|p| tok.encode_after_eos(p)).collect::<Result<_>>()?;
    greedy_answers_ids(model, tok, ids)
}

/// As [`greedy_answers`], for prompts given as token ids. Answers stop at any of the tokenizer's
/// end tokens.
pub fn greedy_answers_ids(model: &Llama, tok: &Tokenizer, ids: Vec<Vec<u32>>) -> Result<Vec<String>> {
    // Batches of similar lengths keep the padding (prefill work that is thrown away) small.
    let mut order: Vec<usize> = (0..ids.len()).collect();
    order.sort_by_key(|&i| ids[i].len());
    let mut preds = vec![String::new(); ids.len()];
    // Every end token stops an answer (a chat model ends its turn with <|im_end|>, not EOS).
    let mut stops = tok.stop_ids().to_vec();
    stops.push(tok.eos_id());
    for chunk in order.chunks(QA_BATCH) {
        let batch: Vec<Vec<u32>> = chunk.iter().map(|&i| ids[i].clone()).collect();
        let outs = super::generate::greedy_batch(model, &batch, MAX_ANSWER_TOKENS, &stops)?;
        for (&i, out) in chunk.iter().zip(outs) {
            let out: Vec<u32> = out.into_iter().filter(|t| !stops.contains(t)).collect();
            preds[i] = tok.decode(&out)?.split('\n').next().unwrap_or("").trim().to_string();
        }
    }
    Ok(preds)
}

/// Statement completion on learned facts (docs/design.md, "Measured settings" reports it beside QA): for every
/// statement of a fact that contains one of its answers, the text before the answer is the
/// prompt (after an end-of-text token, as the fact's training rows frame it), and the first word
/// the model continues it with must be that answer (EM).
pub fn statement_completion(model: &Llama, tok: &Tokenizer, facts: &[crate::data::facts::Fact]) -> Result<QaReport> {
    let mut prompts = vec![];
    let mut golds: Vec<Vec<String>> = vec![];
    for f in facts {
        let answers: Vec<&String> = f.questions.iter().flat_map(|q| q.answers.iter()).collect();
        for s in &f.statements {
            if let Some((pos, a)) = answers.iter().filter_map(|a| s.find(a.as_str()).map(|p| (p, *a))).min_by_key(|x| x.0) {
                let prompt = s[..pos].trim_end();
                if !prompt.is_empty() {
                    prompts.push(prompt.to_string());
                    golds.push(vec![a.clone()]);
                }
            }
        }
    }
    let ids = prompts.iter().map(|p| tok.encode_after_eos(p)).collect::<Result<Vec<Vec<u32>>>>()?;
    let preds: Vec<String> = greedy_answers_ids(model, tok, ids)?
        .into_iter()
        .map(|p| p.split_whitespace().next().unwrap_or("").trim_matches(|c: char| c.is_ascii_punctuation()).to_string())
        .collect();
    let g: Vec<&[String]> = golds.iter().map(|g| g.as_slice()).collect();
    Ok(score(&preds, &g))
}

/// QA items for a split of the synthetic world: every question template of every attribute.
pub fn world_items(world: &World, split: Split) -> Vec<QaItem> {
    world.qa_pairs(split).into_iter().map(|(q, a)| QaItem { question: q, answers: vec![a] }).collect()
}

/// `memtune eval`.
pub fn eval_command(model_dir: &Path, qa: Option<&Path>, split: &str, limit: usize, seed: u64, device: &Device) -> Result<QaReport> {
    let md = ModelDir::open(model_dir)?;
    let items = match qa {
        Some(p) => read_jsonl(p)?,
        None => {
            let world = md
                .world()
                .with_context(|| format!("{} has no {EXPERIMENT_FILE} with a synthetic world; pass --qa FILE", md.dir.display()))?;
            let split: Split = split.parse()?;
            world_items(&world, split)
        }
    };
    let m = md.load(device)?;
    let items = sample_items(items, limit, seed);
    Ok(evaluate(&m.model, &m.tokenizer, &items)?.0)
}
