//! What the learning-vs-forgetting benchmark measures on each model state: learning (closed-book
//! QA on the new facts, statement completion) and retention. Retention on the synthetic world:
//! QA on held-out pretraining-world facts and the loss on the held-out pretraining stream. On a
//! real model (`forgetting.model`): the "known facts" (closed-book questions the base model
//! answers right, scored by `contains`), perplexity on held-out real text, and a multiple-choice task scored
//! by log-likelihood (`[forgetting.probes]`).

use crate::config::{ProbesConfig, PromptStyle};
use crate::data::batches::{Batch, BatchList};
use crate::data::facts::Fact;
use crate::data::synthetic::qa_prompt;
use crate::eval::choice::{evaluate_choices, read_bigbench, ChoiceItem};
use crate::eval::metrics::contains_answer;
use crate::eval::perplexity::{perplexity, read_heldout};
use crate::eval::qa::{
    evaluate_batched, evaluate_prompts, greedy_answers, read_jsonl, sample_items, statement_completion, QaItem, QaReport,
};
use crate::model::Llama;
use crate::train::model_dir::Base;
use crate::train::trainer::heldout_loss;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The measurements of one model state.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Measures {
    /// The retention QA score ([`Probes::retention_contains`]: EM, or `contains` on known facts).
    pub retention_em: f64,
    pub retention_em_stderr: f64,
    /// Mean NLL per token on the held-out data (stream batches, or real text: ln perplexity).
    pub heldout_loss: f64,
    pub new_fact_em: f64,
    pub new_fact_em_stderr: f64,
    pub new_fact_statement_em: f64,
    #[serde(default)]
    pub new_fact_f1: f64,
    #[serde(default)]
    pub new_fact_contains: f64,
    #[serde(default)]
    pub new_fact_contains_stderr: f64,
    #[serde(default)]
    pub heldout_perplexity: Option<f64>,
    #[serde(default)]
    pub heldout_perplexity_stderr: Option<f64>,
    /// Multiple-choice accuracy (summed log-likelihood), its standard error and chance level.
    #[serde(default)]
    pub choice_acc: Option<f64>,
    #[serde(default)]
    pub choice_acc_stderr: Option<f64>,
    #[serde(default)]
    pub choice_chance: Option<f64>,
}

/// Held-out data for the held-out loss.
pub enum Heldout {
    /// Batches of the pretraining stream (the synthetic world).
    Batches(Vec<Batch>),
    /// Token ids of held-out real-text documents.
    Text(Vec<Vec<u32>>),
}

/// What every run is measured on.
pub struct Probes {
    pub retention: Vec<QaItem>,
    /// How retention answers are scored: exact match (the synthetic world's short answers), or
    /// `contains` (the known facts of a real model, which answers in its own words).
    pub retention_contains: bool,
    /// How the retention questions are asked.
    pub retention_prompt: PromptStyle,
    pub new_facts: Vec<QaItem>,
    pub facts: Vec<Fact>,
    pub heldout: Heldout,
    pub choice: Vec<ChoiceItem>,
}

impl Probes {
    pub fn measure(&self, model: &Llama, base: &Base) -> Result<Measures> {
        let tok = &base.tokenizer;
        let r = ask(model, base, &self.retention, self.retention_prompt)?.0;
        let n = evaluate_batched(model, tok, &self.new_facts)?.0;
        let s = statement_completion(model, tok, &self.facts)?;
        let (heldout_loss, ppl) = match &self.heldout {
            Heldout::Batches(b) => {
                let mut held = BatchList::new(b.clone(), 1)?;
                (heldout_loss(model, &mut held, b.len())? as f64, None)
            }
            Heldout::Text(docs) => {
                let p = perplexity(model, tok, docs)?;
                (p.perplexity.ln(), Some(p))
            }
        };
        let choice = if self.choice.is_empty() { None } else { Some(evaluate_choices(model, tok, &self.choice)?) };
        let (retention, retention_stderr) = if self.retention_contains { (r.contains, r.contains_stderr) } else { (r.em, r.em_stderr) };
        Ok(Measures {
            retention_em: retention,
            retention_em_stderr: retention_stderr,
            heldout_loss,
            new_fact_em: n.em,
            new_fact_em_stderr: n.em_stderr,
            new_fact_statement_em: s.em,
            new_fact_f1: n.f1,
            new_fact_contains: n.contains,
            new_fact_contains_stderr: n.contains_stderr,
            heldout_perplexity: ppl.as_ref().map(|p| p.perplexity),
            heldout_perplexity_stderr: ppl.as_ref().map(|p| p.perplexity_stderr),
            choice_acc: choice.as_ref().map(|c| c.acc),
            choice_acc_stderr: choice.as_ref().map(|c| c.acc_stderr),
            choice_chance: choice.as_ref().map(|c| c.chance),
        })
    }
}

/// Closed-book answers to `items` asked in `style`, scored.
pub fn ask(model: &Llama, base: &Base, items: &[QaItem], style: PromptStyle) -> Result<(QaReport, Vec<String>)> {
    let prompt = |q: &str| match style {
        PromptStyle::Qa => qa_prompt(q),
        PromptStyle::Completion => q.to_string(),
    };
    evaluate_prompts(model, &base.tokenizer, items, items.iter().map(|it| prompt(&it.question)).collect())
}

/// The questions of `file` (a seeded sample of `candidates`) that `model` answers right
/// closed-book (a gold answer in its reply, `contains`): the known facts.
pub fn known_facts(model: &Llama, base: &Base, p: &ProbesConfig, seed: u64) -> Result<(Vec<QaItem>, usize)> {
    let file = Path::new(&p.known_facts_file);
    let items = sample_items(
        read_jsonl(file).with_context(|| format!("forgetting.probes.known_facts_file = {:?}", p.known_facts_file))?,
        p.known_candidates,
        seed,
    );
    let preds = ask(model, base, &items, p.known_facts_prompt)?.1;
    let asked = items.len();
    Ok((items.into_iter().zip(preds).filter(|(it, p)| contains_answer(p, &it.answers) == 1.0).map(|(it, _)| it).collect(), asked))
}

/// `facts` without those `model` already knows (a question answered with a gold answer in its
/// reply): learning is measured on facts the model did not know. Returns the kept facts and the
/// number dropped.
pub fn unknown_facts(model: &Llama, base: &Base, facts: Vec<Fact>) -> Result<(Vec<Fact>, usize)> {
    let mut prompts = vec![];
    let mut owner = vec![];
    for (i, f) in facts.iter().enumerate() {
        for q in &f.questions {
            prompts.push(qa_prompt(&q.question));
            owner.push((i, q.answers.clone()));
        }
    }
    let preds = greedy_answers(model, &base.tokenizer, &prompts)?;
    let mut known = vec![false; facts.len()];
    for ((i, answers), p) in owner.iter().zip(&preds) {
        known[*i] |= contains_answer(p, answers) == 1.0;
    }
    let dropped = known.iter().filter(|&&k| k).count();
    Ok((facts.into_iter().zip(known).filter(|(_, k)| !k).map(|(f, _)| f).collect(), dropped))
}

/// Held-out documents as token ids (`None`: no text probe).
pub type HeldoutDocs = Option<Vec<Vec<u32>>>;

/// The held-out text and multiple-choice probes of `p` (empty when not configured).
pub fn text_and_choice(p: &ProbesConfig, base: &Base, seed: u64) -> Result<(HeldoutDocs, Vec<ChoiceItem>)> {
    let text = if p.text_files.is_empty() {
        None
    } else {
        Some(
            read_heldout(&p.text_files, p.text_docs, p.text_tokens.min(base.model_cfg.max_position_embeddings - 1), &base.tokenizer)
                .context("forgetting.probes.text_files")?,
        )
    };
    let choice = if p.choice_file.is_empty() {
        vec![]
    } else {
        read_bigbench(Path::new(&p.choice_file), p.choice_examples, seed).context("forgetting.probes.choice_file")?
    };
    Ok((text, choice))
}
