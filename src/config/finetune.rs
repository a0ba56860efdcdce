//! `[finetune]`: learning new facts with one method, and each method's own section.

use crate::model::params::Precision;
use serde::{Deserialize, Serialize};

// Finetuning on new facts (docs/design.md, "Sparse memory finetuning").

/// Which finetuning method.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum MethodKind {
    /// SGD on the top-t memory value rows of each batch by TF-IDF; everything else frozen.
    SparseMemory,
    /// LoRA adapters (AdamW); the base frozen.
    Lora,
    /// Every dense weight (and the memory values, lazily) with AdamW.
    Full,
}

impl MethodKind {
    pub const ALL: [MethodKind; 3] = [MethodKind::SparseMemory, MethodKind::Lora, MethodKind::Full];

    /// The name in configs and reports (`sparse-memory`, `lora`, `full`).
    pub fn name(self) -> &'static str {
        match self {
            MethodKind::SparseMemory => "sparse-memory",
            MethodKind::Lora => "lora",
            MethodKind::Full => "full",
        }
    }

    /// The `[finetune.<section>]` holding this method's settings.
    pub fn section(self) -> &'static str {
        match self {
            MethodKind::SparseMemory => "sparse_memory",
            MethodKind::Lora => "lora",
            MethodKind::Full => "full",
        }
    }
}

/// How accessed memory slots are ranked for sparse memory finetuning (docs/design.md, "Sparse memory finetuning").
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Ranking {
    /// tf · idf against the background index (the method).
    Tfidf,
    /// tf alone (ablation: no background).
    Tf,
    /// A random subset of the accessed slots (ablation).
    Random,
}

/// What updates the selected value rows in sparse memory finetuning.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum SparseOptimizer {
    /// p ← p − lr·g (the paper's).
    #[default]
    Sgd,
    /// Adam (`finetune.beta1/beta2/eps`, no weight decay) with state for the rows it has updated
    /// only: each row's step is ~lr whatever its gradient's scale (docs/design.md, "Sparse memory
    /// finetuning on a retrofit").
    Adam,
}

/// `top_t`: a number of rows, or `"all"` (every accessed slot, t = ∞).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TopT(pub Option<usize>);

impl Serialize for TopT {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self.0 {
            Some(t) => s.serialize_u64(t as u64),
            None => s.serialize_str("all"),
        }
    }
}

impl<'de> Deserialize<'de> for TopT {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = TopT;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a positive integer or \"all\"")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> std::result::Result<TopT, E> {
                if v > 0 {
                    Ok(TopT(Some(v as usize)))
                } else {
                    Err(E::custom(format!("top_t must be > 0 or \"all\", got {v}")))
                }
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> std::result::Result<TopT, E> {
                self.visit_i64(v as i64)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<TopT, E> {
                match v {
                    "all" => Ok(TopT(None)),
                    _ => v
                        .parse::<i64>()
                        .map_err(|_| E::custom(format!("top_t must be a positive integer or \"all\", got \"{v}\"")))
                        .and_then(|n| self.visit_i64(n)),
                }
            }
        }
        d.deserialize_any(V)
    }
}

impl std::fmt::Display for TopT {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self.0 {
            Some(t) => write!(f, "{t}"),
            None => f.write_str("all"),
        }
    }
}

/// `[finetune]`: what is learned and how.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FinetuneConfig {
    pub method: MethodKind,
    /// New facts to learn, in order (0: every fact of the source).
    pub facts: usize,
    /// Paraphrases per fact: each fact is one batch of this many statements.
    pub paraphrases: usize,
    /// A JSONL file of facts (see `data::facts`); empty: the synthetic world's new people.
    pub facts_file: String,
    /// Fact order, adapter init, random ranking.
    pub seed: u64,
    /// AdamW betas and eps of the methods that use AdamW (lora, full).
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Precision of the matrix multiplies while finetuning (see `train.precision`).
    #[serde(skip_serializing_if = "Precision::is_f32")]
    pub precision: Precision,
    pub sparse_memory: SparseMemoryConfig,
    pub lora: LoraFinetuneConfig,
    pub full: FullFinetuneConfig,
}

impl Default for FinetuneConfig {
    fn default() -> Self {
        Self {
            method: MethodKind::SparseMemory,
            facts: 100,
            paraphrases: 8,
            facts_file: String::new(),
            seed: 0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            precision: Precision::F32,
            sparse_memory: SparseMemoryConfig::default(),
            lora: LoraFinetuneConfig::default(),
            full: FullFinetuneConfig::default(),
        }
    }
}

/// `[finetune.sparse_memory]` (docs/design.md, "Sparse memory finetuning").
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SparseMemoryConfig {
    /// Value rows updated per step: a number or "all".
    pub top_t: TopT,
    /// Learning rate of `optimizer` (constant).
    pub lr: f64,
    pub optimizer: SparseOptimizer,
    pub ranking: Ranking,
    /// Optimiser steps on each fact's batch before the next fact.
    pub steps_per_fact: usize,
    /// Passes over the whole stream of facts.
    pub epochs: usize,
    /// After each fact, this many earlier facts of the stream (seeded) are trained on again.
    pub replay: usize,
    /// Global-norm clipping of the value gradient; 0 = off.
    pub grad_clip: f64,
}

impl Default for SparseMemoryConfig {
    fn default() -> Self {
        Self {
            top_t: TopT(Some(100)),
            lr: 100.0,
            optimizer: SparseOptimizer::Sgd,
            ranking: Ranking::Tfidf,
            steps_per_fact: 1,
            epochs: 1,
            replay: 0,
            grad_clip: 0.0,
        }
    }
}

/// `[finetune.lora]`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LoraFinetuneConfig {
    pub rank: usize,
    /// The adapter's delta is scaled by alpha / rank.
    pub alpha: f64,
    pub dropout: f64,
    /// Any of q, k, v, o, gate, up, down.
    pub targets: Vec<String>,
    /// AdamW learning rate (constant).
    pub lr: f64,
    pub weight_decay: f64,
    pub steps_per_fact: usize,
    /// As in `[finetune.sparse_memory]`.
    pub epochs: usize,
    pub replay: usize,
    /// 0 = off.
    pub grad_clip: f64,
}

impl Default for LoraFinetuneConfig {
    fn default() -> Self {
        let l = crate::model::lora::LoraConfig::default();
        Self {
            rank: l.rank,
            alpha: l.alpha,
            dropout: l.dropout,
            targets: l.targets,
            lr: 1e-3,
            weight_decay: 0.0,
            steps_per_fact: 1,
            epochs: 1,
            replay: 0,
            grad_clip: 1.0,
        }
    }
}

impl LoraFinetuneConfig {
    pub fn lora(&self) -> crate::model::lora::LoraConfig {
        crate::model::lora::LoraConfig { rank: self.rank, alpha: self.alpha, dropout: self.dropout, targets: self.targets.clone() }
    }
}

/// `[finetune.full]`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FullFinetuneConfig {
    /// AdamW learning rate of the dense weights (constant).
    pub lr: f64,
    /// Lazy AdamW learning rate of the memory values; absent: `lr`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_lr: Option<f64>,
    pub weight_decay: f64,
    pub steps_per_fact: usize,
    /// As in `[finetune.sparse_memory]`.
    pub epochs: usize,
    pub replay: usize,
    /// 0 = off.
    pub grad_clip: f64,
}

impl Default for FullFinetuneConfig {
    fn default() -> Self {
        Self { lr: 1e-4, value_lr: None, weight_decay: 0.0, steps_per_fact: 1, epochs: 1, replay: 0, grad_clip: 1.0 }
    }
}

/// The settings every method's section has: its learning rate, how the stream of facts is
/// presented, and clipping.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StreamSettings {
    pub lr: f64,
    pub steps_per_fact: usize,
    pub epochs: usize,
    pub replay: usize,
    pub grad_clip: f64,
}

impl FinetuneConfig {
    /// The shared settings of `method`'s section.
    pub fn stream_settings(&self, method: MethodKind) -> StreamSettings {
        macro_rules! of {
            ($s:expr) => {
                StreamSettings {
                    lr: $s.lr,
                    steps_per_fact: $s.steps_per_fact,
                    epochs: $s.epochs,
                    replay: $s.replay,
                    grad_clip: $s.grad_clip,
                }
            };
        }
        match method {
            MethodKind::SparseMemory => of!(self.sparse_memory),
            MethodKind::Lora => of!(self.lora),
            MethodKind::Full => of!(self.full),
        }
    }

    /// Errors name the key.
    pub fn validate(&self) -> std::result::Result<(), (String, String)> {
        let bad = |k: &str, m: &str| Err((format!("finetune.{k}"), m.to_string()));
        if self.paraphrases == 0 {
            return bad("paraphrases", "must be > 0");
        }
        if !(0.0..1.0).contains(&self.beta1) || !(0.0..1.0).contains(&self.beta2) {
            return bad("beta1", "betas must be in [0, 1)");
        }
        let (lo, fu) = (&self.lora, &self.full);
        for m in MethodKind::ALL {
            let StreamSettings { lr, steps_per_fact: steps, epochs, grad_clip: clip, .. } = self.stream_settings(m);
            let sec = m.section();
            if epochs == 0 {
                return bad(&format!("{sec}.epochs"), "must be ≥ 1");
            }
            if !(lr.is_finite() && lr >= 0.0) {
                return bad(&format!("{sec}.lr"), "must be a finite number ≥ 0");
            }
            if steps == 0 {
                return bad(&format!("{sec}.steps_per_fact"), "must be ≥ 1");
            }
            if !(clip.is_finite() && clip >= 0.0) {
                return bad(&format!("{sec}.grad_clip"), "must be ≥ 0 (0 = off)");
            }
        }
        if let Some(v) = fu.value_lr {
            if !(v.is_finite() && v >= 0.0) {
                return bad("full.value_lr", "must be a finite number ≥ 0");
            }
        }
        if let Err(m) = lo.lora().validate() {
            return Err(("finetune.lora".into(), m.replace("lora.", "finetune.lora.")));
        }
        Ok(())
    }

    /// This config with `key = value` set in the section of `method` (a grid point); the error
    /// names `finetune.<section>.<key>`.
    pub fn with_method_value(&self, method: MethodKind, key: &str, value: &toml::Value) -> std::result::Result<Self, (String, String)> {
        let full_key = format!("finetune.{}.{key}", method.section());
        let mut root = toml::Table::try_from(self).map_err(|e| (full_key.clone(), e.to_string()))?;
        let sec = root.get_mut(method.section()).and_then(|v| v.as_table_mut()).expect("method sections serialise as tables");
        if !sec.contains_key(key) && (method != MethodKind::Full || key != "value_lr") {
            return Err((full_key, format!("unknown key `{key}` in [finetune.{}]", method.section())));
        }
        sec.insert(key.to_string(), value.clone());
        let out: FinetuneConfig =
            serde_path_to_error::deserialize(toml::Value::Table(root)).map_err(|e| (full_key.clone(), e.inner().to_string()))?;
        out.validate()?;
        Ok(out)
    }
}
