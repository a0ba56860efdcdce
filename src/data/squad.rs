//! SQuAD v1.1 JSON (e.g. the dev set `scripts/get-squad.sh` writes to `data/squad/dev-v1.1.json`:
//! 2,067 passages, 10,565 questions) as passages, each with the questions asked about it.
//!
//! Format: `{"version", "data": [{"title", "paragraphs": [{"context", "qas": [{"id",
//! "question", "answers": [{"text", "answer_start"}]}]}]}]}`. Other keys are ignored. A missing
//! key, a value of the wrong type, an empty context, question or answer list is an error naming
//! the file and the JSON path (`data[3].paragraphs[1].qas[0].answers`).
//!
//! `answer_start` (a character offset into the context) is kept as given and not checked: 15
//! answers of the official dev set do not sit at their offset, and memtune scores answers by
//! text.

use super::qa::QaItem;
use crate::MemtuneError;
use anyhow::Result;
use serde::Deserialize;
use std::path::Path;

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct SquadAnswer {
    pub text: String,
    pub answer_start: usize,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct SquadQuestion {
    pub id: String,
    pub question: String,
    pub answers: Vec<SquadAnswer>,
}

/// One paragraph (SQuAD's "context") with its article's title and its questions.
#[derive(Clone, Debug, PartialEq)]
pub struct Passage {
    pub title: String,
    pub context: String,
    pub questions: Vec<SquadQuestion>,
}

impl Passage {
    /// Its questions as QA items: each with its distinct answer texts, in order.
    pub fn qa_items(&self) -> Vec<QaItem> {
        self.questions
            .iter()
            .map(|q| {
                let mut answers: Vec<String> = vec![];
                for a in &q.answers {
                    if !answers.contains(&a.text) {
                        answers.push(a.text.clone());
                    }
                }
                QaItem { question: q.question.clone(), answers }
            })
            .collect()
    }
}

#[derive(Clone, Debug)]
pub struct SquadSet {
    pub version: String,
    pub passages: Vec<Passage>,
}

impl SquadSet {
    pub fn n_questions(&self) -> usize {
        self.passages.iter().map(|p| p.questions.len()).sum()
    }

    /// Number of articles (distinct consecutive titles).
    pub fn n_articles(&self) -> usize {
        let mut n = 0;
        let mut last: Option<&str> = None;
        for p in &self.passages {
            if last != Some(p.title.as_str()) {
                n += 1;
                last = Some(&p.title);
            }
        }
        n
    }
}

#[derive(Deserialize)]
struct RawFile {
    version: String,
    data: Vec<RawArticle>,
}

#[derive(Deserialize)]
struct RawArticle {
    title: String,
    paragraphs: Vec<RawParagraph>,
}

#[derive(Deserialize)]
struct RawParagraph {
    context: String,
    qas: Vec<SquadQuestion>,
}

/// Read a SQuAD v1.1 file.
pub fn load_squad(path: &Path) -> Result<SquadSet> {
    let bad = |msg: String| -> anyhow::Error { MemtuneError::Other(format!("SQuAD file {}: {msg}", path.display())).into() };
    let text = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read: {e}")))?;
    let de = &mut serde_json::Deserializer::from_str(&text);
    let raw: RawFile = serde_path_to_error::deserialize(de).map_err(|e| bad(format!("at {}: {}", e.path(), e.inner())))?;
    let mut passages = vec![];
    for (a, art) in raw.data.into_iter().enumerate() {
        for (p, para) in art.paragraphs.into_iter().enumerate() {
            let at = format!("data[{a}].paragraphs[{p}]");
            if para.context.trim().is_empty() {
                return Err(bad(format!("at {at}.context: empty")));
            }
            for (q, qa) in para.qas.iter().enumerate() {
                if qa.question.trim().is_empty() {
                    return Err(bad(format!("at {at}.qas[{q}].question: empty")));
                }
                if qa.answers.is_empty() {
                    return Err(bad(format!("at {at}.qas[{q}].answers: empty (SQuAD v1.1 questions all have answers)")));
                }
            }
            passages.push(Passage { title: art.title.clone(), context: para.context, questions: para.qas });
        }
    }
    Ok(SquadSet { version: raw.version, passages })
}
