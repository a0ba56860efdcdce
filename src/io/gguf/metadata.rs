//! Typed reads of a GGUF file's metadata. GGUF writers differ in the integer and float widths
//! they use for the same key (u32 here, i32 or u64 there), so reads accept any width; every
//! error names the file and the key.

use anyhow::{anyhow, bail, Result};
use candle_core::quantized::gguf_file::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub struct Metadata<'a> {
    pub file: PathBuf,
    pub values: &'a HashMap<String, Value>,
}

impl<'a> Metadata<'a> {
    pub fn new(file: &Path, values: &'a HashMap<String, Value>) -> Self {
        Self { file: file.to_path_buf(), values }
    }

    fn missing(&self, key: &str) -> anyhow::Error {
        anyhow!("GGUF {}: metadata key `{key}` is missing", self.file.display())
    }

    fn wrong_type(&self, key: &str, want: &str, got: &Value) -> anyhow::Error {
        anyhow!("GGUF {}: metadata key `{key}` should be {want}, found {:?}", self.file.display(), got.value_type())
    }

    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.values.get(key)
    }

    pub fn u64_opt(&self, key: &str) -> Result<Option<u64>> {
        self.get(key).map(|v| as_u64(v).ok_or_else(|| self.wrong_type(key, "a non-negative integer", v))).transpose()
    }

    pub fn u64(&self, key: &str) -> Result<u64> {
        self.u64_opt(key)?.ok_or_else(|| self.missing(key))
    }

    pub fn usize(&self, key: &str) -> Result<usize> {
        Ok(self.u64(key)? as usize)
    }

    pub fn f64_opt(&self, key: &str) -> Result<Option<f64>> {
        self.get(key).map(|v| as_f64(v).ok_or_else(|| self.wrong_type(key, "a number", v))).transpose()
    }

    pub fn f64(&self, key: &str) -> Result<f64> {
        self.f64_opt(key)?.ok_or_else(|| self.missing(key))
    }

    pub fn bool_opt(&self, key: &str) -> Result<Option<bool>> {
        self.get(key)
            .map(|v| match v {
                Value::Bool(b) => Ok(*b),
                other => Err(self.wrong_type(key, "a bool", other)),
            })
            .transpose()
    }

    pub fn str_opt(&self, key: &str) -> Result<Option<&'a str>> {
        self.get(key)
            .map(|v| match v {
                Value::String(s) => Ok(s.as_str()),
                other => Err(self.wrong_type(key, "a string", other)),
            })
            .transpose()
    }

    pub fn str(&self, key: &str) -> Result<&'a str> {
        self.str_opt(key)?.ok_or_else(|| self.missing(key))
    }

    fn array_opt(&self, key: &str) -> Result<Option<&'a [Value]>> {
        self.get(key)
            .map(|v| match v {
                Value::Array(a) => Ok(a.as_slice()),
                other => Err(self.wrong_type(key, "an array", other)),
            })
            .transpose()
    }

    pub fn strings(&self, key: &str) -> Result<Vec<&'a str>> {
        let items = self.array_opt(key)?.ok_or_else(|| self.missing(key))?;
        items
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s.as_str()),
                other => bail!("GGUF {}: `{key}`[{i}] should be a string, found {:?}", self.file.display(), other.value_type()),
            })
            .collect()
    }

    pub fn ints_opt(&self, key: &str) -> Result<Option<Vec<i64>>> {
        let Some(items) = self.array_opt(key)? else { return Ok(None) };
        items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                as_i64(v)
                    .ok_or_else(|| anyhow!("GGUF {}: `{key}`[{i}] should be an integer, found {:?}", self.file.display(), v.value_type()))
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }
}

fn as_i64(v: &Value) -> Option<i64> {
    Some(match v {
        Value::U8(x) => *x as i64,
        Value::I8(x) => *x as i64,
        Value::U16(x) => *x as i64,
        Value::I16(x) => *x as i64,
        Value::U32(x) => *x as i64,
        Value::I32(x) => *x as i64,
        Value::U64(x) => i64::try_from(*x).ok()?,
        Value::I64(x) => *x,
        _ => return None,
    })
}

fn as_u64(v: &Value) -> Option<u64> {
    as_i64(v).and_then(|x| u64::try_from(x).ok()).or(match v {
        Value::U64(x) => Some(*x),
        _ => None,
    })
}

/// Floats stored as f32 are widened by their shortest decimal form, so that 1e-5f32 becomes
/// 1e-5 in config.json rather than 9.999999747378752e-6.
fn as_f64(v: &Value) -> Option<f64> {
    match v {
        Value::F32(x) => x.to_string().parse().ok(),
        Value::F64(x) => Some(*x),
        other => as_i64(other).map(|x| x as f64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_any_width_and_names_the_key() {
        let mut m = HashMap::new();
        m.insert("a".to_string(), Value::U32(7));
        m.insert("b".to_string(), Value::I64(9));
        m.insert("eps".to_string(), Value::F32(1e-5));
        m.insert("s".to_string(), Value::String("x".into()));
        let md = Metadata::new(Path::new("m.gguf"), &m);
        assert_eq!((md.u64("a").unwrap(), md.u64("b").unwrap()), (7, 9));
        assert_eq!(md.f64("eps").unwrap(), 1e-5);
        let e = md.u64("nope").unwrap_err().to_string();
        assert!(e.contains("`nope`") && e.contains("m.gguf"), "{e}");
        let e = md.u64("s").unwrap_err().to_string();
        assert!(e.contains("`s`") && e.contains("integer"), "{e}");
    }
}
