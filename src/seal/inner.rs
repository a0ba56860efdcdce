//! The inner loop: fresh weights per candidate (`train::methods::prepare` copies what the method
//! changes and shares the rest, so nothing leaks between candidates or repeats), finetuned on a
//! self-edit's training sequences with any method (`lora` | `full` | `sparse-memory`, settings
//! from `[finetune.<method>]`), then asked the passage's questions closed-book.
//! Reward = accuracy after − accuracy before (`seal.metric`: EM by default; all metrics reported), averaged over r repeats whose seeds
//! differ (adapter init, sparse-memory random ranking, epoch order).

use super::passages::Passage;
use super::templates::QaFormat;
use crate::config::{AnswerMetric, FinetuneConfig, MethodKind};
use crate::data::batches::{Batch, PaddedBatch};
use crate::data::tokenizer::Tokenizer;
use crate::eval::metrics::{contains_answer, exact_match, token_f1};
use crate::eval::qa::greedy_answers;
use crate::model::lora::merge_into_base;
use crate::model::{Llama, LlamaConfig, ParamBuilder, ParamStore};
use crate::train::methods::{finetune, prepare, Finetuned};
use crate::train::tfidf::BackgroundIndex;
use crate::util::{rng_for, stable_hash};
use anyhow::{ensure, Result};
use rand::seq::SliceRandom;
use serde::Serialize;

/// The model self-edits update: its weights, the model over them, and what training needs.
pub struct Student<'a> {
    pub cfg: &'a LlamaConfig,
    pub store: &'a ParamStore,
    pub model: &'a Llama,
    pub tok: &'a Tokenizer,
    pub background: Option<&'a BackgroundIndex>,
}

/// How an inner update trains.
#[derive(Clone, Debug)]
pub struct InnerSettings {
    /// `method` picks the method; its `[finetune.<method>]` section its hyperparameters.
    pub ft: FinetuneConfig,
    /// Passes over the sequences.
    pub epochs: usize,
    /// Sequences per batch.
    pub batch_size: usize,
}

impl InnerSettings {
    pub fn with_method(&self, m: MethodKind) -> Self {
        let mut s = self.clone();
        s.ft.method = m;
        s
    }
}

/// Training batches of `seqs`: each row EOS + text + EOS (a document as pretraining framed it),
/// cut to the model's context, `batch_size` rows per batch, `epochs` passes in a seeded order.
pub fn inner_batches(tok: &Tokenizer, seqs: &[String], batch_size: usize, epochs: usize, max_pos: usize, seed: u64) -> Result<Vec<Batch>> {
    ensure!(!seqs.is_empty(), "an inner update needs at least one training sequence");
    let eos = tok.eos_id();
    let rows = seqs
        .iter()
        .map(|s| {
            let mut ids = tok.encode_document(s)?;
            ids.truncate(max_pos + 1);
            Ok(ids)
        })
        .collect::<Result<Vec<Vec<u32>>>>()?;
    let mut rng = rng_for(seed, "seal-inner-order");
    let mut out = vec![];
    for _ in 0..epochs {
        let mut order: Vec<usize> = (0..rows.len()).collect();
        order.shuffle(&mut rng);
        for chunk in order.chunks(batch_size) {
            let b: Vec<Vec<u32>> = chunk.iter().map(|&i| rows[i].clone()).collect();
            out.push(PaddedBatch::from_sequences(&b, eos)?.to_batch());
        }
    }
    Ok(out)
}

/// Finetune fresh weights over the student's (copy-on-write) on `seqs`.
pub fn update(st: &Student, s: &InnerSettings, seqs: &[String], seed: u64) -> Result<Finetuned> {
    let mut ft = s.ft.clone();
    ft.seed = seed;
    let batches = inner_batches(st.tok, seqs, s.batch_size, s.epochs, st.cfg.max_position_embeddings, seed)?;
    let p = prepare(&ft, st.cfg, st.store, st.background, st.model.device())?;
    Ok(finetune(p, batches, |_| {})?.0)
}

/// The weights of a finetuned model with any adapter folded in (continual SEAL keeps them); `ft`
/// is the config it was trained with.
pub fn merged(t: Finetuned, ft: &FinetuneConfig) -> Result<ParamStore> {
    if t.method == MethodKind::Lora {
        merge_into_base(&t.store, &ft.lora.lora())?;
    }
    Ok(t.store)
}

/// A frozen model over `store`.
pub fn model_over(cfg: &LlamaConfig, store: &ParamStore, device: &candle_core::Device) -> Result<Llama> {
    Llama::new(cfg, &ParamBuilder::existing(store, device).with_trainable(|_| false))
}

/// Per-question scores, under every metric.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct QaScores {
    pub em: Vec<f64>,
    pub f1: Vec<f64>,
    pub contains: Vec<f64>,
}

impl QaScores {
    pub fn zeros(n: usize) -> Self {
        Self { em: vec![0.0; n], f1: vec![0.0; n], contains: vec![0.0; n] }
    }

    pub fn of(&self, m: AnswerMetric) -> &[f64] {
        match m {
            AnswerMetric::Em => &self.em,
            AnswerMetric::F1 => &self.f1,
            AnswerMetric::Contains => &self.contains,
        }
    }

    pub fn mean(&self, m: AnswerMetric) -> f64 {
        mean(self.of(m))
    }

    pub fn means(&self) -> Means {
        Means { em: self.mean(AnswerMetric::Em), f1: self.mean(AnswerMetric::F1), contains: self.mean(AnswerMetric::Contains) }
    }

    /// Another set of questions appended.
    pub fn extend(&mut self, o: QaScores) {
        self.em.extend(o.em);
        self.f1.extend(o.f1);
        self.contains.extend(o.contains);
    }

    /// Per question, the mean over several scorings of the same questions.
    pub fn average(all: &[QaScores]) -> QaScores {
        let n = all.first().map(|s| s.em.len()).unwrap_or(0);
        let k = all.len().max(1) as f64;
        let avg = |f: fn(&QaScores) -> &Vec<f64>| (0..n).map(|i| all.iter().map(|s| f(s)[i]).sum::<f64>() / k).collect();
        QaScores { em: avg(|s| &s.em), f1: avg(|s| &s.f1), contains: avg(|s| &s.contains) }
    }
}

/// Mean scores under every metric.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Means {
    pub em: f64,
    pub f1: f64,
    pub contains: f64,
}

impl Means {
    pub fn of(&self, m: AnswerMetric) -> f64 {
        match m {
            AnswerMetric::Em => self.em,
            AnswerMetric::F1 => self.f1,
            AnswerMetric::Contains => self.contains,
        }
    }

    fn minus(&self, o: &Means) -> Means {
        Means { em: self.em - o.em, f1: self.f1 - o.f1, contains: self.contains - o.contains }
    }
}

pub fn mean(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        0.0
    } else {
        xs.iter().sum::<f64>() / xs.len() as f64
    }
}

/// Greedy answers to already formatted prompts, scored against each question's answers.
pub fn score_prompts(model: &Llama, tok: &Tokenizer, prompts: &[String], p: &Passage) -> Result<QaScores> {
    let preds = greedy_answers(model, tok, prompts)?;
    let score = |f: fn(&str, &[String]) -> f64| preds.iter().zip(&p.questions).map(|(a, q)| f(a, &q.answers)).collect();
    Ok(QaScores { em: score(exact_match), f1: score(token_f1), contains: score(contains_answer) })
}

/// The passage's questions asked closed-book.
pub fn closed_book(model: &Llama, tok: &Tokenizer, qa: &QaFormat, p: &Passage) -> Result<QaScores> {
    let prompts: Vec<String> = p.questions.iter().map(|q| qa.closed(p, &q.question)).collect();
    score_prompts(model, tok, &prompts, p)
}

/// What one candidate's updates did, averaged over the repeats.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Reward {
    pub before: Means,
    pub after_mean: Means,
    /// after − before under every metric; `seal.metric` picks the reward.
    pub gain: Means,
    /// Per question, the after-scores averaged over repeats.
    #[serde(skip)]
    pub after: QaScores,
}

/// The seed of repeat `r` of candidate `candidate` of a passage.
pub fn candidate_seed(seed: u64, passage: &str, candidate: usize, repeat: usize) -> u64 {
    stable_hash(&[&seed.to_le_bytes(), passage.as_bytes(), &(candidate as u64).to_le_bytes(), &(repeat as u64).to_le_bytes()])
}

/// Which fresh copies a reward averages over: `n` updates, repeat r seeded by
/// `candidate_seed(seed, passage, candidate, r)`.
#[derive(Clone, Copy, Debug)]
pub struct Repeats {
    pub n: usize,
    pub seed: u64,
    /// 0 for the passage itself, i + 1 for self-edit i.
    pub candidate: usize,
}

/// Reward of training on `seqs`: `repeats.n` updates of fresh copies, each scored closed-book
/// against `before` (the student's own scores on `p`).
pub fn reward(
    st: &Student,
    s: &InnerSettings,
    qa: &QaFormat,
    p: &Passage,
    seqs: &[String],
    before: &QaScores,
    repeats: Repeats,
) -> Result<Reward> {
    let Repeats { n: repeats, seed, candidate } = repeats;
    ensure!(repeats > 0, "seal.repeats must be > 0");
    let n = p.questions.len();
    let runs = (0..repeats)
        .map(|r| {
            let t = update(st, s, seqs, candidate_seed(seed, &p.id, candidate, r))?;
            closed_book(&t.model, st.tok, qa, p)
        })
        .collect::<Result<Vec<QaScores>>>()?;
    let after = QaScores::average(&runs);
    ensure!(after.em.len() == n, "closed-book scores for {} of {n} questions", after.em.len());
    let (b, a) = (before.means(), after.means());
    Ok(Reward { before: b, after_mean: a, gain: a.minus(&b), after })
}
