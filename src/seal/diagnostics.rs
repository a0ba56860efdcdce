//! Diagnostics printed with every SEAL run: open-book accuracy (the questions
//! answered with the passage in the prompt: the ceiling of what a self-edit can carry), the
//! fraction of gold answers that appear in the self-edits, and self-edit length.

use super::inner::{score_prompts, QaScores};
use super::passages::Passage;
use super::self_edit::SelfEdit;
use super::templates::QaFormat;
use crate::data::tokenizer::Tokenizer;
use crate::eval::metrics::{contains_answer, mean_stderr};
use crate::model::Llama;
use anyhow::Result;
use serde::Serialize;

/// Open-book scores of every question of every passage, pooled.
pub fn open_book(model: &Llama, tok: &Tokenizer, qa: &QaFormat, passages: &[Passage]) -> Result<QaScores> {
    let mut all = QaScores::default();
    for p in passages {
        let prompts: Vec<String> = p.questions.iter().map(|q| qa.open(p, &q.question)).collect();
        let s = score_prompts(model, tok, &prompts, p)?;
        all.extend(s);
    }
    Ok(all)
}

/// Over every (question, self-edit) pair of a passage: 1 when the self-edit holds an answer.
pub fn answer_hits(p: &Passage, edits: &[SelfEdit]) -> Vec<f64> {
    edits.iter().flat_map(|e| p.questions.iter().map(move |q| contains_answer(&e.text, &q.answers))).collect()
}

/// The diagnostics of one set of self-edits (a condition).
#[derive(Clone, Debug, Serialize)]
pub struct EditDiagnostics {
    pub condition: String,
    pub n_self_edits: usize,
    /// Fraction of (question, self-edit) pairs whose gold answer appears in the self-edit.
    pub gold_answer_in_self_edit: f64,
    pub mean_self_edit_tokens: f64,
    pub self_edit_tokens_stderr: f64,
}

pub fn edit_diagnostics(condition: &str, per_passage: &[(&Passage, &[SelfEdit])]) -> EditDiagnostics {
    let hits: Vec<f64> = per_passage.iter().flat_map(|(p, e)| answer_hits(p, e)).collect();
    let lens: Vec<f64> = per_passage.iter().flat_map(|(_, e)| e.iter().map(|x| x.n_tokens as f64)).collect();
    let (len, len_se) = mean_stderr(&lens);
    EditDiagnostics {
        condition: condition.into(),
        n_self_edits: lens.len(),
        gold_answer_in_self_edit: mean_stderr(&hits).0,
        mean_self_edit_tokens: len,
        self_edit_tokens_stderr: len_se,
    }
}
