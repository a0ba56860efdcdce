//! Multiple-choice tasks scored by log-likelihood, as lm-evaluation-harness scores them: the
//! model's answer is the choice with the highest summed log-probability after the question
//! (`acc`), or the highest per byte of the choice (`acc_norm`). Tasks are read from BIG-bench's
//! JSON format (`{"examples": [{"input", "target_scores": {choice: 0|1}}], "task_prefix",
//! "example_input_prefix", "example_output_prefix"}`); an example's context is task prefix +
//! input prefix (BIG-bench's default "\nQ: ") + input + output prefix (default "\nA: "). The
//! choices are not listed in the context (BIG-bench's `append_choices_to_input` is ignored).

use super::metrics::mean_stderr;
use super::score::continuation_logprobs;
use crate::data::tokenizer::Tokenizer;
use crate::model::Llama;
use anyhow::{ensure, Context, Result};
use serde::Serialize;
use std::path::Path;

/// One question and its choices.
#[derive(Clone, Debug, PartialEq)]
pub struct ChoiceItem {
    pub context: String,
    pub choices: Vec<String>,
    /// Index of the correct choice.
    pub correct: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct ChoiceReport {
    pub n: usize,
    pub acc: f64,
    pub acc_stderr: f64,
    pub acc_norm: f64,
    pub acc_norm_stderr: f64,
    /// Accuracy of a uniform guess (mean of 1 / choices).
    pub chance: f64,
}

/// The examples of a BIG-bench JSON task: the first `limit` (all when 0) after a seeded shuffle.
/// Errors name the file and the example.
pub fn read_bigbench(path: &Path, limit: usize, seed: u64) -> Result<Vec<ChoiceItem>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read multiple-choice task {}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
    let prefix = |key: &str, default: &str| v.get(key).and_then(|x| x.as_str()).unwrap_or(default).to_string();
    let (task, input, output) =
        (prefix("task_prefix", ""), prefix("example_input_prefix", "\nQ: "), prefix("example_output_prefix", "\nA: "));
    let examples = v
        .get("examples")
        .and_then(|e| e.as_array())
        .with_context(|| format!("{}: no \"examples\" list (BIG-bench JSON task format)", path.display()))?;
    let mut items = vec![];
    for (i, ex) in examples.iter().enumerate() {
        let at = || format!("{}: examples[{i}]", path.display());
        let q = ex.get("input").and_then(|x| x.as_str()).with_context(|| format!("{}: no \"input\" string", at()))?;
        let scores = ex
            .get("target_scores")
            .and_then(|x| x.as_object())
            .with_context(|| format!("{}: no \"target_scores\" object (not a multiple-choice example)", at()))?;
        ensure!(scores.len() >= 2, "{}: \"target_scores\" has {} choice(s), at least 2 needed", at(), scores.len());
        let choices: Vec<String> = scores.keys().cloned().collect();
        let best: Vec<usize> = scores.values().enumerate().filter(|(_, s)| s.as_f64() == Some(1.0)).map(|(j, _)| j).collect();
        ensure!(best.len() == 1, "{}: \"target_scores\" must score exactly one choice 1 (found {})", at(), best.len());
        let context = format!("{task}{input}{q}{output}").trim_start().to_string();
        items.push(ChoiceItem { context, choices, correct: best[0] });
    }
    ensure!(!items.is_empty(), "{}: no examples", path.display());
    use rand::seq::SliceRandom;
    items.shuffle(&mut crate::util::rng_for(seed, "choice-sample"));
    if limit > 0 {
        items.truncate(limit);
    }
    Ok(items)
}

/// Score every item (see the module doc).
pub fn evaluate_choices(model: &Llama, tok: &Tokenizer, items: &[ChoiceItem]) -> Result<ChoiceReport> {
    let mut pairs = vec![];
    for it in items {
        // The space before a word belongs to the word in byte-level BPE, so a context that
        // ends in a space gives it to the choice.
        let ctx = it.context.trim_end_matches(' ');
        let sep = if ctx.ends_with(char::is_whitespace) { "" } else { " " };
        let c = tok.encode(ctx)?;
        for ch in &it.choices {
            pairs.push((c.clone(), tok.encode(&format!("{sep}{ch}"))?));
        }
    }
    let lps = continuation_logprobs(model, tok, &pairs)?;
    let (mut acc, mut norm, mut chance) = (vec![], vec![], 0.0);
    let mut at = 0;
    for it in items {
        let lp = &lps[at..at + it.choices.len()];
        at += it.choices.len();
        let argmax = |f: &dyn Fn(usize) -> f64| (0..lp.len()).max_by(|&a, &b| f(a).total_cmp(&f(b)).then(b.cmp(&a))).unwrap_or(0);
        acc.push((argmax(&|j| lp[j]) == it.correct) as u8 as f64);
        norm.push((argmax(&|j| lp[j] / it.choices[j].len().max(1) as f64) == it.correct) as u8 as f64);
        chance += 1.0 / it.choices.len() as f64;
    }
    let (a, a_se) = mean_stderr(&acc);
    let (n, n_se) = mean_stderr(&norm);
    Ok(ChoiceReport {
        n: items.len(),
        acc: a,
        acc_stderr: a_se,
        acc_norm: n,
        acc_norm_stderr: n_se,
        chance: chance / items.len().max(1) as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_bigbench_tasks_and_names_the_bad_example() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("task.json");
        std::fs::write(
            &p,
            r#"{"examples": [{"input": "Sky?", "target_scores": {"blue": 1, "green": 0}}], "example_output_prefix": "\nAnswer:"}"#,
        )
        .unwrap();
        let items = read_bigbench(&p, 0, 0).unwrap();
        assert_eq!(
            items,
            vec![ChoiceItem { context: "Q: Sky?\nAnswer:".into(), choices: vec!["blue".into(), "green".into()], correct: 0 }]
        );
        std::fs::write(
            &p,
            r#"{"examples": [{"input": "a", "target_scores": {"x": 1, "y": 0}}, {"input": "b", "target_scores": {"x": 0, "y": 0}}]}"#,
        )
        .unwrap();
        let e = format!("{:#}", read_bigbench(&p, 0, 0).unwrap_err());
        assert!(e.contains("examples[1]") && e.contains("exactly one"), "{e}");
        std::fs::write(&p, r#"{"examples": [{"input": "a", "target": "x"}]}"#).unwrap();
        let e = format!("{:#}", read_bigbench(&p, 0, 0).unwrap_err());
        assert!(e.contains("examples[0]") && e.contains("target_scores"), "{e}");
    }
}
