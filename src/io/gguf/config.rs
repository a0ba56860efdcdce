//! The model's hyperparameters from a GGUF file's `<arch>.*` metadata, written out as a Hugging
//! Face `config.json` (the `LlamaConfig` field names `model::LlamaConfig::from_hf_json` reads).
//!
//! Key names follow llama.cpp's `gguf-py/gguf/constants.py` (`{arch}.embedding_length`, ...).
//! What memtune's model cannot represent (RoPE scaling, mixtures of experts, a head size other
//! than hidden / heads) is an error naming the key, not a silently different model.

use super::metadata::Metadata;
use anyhow::{bail, Result};
use candle_core::quantized::gguf_file::TensorInfo;
use std::collections::HashMap;

/// A GGUF architecture memtune imports.
#[derive(Debug)]
pub struct Architecture {
    /// `general.architecture`, also the prefix of its metadata keys.
    pub name: &'static str,
    /// Hugging Face `model_type` and class.
    pub model_type: &'static str,
    pub hf_class: &'static str,
    /// llama.cpp's converter permutes q/k rows of this architecture for its interleaved RoPE;
    /// memtune's RoPE is Hugging Face's rotate-half, so the import undoes it.
    pub qk_permuted: bool,
}

pub const ARCHITECTURES: &[Architecture] = &[
    Architecture { name: "llama", model_type: "llama", hf_class: "LlamaForCausalLM", qk_permuted: true },
    // Qwen2 uses NeoX-style (rotate-half) RoPE in llama.cpp too: no permutation.
    Architecture { name: "qwen2", model_type: "qwen2", hf_class: "Qwen2ForCausalLM", qk_permuted: false },
];

/// The RoPE base llama.cpp assumes when `{arch}.rope.freq_base` is absent.
const DEFAULT_ROPE_THETA: f64 = 10_000.0;

#[derive(Debug, Clone)]
pub struct Hyperparams {
    pub arch: &'static Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub tie_word_embeddings: bool,
    pub attention_bias: bool,
    pub bos_token_id: Option<u64>,
    pub eos_token_id: Option<u64>,
}

impl Hyperparams {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Read and check the hyperparameters; `tensors` supplies what only the tensors say (vocab
    /// rows, whether the output projection is tied, whether q/k/v have biases).
    pub fn read(md: &Metadata, tensors: &HashMap<String, TensorInfo>) -> Result<Self> {
        let arch = architecture(md)?;
        let key = |k: &str| format!("{}.{k}", arch.name);
        let hidden_size = md.usize(&key("embedding_length"))?;
        let heads = md.usize(&key("attention.head_count"))?;
        if heads == 0 || hidden_size % heads != 0 {
            bail!(
                "GGUF {}: `{}` ({heads}) must divide `{}` ({hidden_size})",
                md.file.display(),
                key("attention.head_count"),
                key("embedding_length")
            );
        }
        let head_dim = hidden_size / heads;
        for k in ["rope.dimension_count", "attention.key_length", "attention.value_length"] {
            if let Some(v) = md.u64_opt(&key(k))? {
                if v as usize != head_dim {
                    bail!(
                        "GGUF {}: `{}` is {v} but memtune's attention needs embedding_length / head_count = {head_dim}",
                        md.file.display(),
                        key(k)
                    );
                }
            }
        }
        if let Some(kind) = md.str_opt(&key("rope.scaling.type"))?.filter(|t| *t != "none") {
            bail!("GGUF {}: `{}` = {kind:?}: RoPE scaling is not supported", md.file.display(), key("rope.scaling.type"));
        }
        if md.u64_opt(&key("expert_count"))?.unwrap_or(0) > 0 {
            bail!("GGUF {}: `{}` > 0: mixture-of-experts models are not supported", md.file.display(), key("expert_count"));
        }
        let embd = tensors
            .get("token_embd.weight")
            .ok_or_else(|| anyhow::anyhow!("GGUF {}: tensor `token_embd.weight` is missing", md.file.display()))?;
        Ok(Self {
            arch,
            vocab_size: embd.shape.dims()[0],
            hidden_size,
            intermediate_size: md.usize(&key("feed_forward_length"))?,
            num_hidden_layers: md.usize(&key("block_count"))?,
            num_attention_heads: heads,
            num_key_value_heads: md.u64_opt(&key("attention.head_count_kv"))?.map(|v| v as usize).unwrap_or(heads),
            max_position_embeddings: md.usize(&key("context_length"))?,
            rms_norm_eps: md.f64(&key("attention.layer_norm_rms_epsilon"))?,
            rope_theta: md.f64_opt(&key("rope.freq_base"))?.unwrap_or(DEFAULT_ROPE_THETA),
            tie_word_embeddings: !tensors.contains_key("output.weight"),
            attention_bias: tensors.contains_key("blk.0.attn_q.bias"),
            bos_token_id: md.u64_opt("tokenizer.ggml.bos_token_id")?,
            eos_token_id: md.u64_opt("tokenizer.ggml.eos_token_id")?,
        })
    }

    /// `config.json`: Hugging Face field names.
    pub fn to_hf_json(&self, torch_dtype: &str) -> serde_json::Value {
        serde_json::json!({
            "architectures": [self.arch.hf_class],
            "model_type": self.arch.model_type,
            "hidden_act": "silu",
            "torch_dtype": torch_dtype,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.attention_bias,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
        })
    }
}

fn architecture(md: &Metadata) -> Result<&'static Architecture> {
    let name = md.str("general.architecture")?;
    ARCHITECTURES.iter().find(|a| a.name == name).ok_or_else(|| {
        let known: Vec<&str> = ARCHITECTURES.iter().map(|a| a.name).collect();
        anyhow::anyhow!(
            "GGUF {}: `general.architecture` is {name:?}, which memtune cannot import (supported: {})",
            md.file.display(),
            known.join(", ")
        )
    })
}
