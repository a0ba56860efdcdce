//! The stream of new facts to learn (docs/design.md, "Sparse memory finetuning", the paper's setup): facts are learned
//! one after another, each as one batch of N paraphrased statements, one statement per row (no
//! two copies packed into one sequence; rows right-padded, padding masked out).
//!
//! Sources: the synthetic world's "new people" split (every (person, attribute) pair is a fact;
//! paraphrases are the attribute's biography templates, questions its question templates), or a
//! JSONL file with one fact per line:
//!
//! ```text
//! {"statements": ["Ada Smith works for Nokia.", "Ada Smith is employed by Nokia."],
//!  "question": "Where does Ada Smith work?", "answers": ["Nokia"]}
//! ```
//! `statement` (one string) may stand for `statements`; `questions` (a list of
//! {"question", "answers" | "answer"}) for one question; `answer` (a string) for `answers`. The
//! statements are cycled to N paraphrases. Questions are optional: without them learning is not
//! measured by QA.

use super::batches::{Batch, PaddedBatch};
use super::synthetic::{new_fact_statements, render_qa, Attribute, World};
use super::tokenizer::Tokenizer;
use crate::util::rng_for;
use anyhow::{bail, ensure, Context, Result};
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// A closed-book question and its accepted answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Question {
    pub question: String,
    pub answers: Vec<String>,
}

/// One fact to learn.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fact {
    /// Who or what it is about (reports only).
    pub subject: String,
    /// The synthetic world's attribute name, when it comes from there.
    pub attribute: Option<String>,
    /// Paraphrases of the fact; the batch cycles through them.
    pub statements: Vec<String>,
    /// Questions that test it, never trained on.
    pub questions: Vec<Question>,
}

impl Fact {
    /// The fact's training batch: `n` rows, row i = EOS + statement (i mod len) + EOS (a document
    /// as the pretraining stream frames it), right-padded; loss on every token after the first EOS.
    pub fn batch(&self, tok: &Tokenizer, n: usize) -> Result<Batch> {
        ensure!(n > 0, "a fact batch needs at least one paraphrase");
        ensure!(!self.statements.is_empty(), "fact about `{}` has no statement", self.subject);
        let eos = tok.eos_id();
        let seqs = (0..n).map(|i| tok.encode_document(&self.statements[i % self.statements.len()])).collect::<Result<Vec<_>>>()?;
        Ok(PaddedBatch::from_sequences(&seqs, eos)?.to_batch())
    }
}

/// Every (new person, attribute) fact of the world, shuffled with `seed`; the first `n` (all when
/// `n` is 0). Each has the attribute's first `paraphrases` biography templates as statements (all
/// 8 distinct up to 8) and every question template of the attribute as questions.
pub fn world_facts(world: &World, n: usize, paraphrases: usize, seed: u64) -> Vec<Fact> {
    let mut facts: Vec<Fact> = world
        .new_people
        .iter()
        .flat_map(|p| Attribute::ALL.into_iter().map(move |a| (p, a)))
        .map(|(p, a)| Fact {
            subject: p.name.clone(),
            attribute: Some(a.name().to_string()),
            statements: new_fact_statements(p, a, paraphrases.max(1)),
            questions: (0..a.question_templates().len())
                .map(|t| {
                    let q = render_qa(p, a, t);
                    Question { question: q.question, answers: vec![q.answer] }
                })
                .collect(),
        })
        .collect();
    facts.shuffle(&mut rng_for(seed, "new-facts"));
    if n > 0 {
        facts.truncate(n);
    }
    facts
}

/// Facts from a JSONL file (format in the module doc), in file order; the first `n` (all when 0).
pub fn read_facts_jsonl(path: &Path, n: usize) -> Result<Vec<Fact>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read facts file {}", path.display()))?;
    let mut out = vec![];
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let at = || format!("{}:{}", path.display(), i + 1);
        let v: serde_json::Value = serde_json::from_str(line).with_context(|| format!("{}: not JSON", at()))?;
        let strings = |x: &serde_json::Value| -> Option<Vec<String>> {
            match x {
                serde_json::Value::String(s) => Some(vec![s.clone()]),
                serde_json::Value::Array(a) => a.iter().map(|s| s.as_str().map(String::from)).collect(),
                _ => None,
            }
        };
        let statements = match (&v["statements"], &v["statement"]) {
            (serde_json::Value::Null, serde_json::Value::Null) => bail!("{}: no \"statements\" (or \"statement\")", at()),
            (s, serde_json::Value::Null) | (serde_json::Value::Null, s) => {
                strings(s).with_context(|| format!("{}: \"statements\" must be a string or a list of strings", at()))?
            }
            _ => bail!("{}: give \"statements\" or \"statement\", not both", at()),
        };
        ensure!(!statements.is_empty() && statements.iter().all(|s| !s.trim().is_empty()), "{}: empty statement", at());
        let question = |q: &serde_json::Value| -> Result<Question> {
            let question = q["question"].as_str().with_context(|| format!("{}: a question needs \"question\"", at()))?.to_string();
            let answers = match (&q["answers"], &q["answer"]) {
                (serde_json::Value::Null, serde_json::Value::Null) => bail!("{}: question without \"answers\" (or \"answer\")", at()),
                (a, serde_json::Value::Null) | (serde_json::Value::Null, a) => {
                    strings(a).with_context(|| format!("{}: \"answers\" must be strings", at()))?
                }
                _ => bail!("{}: give \"answers\" or \"answer\", not both", at()),
            };
            Ok(Question { question, answers })
        };
        let mut questions = vec![];
        if !v["question"].is_null() {
            questions.push(question(&v)?);
        }
        if let Some(qs) = v["questions"].as_array() {
            for q in qs {
                questions.push(question(q)?);
            }
        }
        let subject = v["subject"].as_str().map(String::from).unwrap_or_else(|| format!("line {}", i + 1));
        out.push(Fact { subject, attribute: None, statements, questions });
        if n > 0 && out.len() == n {
            break;
        }
    }
    ensure!(!out.is_empty(), "facts file {} holds no fact", path.display());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::synthetic::WorldConfig;
    use crate::ops::IGNORE_INDEX;

    fn world() -> World {
        World::generate(&WorldConfig { seed: 3, n_qa_people: 5, n_bio_only_people: 5, n_new_people: 4, n_seal_people: 0 })
    }

    #[test]
    fn world_facts_cover_new_people_and_are_seeded() {
        let w = world();
        let all = world_facts(&w, 0, 8, 1);
        assert_eq!(all.len(), 4 * 5);
        assert_eq!(world_facts(&w, 0, 8, 1), all);
        assert_ne!(world_facts(&w, 0, 8, 2), all, "another seed, another order");
        let some = world_facts(&w, 7, 3, 1);
        assert_eq!(some, all[..7].iter().map(|f| Fact { statements: f.statements[..3].to_vec(), ..f.clone() }).collect::<Vec<_>>());
        for f in &all {
            let p = w.find(&f.subject).unwrap();
            let a = Attribute::from_name(f.attribute.as_deref().unwrap()).unwrap();
            assert_eq!(p.split, crate::data::synthetic::Split::New);
            assert!(f.statements.iter().all(|s| s.contains(&p.name) && s.contains(p.get(a))));
            assert_eq!(f.statements.iter().collect::<std::collections::HashSet<_>>().len(), 8);
            assert_eq!(f.questions.len(), a.question_templates().len());
            assert!(f.questions.iter().all(|q| q.answers == [p.get(a)] && q.question.contains(&p.name)));
        }
    }

    #[test]
    fn fact_batch_is_one_padded_row_per_paraphrase() {
        let w = world();
        let tok = crate::data::tokenizer::train_bpe(w.corpus_sample(50, 0), 300).unwrap();
        let f = &world_facts(&w, 1, 8, 0)[0];
        let b = f.batch(&tok, 8).unwrap();
        assert_eq!(b.batch, 8);
        let mask = b.mask.as_ref().unwrap();
        for r in 0..8 {
            let enc = tok.encode(&f.statements[r]).unwrap();
            let row = &b.inputs[r * b.seq..(r + 1) * b.seq];
            let n = enc.len() + 1;
            assert_eq!(row[0], tok.eos_id());
            assert_eq!(&row[1..n], &enc[..]);
            assert!(mask[r * b.seq..r * b.seq + n].iter().all(|&m| m));
            assert!(mask[r * b.seq + n..(r + 1) * b.seq].iter().all(|&m| !m), "padding is masked");
            let tg = &b.targets[r * b.seq..(r + 1) * b.seq];
            assert_eq!(&tg[..n - 1], &enc[..]);
            assert_eq!(tg[n - 1], tok.eos_id());
            assert!(tg[n..].iter().all(|&t| t == IGNORE_INDEX));
        }
        // Fewer statements than rows: cycled.
        let one = Fact { statements: vec![f.statements[0].clone()], ..f.clone() };
        let b1 = one.batch(&tok, 3).unwrap();
        assert_eq!(b1.inputs[..b1.seq], b1.inputs[b1.seq..2 * b1.seq]);
    }

    #[test]
    fn jsonl_facts_parse_and_errors_name_the_line() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("facts.jsonl");
        std::fs::write(
            &p,
            concat!(
                "{\"statements\": [\"A is B.\", \"B is A's.\"], \"question\": \"What is A?\", \"answers\": [\"B\"]}\n",
                "\n",
                "{\"statement\": \"C likes D.\", \"subject\": \"C\", \"questions\": [{\"question\": \"What does C like?\", \"answer\": \"D\"}]}\n",
                "{\"statement\": \"E.\"}\n"
            ),
        )
        .unwrap();
        let f = read_facts_jsonl(&p, 0).unwrap();
        assert_eq!(f.len(), 3);
        assert_eq!(f[0].statements.len(), 2);
        assert_eq!(f[0].questions, vec![Question { question: "What is A?".into(), answers: vec!["B".into()] }]);
        assert_eq!((f[1].subject.as_str(), f[1].questions[0].answers[0].as_str()), ("C", "D"));
        assert!(f[2].questions.is_empty());
        assert_eq!(read_facts_jsonl(&p, 2).unwrap().len(), 2);
        std::fs::write(&p, "{\"statements\": [\"ok.\"]}\n{\"text\": \"no statement\"}\n").unwrap();
        let e = read_facts_jsonl(&p, 0).unwrap_err().to_string();
        assert!(e.contains("facts.jsonl:2") && e.contains("statements"), "{e}");
    }
}
