//! Model hyperparameters with Hugging Face `LlamaConfig` field names, so `config.json` files of
//! real checkpoints load and memtune's own `config.json` can be read by other tools.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Grouped-query attention: number of key/value heads (divides num_attention_heads).
    pub num_key_value_heads: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub tie_word_embeddings: bool,
    /// Bias on q/k/v projections (Qwen2 style).
    pub attention_bias: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
}

impl Default for LlamaConfig {
    fn default() -> Self {
        Self {
            vocab_size: 4096,
            hidden_size: 256,
            intermediate_size: 688,
            num_hidden_layers: 4,
            num_attention_heads: 4,
            num_key_value_heads: 4,
            max_position_embeddings: 512,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            tie_word_embeddings: false,
            attention_bias: false,
            bos_token_id: None,
            eos_token_id: None,
        }
    }
}

impl LlamaConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Structural checks; the message names the offending field.
    pub fn validate(&self) -> Result<(), String> {
        let pos = |name: &str, v: usize| if v == 0 { Err(format!("model.{name} must be > 0")) } else { Ok(()) };
        pos("vocab_size", self.vocab_size)?;
        pos("hidden_size", self.hidden_size)?;
        pos("intermediate_size", self.intermediate_size)?;
        pos("num_hidden_layers", self.num_hidden_layers)?;
        pos("num_attention_heads", self.num_attention_heads)?;
        pos("num_key_value_heads", self.num_key_value_heads)?;
        pos("max_position_embeddings", self.max_position_embeddings)?;
        if self.hidden_size % self.num_attention_heads != 0 {
            return Err(format!(
                "model.hidden_size ({}) must be divisible by model.num_attention_heads ({})",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.num_attention_heads % self.num_key_value_heads != 0 {
            return Err(format!(
                "model.num_attention_heads ({}) must be divisible by model.num_key_value_heads ({})",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if self.head_dim() % 2 != 0 {
            return Err(format!("model head dim ({}) must be even for RoPE", self.head_dim()));
        }
        Ok(())
    }

    /// Read a Hugging Face `config.json`, keeping the fields memtune uses and ignoring the rest.
    pub fn from_hf_json(text: &str) -> anyhow::Result<Self> {
        let v: serde_json::Value = serde_json::from_str(text)?;
        let obj = v.as_object().ok_or_else(|| anyhow::anyhow!("config.json is not a JSON object"))?;
        let known: serde_json::Map<String, serde_json::Value> = obj
            .iter()
            .filter(|(k, _)| KNOWN_FIELDS.contains(&k.as_str()))
            .map(|(k, v)| {
                // HF allows eos_token_id to be a list; keep the first.
                let v = match v {
                    serde_json::Value::Array(a) if k.ends_with("token_id") => a.first().cloned().unwrap_or_default(),
                    other => other.clone(),
                };
                (k.clone(), v)
            })
            .collect();
        let mut cfg: LlamaConfig = serde_json::from_value(serde_json::Value::Object(known))?;
        if !obj.contains_key("num_key_value_heads") {
            cfg.num_key_value_heads = cfg.num_attention_heads;
        }
        if !obj.contains_key("attention_bias") {
            // Qwen2 always has q/k/v bias and does not write the field.
            cfg.attention_bias = obj.get("model_type").and_then(|m| m.as_str()) == Some("qwen2");
        }
        cfg.validate().map_err(|e| anyhow::anyhow!(e))?;
        Ok(cfg)
    }

    /// The `config.json` memtune writes: HF field names plus architecture markers.
    pub fn to_hf_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("config serialises");
        let o = v.as_object_mut().unwrap();
        o.insert("architectures".into(), serde_json::json!(["LlamaForCausalLM"]));
        o.insert("model_type".into(), serde_json::json!("llama"));
        o.insert("hidden_act".into(), serde_json::json!("silu"));
        o.insert("torch_dtype".into(), serde_json::json!("float32"));
        v
    }
}

const KNOWN_FIELDS: &[&str] = &[
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "max_position_embeddings",
    "rms_norm_eps",
    "rope_theta",
    "tie_word_embeddings",
    "attention_bias",
    "bos_token_id",
    "eos_token_id",
];
