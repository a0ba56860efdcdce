//! SEAL's unit of new knowledge: a passage and the questions that test it (never shown during an
//! update). From the synthetic world's SEAL split (a person's fixed biography, that person's QA
//! pairs) or from a SQuAD v1.1 JSON file (`data` → articles with `title` → `paragraphs` with
//! `context` → `qas` with `question` and `answers[].text`).

use crate::data::synthetic::{person_qa_pairs, Split, World};
use crate::eval::qa::QaItem;
use anyhow::{ensure, Context, Result};
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Passage {
    /// Unique within its source: the person's name, or `<title>/<paragraph index>` for SQuAD.
    pub id: String,
    pub title: String,
    pub context: String,
    pub questions: Vec<QaItem>,
}

impl Passage {
    /// One passage per person of `split`: the biography `World::passage` gives them (the same
    /// text every time) and every question template of every attribute.
    pub fn from_world(world: &World, split: Split) -> Vec<Passage> {
        world
            .people(split)
            .iter()
            .map(|p| Passage {
                id: p.name.clone(),
                title: p.name.clone(),
                context: world.passage(p),
                questions: person_qa_pairs(p)
                    .into_iter()
                    .map(|(_, _, q)| QaItem { question: q.question, answers: vec![q.answer] })
                    .collect(),
            })
            .collect()
    }

    /// Every paragraph with at least one question of a SQuAD v1.1 file, in file order.
    pub fn from_squad(path: &Path) -> Result<Vec<Passage>> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read SQuAD file {}", path.display()))?;
        Self::from_squad_str(&text).with_context(|| format!("{}: not a SQuAD v1.1 file", path.display()))
    }

    pub fn from_squad_str(text: &str) -> Result<Vec<Passage>> {
        #[derive(Deserialize)]
        struct File {
            data: Vec<Article>,
        }
        #[derive(Deserialize)]
        struct Article {
            title: String,
            paragraphs: Vec<Paragraph>,
        }
        #[derive(Deserialize)]
        struct Paragraph {
            context: String,
            qas: Vec<Qa>,
        }
        #[derive(Deserialize)]
        struct Qa {
            question: String,
            answers: Vec<Answer>,
        }
        #[derive(Deserialize)]
        struct Answer {
            text: String,
        }
        let f: File = serde_json::from_str(text)?;
        let mut out = vec![];
        for a in f.data {
            for (i, p) in a.paragraphs.into_iter().enumerate() {
                let questions: Vec<QaItem> = p
                    .qas
                    .into_iter()
                    .filter(|q| !q.answers.is_empty())
                    .map(|q| QaItem { question: q.question, answers: q.answers.into_iter().map(|x| x.text).collect() })
                    .collect();
                if !questions.is_empty() {
                    out.push(Passage { id: format!("{}/{i}", a.title), title: a.title.replace('_', " "), context: p.context, questions });
                }
            }
        }
        Ok(out)
    }

    /// This passage with only its first `n` questions (all when 0).
    pub fn limit_questions(mut self, n: usize) -> Self {
        if n > 0 {
            self.questions.truncate(n);
        }
        self
    }
}

/// Disjoint passage sets: the eval passages, then one set per ReST-EM round ("fresh passages").
#[derive(Clone, Debug)]
pub struct PassageSplit {
    pub eval: Vec<Passage>,
    pub rounds: Vec<Vec<Passage>>,
}

/// Shuffle `all` with `seed` and cut it into `n_eval` eval passages and `rounds` sets of
/// `n_train`; an error names what is short.
pub fn split_passages(mut all: Vec<Passage>, n_eval: usize, n_train: usize, rounds: usize, seed: u64) -> Result<PassageSplit> {
    let need = n_eval + n_train * rounds;
    ensure!(
        all.len() >= need,
        "SEAL needs {need} passages (seal.eval_passages = {n_eval} + seal.rounds = {rounds} × seal.train_passages = {n_train}) but the source has {}",
        all.len()
    );
    all.shuffle(&mut crate::util::rng_for(seed, "seal-passages"));
    let rest = all.split_off(n_eval);
    let rounds = rest.chunks(n_train.max(1)).take(rounds).map(|c| c.to_vec()).collect();
    Ok(PassageSplit { eval: all, rounds })
}
