//! `memtune import --gguf FILE --out DIR`: a llama.cpp GGUF file → a Hugging Face-style model
//! folder that `model::pretrained::load_model_dir` (and `transformers`) loads:
//!
//! ```text
//! <out>/model.safetensors      dequantised weights (f32 or bf16), LlamaForCausalLM names,
//!                              q/k rows back in rotate-half order (tensors.rs)
//! <out>/config.json            from the `<arch>.*` metadata (config.rs)
//! <out>/tokenizer.json         from the `tokenizer.*` metadata (tokenizer.rs)
//! <out>/tokenizer_config.json  bos/eos/unk/pad token strings, chat template if present
//! ```
//! Everything is written into a hidden sibling of `<out>` and renamed at the end (`StagedDir`),
//! so a failed import leaves no `<out>`. Candle reads the file and dequantises its blocks.

pub mod config;
pub mod metadata;
pub mod tensors;
pub mod tokenizer;

use crate::io::atomic::write_atomic;
use crate::io::checkpoint::{write_tensors, CONFIG_FILE, MODEL_FILE};
use crate::io::staged_dir::StagedDir;
use anyhow::{anyhow, Context, Result};
use candle_core::quantized::gguf_file::Content;
use candle_core::DType;
use serde::Serialize;
use std::path::{Path, PathBuf};

pub use crate::io::files::{TOKENIZER_CONFIG_FILE, TOKENIZER_FILE};

/// The dtype of the written weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightDtype {
    F32,
    Bf16,
}

impl WeightDtype {
    fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::Bf16 => DType::BF16,
        }
    }

    /// Hugging Face's `torch_dtype` name.
    fn torch_name(self) -> &'static str {
        match self {
            Self::F32 => "float32",
            Self::Bf16 => "bfloat16",
        }
    }
}

impl std::str::FromStr for WeightDtype {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(Self::F32),
            "bf16" => Ok(Self::Bf16),
            other => Err(format!("unknown dtype {other:?} (f32 or bf16)")),
        }
    }
}

/// What an import did (printed by the CLI as one JSON line).
#[derive(Debug, Serialize)]
pub struct ImportReport {
    pub out: PathBuf,
    pub architecture: String,
    pub tensors: usize,
    pub parameters: usize,
    pub dtype: String,
    pub tokens: usize,
    pub seconds: f64,
}

/// Import `gguf` into the model folder `out` (which must not exist, or be empty).
pub fn import_gguf(gguf: &Path, out: &Path, dtype: WeightDtype) -> Result<ImportReport> {
    let start = std::time::Instant::now();
    let stage = StagedDir::new(out)?;
    let mut reader = std::io::BufReader::new(std::fs::File::open(gguf).with_context(|| format!("cannot open {}", gguf.display()))?);
    let content = Content::read(&mut reader).map_err(|e| anyhow!("GGUF {}: cannot read the header: {e}", gguf.display()))?;
    let md = metadata::Metadata::new(gguf, &content.metadata);
    let hp = config::Hyperparams::read(&md, &content.tensor_infos)?;
    let tok = tokenizer::build(&md, hp.max_position_embeddings)?;
    let tokens = check_tokenizer(&tok.tokenizer, hp.vocab_size, gguf)?;
    let plan = tensors::plan(gguf, content.tensor_infos.keys().cloned(), &hp)?;
    let weights = tensors::convert_all(&content, &mut reader, gguf, &plan, dtype.dtype())?;
    let parameters = weights.values().map(|t| t.elem_count()).sum();

    let dir = stage.path();
    let metadata = [("format".to_string(), "pt".to_string()), ("source".to_string(), "gguf".to_string())];
    write_tensors(&dir.join(MODEL_FILE), &weights, Some(metadata.into_iter().collect()))?;
    write_json(&dir.join(CONFIG_FILE), &hp.to_hf_json(dtype.torch_name()))?;
    write_json(&dir.join(TOKENIZER_FILE), &tok.tokenizer)?;
    write_json(&dir.join(TOKENIZER_CONFIG_FILE), &tok.tokenizer_config)?;
    let out = stage.commit()?;
    Ok(ImportReport {
        out,
        architecture: hp.arch.name.to_string(),
        tensors: weights.len(),
        parameters,
        dtype: format!("{dtype:?}").to_lowercase(),
        tokens,
        seconds: start.elapsed().as_secs_f64(),
    })
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    write_atomic(path, &serde_json::to_vec_pretty(v)?)
}

/// The rebuilt tokenizer must load, and every token must have an embedding row; returns the
/// number of tokens.
fn check_tokenizer(json: &serde_json::Value, vocab_rows: usize, gguf: &Path) -> Result<usize> {
    let tk: tokenizers::Tokenizer = json
        .to_string()
        .parse()
        .map_err(|e| anyhow!("GGUF {}: the tokenizer rebuilt from its metadata does not load: {e}", gguf.display()))?;
    let tokens = tk.get_vocab_size(true);
    if tokens > vocab_rows {
        anyhow::bail!(
            "GGUF {}: `tokenizer.ggml.tokens` has {tokens} tokens but `token_embd.weight` only {vocab_rows} rows",
            gguf.display()
        );
    }
    Ok(tokens)
}
