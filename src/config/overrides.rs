//! `--set key=value` overrides and the location of a TOML error.

use crate::MemtuneError;
use anyhow::Result;

pub(super) fn snippet(text: &str, span: std::ops::Range<usize>) -> String {
    let line_start = text[..span.start.min(text.len())].rfind('\n').map(|i| i + 1).unwrap_or(0);
    let line_end = text[line_start..].find('\n').map(|i| line_start + i).unwrap_or(text.len());
    let line_no = text[..line_start].matches('\n').count() + 1;
    format!("line {line_no}: {}", text[line_start..line_end].trim())
}

/// `a.b.c=value`: value parsed as a TOML value (number, bool, array, quoted string), else a bare string.
pub(super) fn apply_override(root: &mut toml::Table, o: &str, file: &str) -> Result<()> {
    let (key, raw) = o.split_once('=').ok_or_else(|| MemtuneError::BadConfigValue {
        file: file.into(),
        key: o.into(),
        msg: "--set expects key=value".into(),
    })?;
    let key = key.trim();
    let value = match format!("v = {raw}").parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").unwrap(),
        Err(_) => toml::Value::String(raw.to_string()),
    };
    let parts: Vec<&str> = key.split('.').collect();
    let mut table = root;
    for p in &parts[..parts.len() - 1] {
        let entry = table.entry(p.to_string()).or_insert_with(|| toml::Value::Table(Default::default()));
        table = entry.as_table_mut().ok_or_else(|| MemtuneError::BadConfigValue {
            file: file.into(),
            key: key.into(),
            msg: format!("`{p}` is not a section"),
        })?;
    }
    table.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}
