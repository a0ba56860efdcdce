//! SEAL's report: a condition's summary line and `results.md`.

use super::continual::Retention;
use super::diagnostics::EditDiagnostics;
use super::inner::QaScores;
use crate::config::{ContinualEdits, ExperimentConfig};
use crate::eval::metrics::mean_stderr;
use serde::{Deserialize, Serialize};

/// One line of `summary.jsonl`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SummaryLine {
    /// `no-update`, `passage-only`, `base-self-edits` or `round-N`.
    pub condition: String,
    /// The inner-loop method (`lora`, `full`, `sparse-memory`; `none` for no-update).
    pub inner_method: String,
    pub seed: u64,
    pub n_passages: usize,
    pub n_questions: usize,
    /// Closed-book exact match on the eval passages' questions after the update, its standard
    /// error over questions; token F1; the fraction of answers that contain a gold answer.
    pub em: f64,
    pub em_stderr: f64,
    pub f1: f64,
    pub f1_stderr: f64,
    pub contains: f64,
    pub contains_stderr: f64,
}

/// What one ReST-EM round did.
#[derive(Clone, Debug, Serialize)]
pub struct RoundReport {
    pub round: usize,
    pub passages: usize,
    pub kept: usize,
    pub mean_best_reward: f64,
    pub mean_passage_only_reward: f64,
    pub sft_first_loss: f32,
    pub sft_last_loss: f32,
}

#[derive(Clone, Debug, Serialize)]
pub struct Diagnostics {
    pub open_book_em: f64,
    pub open_book_em_stderr: f64,
    pub open_book_f1: f64,
    pub open_book_contains: f64,
    pub self_edits: Vec<EditDiagnostics>,
    pub rounds: Vec<RoundReport>,
    /// Mean wall seconds of one inner update with its closed-book QA, and of sampling k
    /// self-edits for one passage.
    pub inner_update_seconds: f64,
    pub sampling_seconds_per_passage: f64,
}

pub(super) fn summary_line(condition: &str, method: &str, seed: u64, per_passage: &[QaScores]) -> SummaryLine {
    let mut all = QaScores::default();
    per_passage.iter().for_each(|s| all.extend(s.clone()));
    let (em, em_stderr) = mean_stderr(&all.em);
    let (f1, f1_stderr) = mean_stderr(&all.f1);
    let (contains, contains_stderr) = mean_stderr(&all.contains);
    SummaryLine {
        condition: condition.into(),
        inner_method: method.into(),
        seed,
        n_passages: per_passage.len(),
        n_questions: all.em.len(),
        em,
        em_stderr,
        f1,
        f1_stderr,
        contains,
        contains_stderr,
    }
}

pub(super) fn render_markdown(
    cfg: &ExperimentConfig,
    summary: &[SummaryLine],
    d: &Diagnostics,
    retention: &[Retention],
    seconds: f64,
) -> String {
    let s = &cfg.seal;
    let source = if s.data.is_empty() { "the synthetic world's SEAL split".to_string() } else { s.data.clone() };
    let mut md = format!(
        "# SEAL\n\nPassages: {source}; template `{}`; k = {}, temperature {}, top-p {}, {} repeat(s); filter `{}`, {} round(s) of {} passages; wall time {:.0} s.\n\n",
        s.template,
        s.k,
        s.temperature,
        s.top_p,
        s.repeats,
        serde_json::to_value(s.filter).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default(),
        s.rounds,
        s.train_passages,
        seconds
    );
    md.push_str(&format!(
        "Rewards, ReST-EM's filter and the retention matrix use {}; \"contains\" = a gold answer occurs as whole words in the answer.\n\n",
        s.metric.name()
    ));
    md.push_str("| condition | inner method | passages | questions | EM | ± stderr | F1 | ± stderr | contains | ± stderr |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for l in summary {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} |\n",
            l.condition, l.inner_method, l.n_passages, l.n_questions, l.em, l.em_stderr, l.f1, l.f1_stderr, l.contains, l.contains_stderr
        ));
    }
    md.push_str(&format!(
        "\n## Diagnostics\n\nOpen-book (the passage in the prompt): EM {:.3} ± {:.3}, F1 {:.3}, contains {:.3}.\n\n",
        d.open_book_em, d.open_book_em_stderr, d.open_book_f1, d.open_book_contains
    ));
    md.push_str(&format!(
        "One inner update with its QA: {:.2} s; sampling k self-edits for a passage: {:.2} s.\n\n",
        d.inner_update_seconds, d.sampling_seconds_per_passage
    ));
    md.push_str("| self-edits | n | gold answer in self-edit | mean length (tokens) |\n|---|---:|---:|---:|\n");
    for e in &d.self_edits {
        md.push_str(&format!(
            "| {} | {} | {:.3} | {:.1} ± {:.1} |\n",
            e.condition, e.n_self_edits, e.gold_answer_in_self_edit, e.mean_self_edit_tokens, e.self_edit_tokens_stderr
        ));
    }
    if !d.rounds.is_empty() {
        md.push_str("\n## ReST-EM rounds\n\n| round | passages | kept | mean best reward | mean passage-only reward | generator SFT |\n|---:|---:|---:|---:|---:|---|\n");
        for r in &d.rounds {
            md.push_str(&format!(
                "| {} | {} | {} | {:.3} | {:.3} | {} |\n",
                r.round,
                r.passages,
                r.kept,
                r.mean_best_reward,
                r.mean_passage_only_reward,
                sft_losses(r.sft_first_loss, r.sft_last_loss)
            ));
        }
    }
    if !retention.is_empty() {
        md.push('\n');
        md.push_str(&super::continual::render_markdown(retention));
        md.push_str(&format!(
            "\nTrained on: each passage plus {}.\n",
            match s.continual_edits {
                ContinualEdits::Generated => "its first base self-edit",
                ContinualEdits::Oracle => "its own questions and answers as Q/A lines (oracle self-edits)",
            }
        ));
    }
    md
}

/// The generator's SFT loss, first → last step, or why there was none.
pub(super) fn sft_losses(first: f32, last: f32) -> String {
    if first.is_nan() {
        "no SFT (nothing kept)".into()
    } else {
        format!("SFT loss {first:.3} → {last:.3}")
    }
}
