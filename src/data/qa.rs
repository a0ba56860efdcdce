//! Question/answer items and the JSONL files that hold them: one `{"question": ..., "answers":
//! [...]}` (or `"answer": "..."`) per line. Closed-book probes such as the Natural Questions file
//! `scripts/get-squad.sh` writes (`data/nq-closed-book.jsonl`) are in this format.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct QaItem {
    pub question: String,
    /// Every accepted answer (scoring takes the best match).
    pub answers: Vec<String>,
}

/// Read a JSONL file of {"question", "answers": [...]} (or "answer": "..."); blank lines are
/// skipped. Errors name the file and line.
pub fn read_jsonl(path: &Path) -> Result<Vec<QaItem>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut out = vec![];
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let at = || format!("{}:{}", path.display(), i + 1);
        let v: serde_json::Value = serde_json::from_str(line).with_context(|| format!("{}: not JSON", at()))?;
        let q = v["question"].as_str().with_context(|| format!("{}: no \"question\" string", at()))?;
        let answers: Vec<String> = match (&v["answers"], &v["answer"]) {
            (serde_json::Value::Array(a), _) => a
                .iter()
                .enumerate()
                .map(|(j, x)| x.as_str().map(String::from).with_context(|| format!("{}: answers[{j}] is not a string", at())))
                .collect::<Result<_>>()?,
            (_, serde_json::Value::String(s)) => vec![s.clone()],
            _ => anyhow::bail!("{}: no \"answers\" list or \"answer\" string", at()),
        };
        anyhow::ensure!(!answers.is_empty(), "{}: \"answers\" is empty", at());
        out.push(QaItem { question: q.to_string(), answers });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_spellings_and_names_the_bad_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("qa.jsonl");
        std::fs::write(&p, "{\"question\": \"q1\", \"answers\": [\"a\", \"b\"]}\n\n{\"question\": \"q2\", \"answer\": \"c\"}\n").unwrap();
        let items = read_jsonl(&p).unwrap();
        assert_eq!(items[0], QaItem { question: "q1".into(), answers: vec!["a".into(), "b".into()] });
        assert_eq!(items[1].answers, vec!["c".to_string()]);
        for (body, want) in [
            ("{\"question\": \"q\"}", "qa.jsonl:1: no \"answers\""),
            ("{\"answers\": [\"a\"]}", "qa.jsonl:1: no \"question\""),
            ("{\"question\": \"q\", \"answers\": [1]}", "qa.jsonl:1: answers[0]"),
            ("{\"question\": \"q\", \"answers\": []}", "qa.jsonl:1: \"answers\" is empty"),
            ("not json", "qa.jsonl:1: not JSON"),
        ] {
            std::fs::write(&p, body).unwrap();
            let err = format!("{:#}", read_jsonl(&p).unwrap_err());
            assert!(err.contains(want), "{err}");
        }
    }
}
