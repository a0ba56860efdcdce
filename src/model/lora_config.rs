//! What a LoRA run adapts: rank, alpha, dropout and the target modules (`[finetune.lora]`).

use serde::{Deserialize, Serialize};

/// Short names users give (`q`) and the module names they stand for (`q_proj`).
pub const TARGETS: [(&str, &str); 7] =
    [("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"), ("o", "o_proj"), ("gate", "gate_proj"), ("up", "up_proj"), ("down", "down_proj")];

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f64,
    /// Any of q, k, v, o, gate, up, down (or their `_proj` names).
    pub targets: Vec<String>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self { rank: 16, alpha: 32.0, dropout: 0.0, targets: TARGETS.iter().map(|t| t.0.to_string()).collect() }
    }
}

impl LoraConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.rank == 0 {
            return Err("lora.rank must be > 0".into());
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err("lora.dropout must be in [0, 1)".into());
        }
        for t in &self.targets {
            if module_name(t).is_none() {
                return Err(format!("lora.targets: unknown module `{t}` (expected any of q, k, v, o, gate, up, down)"));
            }
        }
        Ok(())
    }

    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    /// Whether the linear layer named `module` (e.g. `q_proj`) gets an adapter.
    pub fn targets_module(&self, module: &str) -> bool {
        self.targets.iter().any(|t| module_name(t) == Some(module))
    }

    /// Module names (`q_proj`, ...) of the targets.
    pub fn module_names(&self) -> Vec<&'static str> {
        self.targets.iter().filter_map(|t| module_name(t)).collect()
    }
}

fn module_name(t: &str) -> Option<&'static str> {
    TARGETS.iter().find(|(s, m)| *s == t || *m == t).map(|(_, m)| *m)
}
