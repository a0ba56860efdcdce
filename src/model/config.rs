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
    /// RoPE frequency scaling (Llama 3.1+); `None`: plain RoPE.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<super::rope_scaling::RopeScaling>,
    pub tie_word_embeddings: bool,
    /// Bias on q/k/v projections (Qwen2 style).
    pub attention_bias: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    /// Product-key memory layers (`[model.memory]`); written into config.json as "memory".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryConfig>,
}

/// Where a memory layer sits in its block.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MemoryPlacement {
    /// In place of the block's MLP.
    Replace,
    /// Beside the MLP, outputs added (retrofitting a pretrained model).
    Parallel,
}

/// How the value table is optimised (see `train::values`).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum ValueOptimizerKind {
    /// `adamw-rowwise` for tables of at least `ROWWISE_MIN_ROWS` rows, `adamw` below.
    #[serde(rename = "auto")]
    Auto,
    /// Lazy AdamW, m and v per element.
    #[serde(rename = "adamw")]
    Adamw,
    /// Lazy AdamW, m per element and one v per row: the table's optimiser state is ~1× the table
    /// instead of 2×.
    #[serde(rename = "adamw-rowwise")]
    AdamwRowwise,
}

/// Tables with at least this many rows use the row-wise second moment under `auto`: with full m
/// and v a 1M-row table's state alone would be twice the table.
pub const ROWWISE_MIN_ROWS: usize = 1 << 18;

impl ValueOptimizerKind {
    /// `Auto` resolved for a table of `rows` rows.
    pub fn resolve(self, rows: usize) -> Self {
        match self {
            Self::Auto if rows >= ROWWISE_MIN_ROWS => Self::AdamwRowwise,
            Self::Auto => Self::Adamw,
            k => k,
        }
    }
}

/// Product-key memory (Memory+, docs/design.md, "The memory layer").
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryConfig {
    /// Indices of the blocks that get a memory layer; empty: no memory.
    pub layers: Vec<usize>,
    pub placement: MemoryPlacement,
    /// Sub-keys per half; the table has n_keys² slots.
    pub n_keys: usize,
    pub heads: usize,
    /// Slots read per head (top-k).
    pub knn: usize,
    /// Query / key dimension per head (two halves of k_dim/2).
    pub k_dim: usize,
    /// Value dimension.
    pub v_dim: usize,
    /// RMS-normalise each half-query and each sub-key (no learned weight).
    pub qk_norm: bool,
    /// Learning rate of the values (under the same schedule as the dense lr).
    pub value_lr: f64,
    pub value_optimizer: ValueOptimizerKind,
    /// `placement = "parallel"`: initial value of the learnable per-channel gate on the memory's
    /// output (`model.layers.N.memory.gate`). Not 0: the values start at 0 instead (so the
    /// model's outputs are unchanged at step 0) and get their gradient through the gate.
    pub gate_init: f64,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            layers: vec![],
            placement: MemoryPlacement::Replace,
            n_keys: 1024,
            heads: 4,
            knn: 32,
            k_dim: 512,
            v_dim: 1024,
            qk_norm: false,
            value_lr: 1e-3,
            value_optimizer: ValueOptimizerKind::Auto,
            gate_init: 1.0,
        }
    }
}

impl MemoryConfig {
    /// Slots in the value table: n_keys².
    pub fn n_slots(&self) -> usize {
        self.n_keys * self.n_keys
    }

    /// Checks against a model of `num_layers` blocks; the message names the offending key.
    pub fn validate(&self, num_layers: usize) -> Result<(), String> {
        let k = |name: &str| format!("model.memory.{name}");
        let mut seen = std::collections::HashSet::new();
        for &l in &self.layers {
            if l >= num_layers {
                return Err(format!("{}: layer index {l} is out of range (model.num_hidden_layers = {num_layers})", k("layers")));
            }
            if !seen.insert(l) {
                return Err(format!("{}: layer {l} is listed twice", k("layers")));
            }
        }
        for (name, v) in [("n_keys", self.n_keys), ("heads", self.heads), ("knn", self.knn), ("k_dim", self.k_dim), ("v_dim", self.v_dim)] {
            if v == 0 {
                return Err(format!("{} must be > 0", k(name)));
            }
        }
        if !self.k_dim.is_multiple_of(2) {
            return Err(format!("{} ({}) must be even: the query is split into two halves", k("k_dim"), self.k_dim));
        }
        if self.knn > self.n_keys {
            return Err(format!("{} ({}) must be ≤ model.memory.n_keys ({})", k("knn"), self.knn, self.n_keys));
        }
        // Slot indices are u32.
        if self.n_keys > u16::MAX as usize {
            return Err(format!("{} ({}) must be ≤ {}: slot indices n_keys² are u32", k("n_keys"), self.n_keys, u16::MAX));
        }
        if !(self.value_lr.is_finite() && self.value_lr >= 0.0) {
            return Err(format!("{} must be a finite number ≥ 0", k("value_lr")));
        }
        if self.placement == MemoryPlacement::Parallel && !(self.gate_init.is_finite() && self.gate_init != 0.0) {
            return Err(format!("{} must be finite and non-zero: with a zero gate the values get no gradient", k("gate_init")));
        }
        Ok(())
    }
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
            rope_scaling: None,
            tie_word_embeddings: false,
            attention_bias: false,
            bos_token_id: None,
            eos_token_id: None,
            memory: None,
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
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(format!(
                "model.hidden_size ({}) must be divisible by model.num_attention_heads ({})",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !self.num_attention_heads.is_multiple_of(self.num_key_value_heads) {
            return Err(format!(
                "model.num_attention_heads ({}) must be divisible by model.num_key_value_heads ({})",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(format!("model head dim ({}) must be even for RoPE", self.head_dim()));
        }
        if let Some(m) = &self.memory {
            m.validate(self.num_hidden_layers)?;
        }
        if let Some(r) = &self.rope_scaling {
            r.validate().map_err(|e| format!("model.rope_scaling: {e}"))?;
        }
        Ok(())
    }

    /// Read a Hugging Face `config.json`, keeping the fields memtune uses and ignoring the rest.
    /// What memtune's decoder cannot compute exactly (another architecture, RoPE scaling, a
    /// head_dim other than hidden_size / heads, MLP biases, sliding-window attention, another
    /// activation) is an error naming the key, never a silently different model.
    pub fn from_hf_json(text: &str) -> anyhow::Result<Self> {
        let v: serde_json::Value = serde_json::from_str(text)?;
        let obj = v.as_object().ok_or_else(|| anyhow::anyhow!("config.json is not a JSON object"))?;
        check_supported(obj)?;
        let mut known: serde_json::Map<String, serde_json::Value> = obj
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
        // transformers ≥ 5 writes the RoPE base inside `rope_parameters`.
        if !known.contains_key("rope_theta") {
            if let Some(theta) = obj.get("rope_parameters").and_then(|r| r.get("rope_theta")) {
                known.insert("rope_theta".into(), theta.clone());
            }
        }
        let mut cfg: LlamaConfig = serde_json::from_value(serde_json::Value::Object(known))?;
        for key in ["rope_scaling", "rope_parameters"] {
            if let Some(r) =
                obj.get(key).filter(|r| r.get("rope_type").or_else(|| r.get("type")).and_then(|t| t.as_str()) == Some("llama3"))
            {
                cfg.rope_scaling = Some(super::rope_scaling::RopeScaling::from_hf(key, r)?);
            }
        }
        if !obj.contains_key("num_key_value_heads") {
            cfg.num_key_value_heads = cfg.num_attention_heads;
        }
        if !obj.contains_key("attention_bias") {
            // Qwen2 always has q/k/v bias and does not write the field.
            cfg.attention_bias = obj.get("model_type").and_then(|m| m.as_str()) == Some("qwen2");
        }
        cfg.validate().map_err(|e| anyhow::anyhow!(e))?;
        if let Some(hd) = obj.get("head_dim").filter(|h| !h.is_null()) {
            if hd.as_u64() != Some(cfg.head_dim() as u64) {
                anyhow::bail!(
                    "head_dim = {hd} is not supported: memtune's head dim is hidden_size / num_attention_heads = {}",
                    cfg.head_dim()
                );
            }
        }
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

/// Architectures whose `config.json` describes memtune's decoder (memtune writes "llama").
const SUPPORTED_MODEL_TYPES: &[&str] = &["llama", "qwen2", "mistral"];

/// Errors for the `config.json` settings memtune's decoder does not implement.
fn check_supported(obj: &serde_json::Map<String, serde_json::Value>) -> anyhow::Result<()> {
    use serde_json::Value;
    let get = |k: &str| obj.get(k).filter(|v| !v.is_null());
    if let Some(t) = get("model_type") {
        if !t.as_str().is_some_and(|t| SUPPORTED_MODEL_TYPES.contains(&t)) {
            anyhow::bail!("model_type = {t} is not supported (memtune loads {})", SUPPORTED_MODEL_TYPES.join(", "));
        }
    }
    for key in ["hidden_act", "hidden_activation"] {
        if let Some(a) = get(key) {
            if a.as_str() != Some("silu") {
                anyhow::bail!("{key} = {a} is not supported (memtune's MLP is SwiGLU with silu)");
            }
        }
    }
    if get("mlp_bias").and_then(Value::as_bool) == Some(true) {
        anyhow::bail!("mlp_bias = true is not supported (memtune's MLP has no bias)");
    }
    if get("use_sliding_window").and_then(Value::as_bool) == Some(true) {
        anyhow::bail!("use_sliding_window = true is not supported (memtune attends over the whole context)");
    }
    // transformers < 5: `rope_scaling`; ≥ 5: `rope_parameters` (which also holds the theta).
    for key in ["rope_scaling", "rope_parameters"] {
        if let Some(r) = get(key) {
            let kind = r.get("rope_type").or_else(|| r.get("type")).and_then(Value::as_str).unwrap_or("default");
            if kind != "default" && kind != "llama3" {
                anyhow::bail!("{key}.rope_type = {kind:?} is not supported (memtune implements default and llama3 RoPE)");
            }
            if r.get("partial_rotary_factor").and_then(Value::as_f64).is_some_and(|f| f != 1.0) {
                anyhow::bail!("{key}.partial_rotary_factor is not supported (memtune rotates the whole head)");
            }
        }
    }
    Ok(())
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
    "memory",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn with_memory(f: impl FnOnce(&mut MemoryConfig)) -> LlamaConfig {
        let mut m = MemoryConfig { layers: vec![1], ..Default::default() };
        f(&mut m);
        LlamaConfig { memory: Some(m), ..Default::default() }
    }

    #[test]
    fn memory_validation_names_the_key() {
        assert!(with_memory(|_| {}).validate().is_ok());
        let err = |f: fn(&mut MemoryConfig)| with_memory(f).validate().unwrap_err();
        assert!(err(|m| m.layers = vec![4]).contains("model.memory.layers"));
        assert!(err(|m| m.layers = vec![1, 1]).contains("model.memory.layers"));
        assert!(err(|m| m.k_dim = 7).contains("model.memory.k_dim"));
        assert!(err(|m| m.knn = 2000).contains("model.memory.knn"));
        assert!(err(|m| m.heads = 0).contains("model.memory.heads"));
        assert!(err(|m| m.n_keys = 70_000).contains("model.memory.n_keys"));
        assert!(err(|m| m.value_lr = f64::NAN).contains("model.memory.value_lr"));
    }

    #[test]
    fn memory_config_round_trips_through_config_json() {
        let cfg = with_memory(|m| {
            m.placement = MemoryPlacement::Parallel;
            m.value_optimizer = ValueOptimizerKind::AdamwRowwise;
            m.n_keys = 64;
        });
        let json = cfg.to_hf_json();
        assert_eq!(json["memory"]["placement"], "parallel");
        assert_eq!(json["memory"]["value_optimizer"], "adamw-rowwise");
        assert_eq!(LlamaConfig::from_hf_json(&json.to_string()).unwrap(), cfg);
        // Without memory the key is absent, as in Hugging Face configs.
        assert!(LlamaConfig::default().to_hf_json().get("memory").is_none());
        let bad = serde_json::json!({"hidden_size": 256, "memory": {"layers": [0], "knn_typo": 3}});
        assert!(LlamaConfig::from_hf_json(&bad.to_string()).unwrap_err().to_string().contains("knn_typo"));
    }

    #[test]
    fn hf_configs_old_and_new_and_unsupported_settings() {
        let base = serde_json::json!({"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "hidden_act": "silu"});
        let with = |k: &str, v: serde_json::Value| {
            let mut c = base.clone();
            c[k] = v;
            LlamaConfig::from_hf_json(&c.to_string())
        };
        // transformers < 5 and ≥ 5 spell the RoPE base differently.
        assert_eq!(with("rope_theta", serde_json::json!(5e4)).unwrap().rope_theta, 5e4);
        let v5 = with("rope_parameters", serde_json::json!({"rope_theta": 1e6, "rope_type": "default"})).unwrap();
        assert_eq!(v5.rope_theta, 1e6);
        assert_eq!(with("head_dim", serde_json::json!(16)).unwrap().head_dim(), 16);
        let err = |k: &str, v: serde_json::Value| with(k, v).unwrap_err().to_string();
        assert!(err("rope_scaling", serde_json::json!({"rope_type": "dynamic", "factor": 8.0})).contains("rope_scaling.rope_type"));
        let llama3 = serde_json::json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
        let c = with("rope_scaling", llama3.clone()).unwrap();
        assert_eq!(c.rope_scaling.as_ref().unwrap().original_max_position_embeddings, 8192);
        // memtune's own config.json carries it and reads it back.
        assert_eq!(LlamaConfig::from_hf_json(&c.to_hf_json().to_string()).unwrap(), c);
        assert!(err("rope_scaling", serde_json::json!({"rope_type": "llama3", "factor": 8.0})).contains("rope_scaling.low_freq_factor"));
        assert!(err("rope_parameters", serde_json::json!({"rope_type": "yarn"})).contains("rope_parameters.rope_type"));
        assert!(err("head_dim", serde_json::json!(32)).contains("head_dim"));
        assert!(err("model_type", serde_json::json!("gpt2")).contains("model_type"));
        assert!(err("hidden_act", serde_json::json!("gelu")).contains("hidden_act"));
        assert!(err("mlp_bias", serde_json::json!(true)).contains("mlp_bias"));
        assert!(err("use_sliding_window", serde_json::json!(true)).contains("use_sliding_window"));
        // Qwen2 has q/k/v bias without saying so.
        assert!(with("model_type", serde_json::json!("qwen2")).unwrap().attention_bias);
    }

    #[test]
    fn auto_value_optimizer_depends_on_table_size() {
        assert_eq!(ValueOptimizerKind::Auto.resolve(1 << 20), ValueOptimizerKind::AdamwRowwise);
        assert_eq!(ValueOptimizerKind::Auto.resolve(1 << 16), ValueOptimizerKind::Adamw);
        assert_eq!(ValueOptimizerKind::Adamw.resolve(1 << 20), ValueOptimizerKind::Adamw);
    }
}
