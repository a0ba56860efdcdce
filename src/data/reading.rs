//! The reader world (docs/design.md, "SEAL"): pretraining documents that teach the synthetic
//! world's model to read a passage, for SEAL to have a model whose self-edits can carry facts.
//! Two kinds, both about strangers (`World::stranger`: a fresh name no person of the world has,
//! fresh attribute values), so the facts are in the passage and nowhere else and the only way to
//! predict them is to read it; the SEAL and new people stay unseen:
//!
//! - open-book: a biography, then questions about it answered from it, in the form SEAL's
//!   open-book prompt uses (`{passage}\nQ: {question} A: {answer}`, one question per line);
//! - restatement: `restate_prompt` around a biography, then statements that restate its facts in
//!   other words, one per line (what a self-edit is).
//!
//! Off by default: with both fractions 0 the pretraining stream is unchanged, draw for draw.

use super::synthetic::{render_bio, render_qa, render_statement, Attribute, Person, World};
use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};

/// `[data.reading]`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ReadingConfig {
    /// Fraction of pretraining documents that are open-book (0: none).
    pub open_book_fraction: f64,
    /// Fraction that are restatements (0: none).
    pub restate_fraction: f64,
    /// Questions per open-book document (at most one per attribute).
    pub questions: usize,
    /// Statements per restatement document.
    pub statements: usize,
    /// What a restatement document starts with; `{passage}` is the biography, `{title}` the name.
    /// The SEAL template of a reader-world run should be the same text.
    pub restate_prompt: String,
}

/// The restatement prompt of the reader-world configs, also their SEAL template.
pub const RESTATE_PROMPT: &str = "{passage}\nFacts:\n";

impl Default for ReadingConfig {
    fn default() -> Self {
        Self { open_book_fraction: 0.0, restate_fraction: 0.0, questions: 3, statements: 5, restate_prompt: RESTATE_PROMPT.into() }
    }
}

impl ReadingConfig {
    pub fn is_off(&self) -> bool {
        self.open_book_fraction == 0.0 && self.restate_fraction == 0.0
    }

    /// Errors name the key under `data.reading`.
    pub fn validate(&self) -> std::result::Result<(), (String, String)> {
        let bad = |k: &str, m: &str| Err((format!("data.reading.{k}"), m.to_string()));
        for (k, f) in [("open_book_fraction", self.open_book_fraction), ("restate_fraction", self.restate_fraction)] {
            if !(0.0..=1.0).contains(&f) {
                return bad(k, "must be in [0, 1]");
            }
        }
        if self.open_book_fraction + self.restate_fraction > 1.0 {
            return bad("restate_fraction", "open_book_fraction + restate_fraction must be ≤ 1");
        }
        if self.questions == 0 {
            return bad("questions", "must be ≥ 1");
        }
        if self.statements == 0 {
            return bad("statements", "must be ≥ 1");
        }
        if !self.restate_prompt.contains("{passage}") {
            return bad("restate_prompt", "must contain {passage}");
        }
        Ok(())
    }

    /// A reading document, or `None` for an ordinary pretraining document (drawn by the caller).
    /// With both fractions 0 nothing is drawn from `rng`.
    pub fn document<R: Rng + ?Sized>(&self, world: &World, rng: &mut R) -> Option<String> {
        if self.is_off() {
            return None;
        }
        let u = rng.random::<f64>();
        if u < self.open_book_fraction {
            Some(open_book_document(&world.stranger(rng), self.questions, rng))
        } else if u < self.open_book_fraction + self.restate_fraction {
            Some(restatement_document(&world.stranger(rng), &self.restate_prompt, self.statements, rng))
        } else {
            None
        }
    }
}

/// A fresh biography of `p`, then `questions` of its facts asked and answered (distinct
/// attributes, random question templates).
pub fn open_book_document<R: Rng + ?Sized>(p: &Person, questions: usize, rng: &mut R) -> String {
    let bio = render_bio(p, rng);
    let mut attrs = Attribute::ALL.to_vec();
    attrs.shuffle(rng);
    let lines: Vec<String> =
        attrs.iter().take(questions).map(|&a| render_qa(p, a, rng.random_range(0..a.question_templates().len())).text()).collect();
    format!("{bio}\n{}", lines.join("\n"))
}

/// `prompt` around a fresh biography of `p`, then `statements` restatements of its facts (the
/// attributes in a random order, repeating past five, each in a random bio template).
pub fn restatement_document<R: Rng + ?Sized>(p: &Person, prompt: &str, statements: usize, rng: &mut R) -> String {
    let bio = render_bio(p, rng);
    let mut attrs = Attribute::ALL.to_vec();
    attrs.shuffle(rng);
    let lines: Vec<String> = (0..statements)
        .map(|i| {
            let a = attrs[i % attrs.len()];
            render_statement(p, a, rng.random_range(0..a.bio_templates().len()))
        })
        .collect();
    format!("{}{}", prompt.replace("{passage}", &bio).replace("{title}", &p.name), lines.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::synthetic::WorldConfig;
    use crate::util::rng_for;

    fn world() -> World {
        World::generate(&WorldConfig { seed: 3, n_qa_people: 20, n_bio_only_people: 20, n_new_people: 10, n_seal_people: 10 })
    }

    #[test]
    fn reading_documents_are_about_strangers() {
        let w = world();
        let r = ReadingConfig { open_book_fraction: 0.4, restate_fraction: 0.4, ..Default::default() };
        let mut rng = rng_for(1, "t");
        let (mut open, mut restate) = (0, 0);
        for _ in 0..400 {
            let Some(d) = r.document(&w, &mut rng) else { continue };
            for p in w.all_people() {
                assert!(!d.contains(&p.name), "{} ({:?}) appears in a reading document: {d}", p.name, p.split);
            }
            if d.contains("\nQ: ") {
                open += 1;
                // Every answer is in the passage the document starts with.
                let (passage, qa) = d.split_once('\n').unwrap();
                for line in qa.lines() {
                    let answer = line.rsplit(" A: ").next().unwrap();
                    assert!(passage.contains(answer), "{answer} not in {passage}");
                }
                assert_eq!(qa.lines().count(), r.questions);
            } else {
                restate += 1;
                let (_, facts) = d.split_once("\nFacts:\n").expect("restatements follow the prompt");
                assert_eq!(facts.lines().count(), r.statements);
            }
        }
        assert!(open > 100 && restate > 100, "{open} open-book, {restate} restatements of 400");
    }

    #[test]
    fn off_draws_nothing() {
        let w = world();
        let mut a = rng_for(1, "t");
        let b = a.clone();
        assert_eq!(ReadingConfig::default().document(&w, &mut a), None);
        assert_eq!(a, b);
    }

    #[test]
    fn bad_settings_name_the_key() {
        let key = |r: ReadingConfig| r.validate().unwrap_err().0;
        assert_eq!(key(ReadingConfig { open_book_fraction: 1.5, ..Default::default() }), "data.reading.open_book_fraction");
        assert_eq!(
            key(ReadingConfig { open_book_fraction: 0.6, restate_fraction: 0.6, ..Default::default() }),
            "data.reading.restate_fraction"
        );
        assert_eq!(key(ReadingConfig { questions: 0, ..Default::default() }), "data.reading.questions");
        assert_eq!(key(ReadingConfig { restate_prompt: "Facts:".into(), ..Default::default() }), "data.reading.restate_prompt");
    }
}
