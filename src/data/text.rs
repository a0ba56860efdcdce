//! Plain-text corpora: documents read from local files.

use crate::MemtuneError;
use anyhow::Result;
use std::path::Path;

/// Documents from `paths`: for `.jsonl` files each non-empty line's "text" field, otherwise the
/// whole file. Errors name the file (and line).
pub fn read_documents(paths: &[impl AsRef<Path>]) -> Result<Vec<String>> {
    let mut docs = Vec::new();
    for path in paths {
        let path = path.as_ref();
        let text =
            std::fs::read_to_string(path).map_err(|e| MemtuneError::Other(format!("cannot read corpus file {}: {e}", path.display())))?;
        if is_jsonl(path) {
            for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                docs.push(
                    jsonl_text(line).map_err(|m| MemtuneError::Other(format!("corpus file {} line {}: {m}", path.display(), i + 1)))?,
                );
            }
        } else {
            docs.push(text);
        }
    }
    Ok(docs)
}

fn is_jsonl(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("jsonl"))
}

fn jsonl_text(line: &str) -> std::result::Result<String, String> {
    let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("invalid JSON: {e}"))?;
    match v.get("text") {
        Some(serde_json::Value::String(s)) => Ok(s.clone()),
        Some(_) => Err("\"text\" is not a string".into()),
        None => Err("no \"text\" field".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_plain_and_jsonl() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (dir.path().join("a.txt"), dir.path().join("b.jsonl"), dir.path().join("c.jsonl"));
        std::fs::write(&a, "whole\nfile").unwrap();
        std::fs::write(&b, "{\"text\": \"one\"}\n\n{\"text\": \"two\", \"x\": 1}\n").unwrap();
        std::fs::write(&c, "{\"text\": \"ok\"}\n{\"body\": \"no\"}\n").unwrap();
        assert_eq!(read_documents(&[a, b]).unwrap(), vec!["whole\nfile", "one", "two"]);
        let err = read_documents(&[c]).unwrap_err().to_string();
        assert!(err.contains("c.jsonl line 2"), "{err}");
        assert!(read_documents(&[dir.path().join("nope.txt")]).unwrap_err().to_string().contains("nope.txt"));
    }
}
