//! Experiment configs: TOML files whose sections override built-in defaults, plus
//! `--set key=value` overrides. Unknown or ill-typed keys are errors that name the key and file.

use crate::data::synthetic::WorldConfig;
use crate::model::LlamaConfig;
use crate::MemtuneError;
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ExperimentConfig {
    pub model: LlamaConfig,
    pub train: TrainConfig,
    pub data: DataConfig,
    pub eval: EvalConfig,
    pub run: RunConfig,
    /// `memtune background`: the TF-IDF background index.
    pub background: BackgroundConfig,
    /// `memtune finetune`: learning new facts with one method.
    pub finetune: FinetuneConfig,
    /// `memtune bench forgetting`: the learning-vs-forgetting grid.
    pub forgetting: ForgettingConfig,
    /// `memtune pretrain` from a trained model (continued pretraining, memory retrofit).
    pub init: InitConfig,
    /// `memtune seal`: self-edits, inner-loop rewards, ReST-EM, continual SEAL.
    pub seal: SealConfig,
}

// ---------------------------------------------------------------------------------------------
// Starting from a trained model.

/// What continued pretraining from `[init] model` trains.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum InitTrainable {
    /// Every weight.
    #[default]
    All,
    /// Only the memory layers (query, keys, W1, W2, gate, values): the pretrained weights stay
    /// bit-identical.
    Memory,
    /// The memory layers without their addressing: values, W1, W2 and the gate train; the query
    /// and keys keep their initial (with `query_stats_batches`, standardised) projection, so
    /// training cannot collapse every token onto a few slots (docs/design.md, "Memory retrofit").
    #[serde(rename = "memory-values")]
    MemoryValues,
}

/// `[init]`: start `memtune pretrain` from a trained model instead of random weights. The
/// architecture and tokenizer come from the model's folder (its `config.json` and
/// `tokenizer.json`); of the experiment's `[model]` only `[model.memory]` is used, so a memory
/// layer can be added (`placement = "parallel"` keeps the outputs unchanged at step 0). Tensors
/// the model lacks (the memory's) are initialised from `train.seed`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct InitConfig {
    /// A model folder, a run directory, or an hf-hub repo id in the local cache; empty: random
    /// initialisation from `[model]`.
    pub model: String,
    pub trainable: InitTrainable,
    /// Retrofit: before training, standardise each new memory layer's query projection against
    /// its input's per-channel mean and std over this many training batches (0: off). A trained
    /// model's hidden states share a large common direction, so a random query sends nearly every
    /// token to the same few slots (docs/design.md, "Memory retrofit").
    pub query_stats_batches: usize,
}

// ---------------------------------------------------------------------------------------------
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

/// `[background]`: the background index of sparse memory finetuning (docs/design.md, "Sparse memory finetuning").
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BackgroundConfig {
    /// B, the number of background batches.
    pub batches: usize,
    /// Sequences per background batch.
    pub batch_size: usize,
    /// Tokens per sequence (0: the run's train.seq_len).
    pub seq_len: usize,
}

impl Default for BackgroundConfig {
    fn default() -> Self {
        Self { batches: 1000, batch_size: 1, seq_len: 0 }
    }
}

/// `[forgetting]`: the learning-vs-forgetting benchmark (`memtune bench forgetting`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ForgettingConfig {
    /// Methods to run, in this order.
    pub methods: Vec<MethodKind>,
    /// Per method, a grid over keys of its `[finetune.<method>]` section: every combination
    /// of the listed values is one run (keys not listed keep their `[finetune.*]` value).
    pub grid: ForgettingGrid,
    /// Retention probe: questions about bio-only pretraining people (their QA pairs were never
    /// trained on; a seeded sample, 0 = all).
    pub retention_questions: usize,
    /// Questions per new fact (its question templates; 0 = all).
    pub questions_per_fact: usize,
    /// Batches of the held-out pretraining stream for the held-out loss.
    pub heldout_batches: usize,
    /// Runs whose new-fact EM is within this of the matched learning level count as matched.
    pub match_tolerance: f64,
    /// Results folder; empty: `<run.dir>/forgetting` (`<run.dir>/forgetting-quick` with --quick).
    pub out: String,
    /// `--set` overrides that `--quick` applies (before the command line's own).
    pub quick: Vec<String>,
    /// Runs beside the grids, each a table with `method` and keys of that method's section, set
    /// over `[finetune.<method>]` (the ablations: `{ method = "sparse-memory", ranking = "tf" }`).
    pub extra: Vec<toml::Table>,
    /// A model folder (or run directory) to benchmark instead of pretraining one on the
    /// synthetic world (`--model`); its facts come from `finetune.facts_file` (`--facts`).
    pub model: String,
    /// Retention probes beyond the synthetic world's (`[forgetting.probes]`).
    pub probes: ProbesConfig,
    /// Only measure the base model (the setup and its probes, `pretrained.json`); no runs.
    pub measure_only: bool,
}

/// How a closed-book question is put to the model.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum PromptStyle {
    /// `Q: {question} A:`.
    #[default]
    Qa,
    /// The question itself, continued.
    Completion,
}

/// `[forgetting.probes]`: what a benchmark measures besides learning (README, "Learning vs
/// forgetting on a real model"). Every file is optional; with `forgetting.model` set, the known
/// facts replace the synthetic world's held-out QA as the retention probe and the held-out text
/// replaces its held-out stream.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ProbesConfig {
    /// Closed-book QA JSONL (`{"question", "answers"}`); the questions the base model answers
    /// (a gold answer in its reply, `contains`) are its "known facts", re-asked after learning.
    pub known_facts_file: String,
    /// Questions of that file asked to find the known facts (a seeded sample; 0 = all).
    pub known_candidates: usize,
    /// How they are asked: "qa" (`Q: {question} A:`) or "completion" (the question is a text
    /// prefix the model continues, e.g. "The country of Lisbon is").
    pub known_facts_prompt: PromptStyle,
    /// Held-out real text (`.jsonl` with "text" fields, or plain files): perplexity.
    pub text_files: Vec<String>,
    /// Documents of it scored (the first ones; 0 = all) and tokens per document.
    pub text_docs: usize,
    pub text_tokens: usize,
    /// A multiple-choice task in BIG-bench's JSON format, scored by log-likelihood.
    pub choice_file: String,
    /// Its examples scored (a seeded sample; 0 = all).
    pub choice_examples: usize,
}

impl Default for ProbesConfig {
    fn default() -> Self {
        Self {
            known_facts_file: String::new(),
            known_candidates: 2000,
            known_facts_prompt: PromptStyle::Qa,
            text_files: vec![],
            text_docs: 100,
            text_tokens: 256,
            choice_file: String::new(),
            choice_examples: 500,
        }
    }
}

impl Default for ForgettingConfig {
    fn default() -> Self {
        Self {
            methods: MethodKind::ALL.to_vec(),
            grid: ForgettingGrid::default(),
            retention_questions: 300,
            questions_per_fact: 0,
            heldout_batches: 16,
            match_tolerance: 0.05,
            out: String::new(),
            quick: vec![],
            extra: vec![],
            model: String::new(),
            probes: ProbesConfig::default(),
            measure_only: false,
        }
    }
}

impl FinetuneConfig {
    /// Errors name the key.
    pub fn validate(&self) -> std::result::Result<(), (String, String)> {
        let bad = |k: &str, m: &str| Err((format!("finetune.{k}"), m.to_string()));
        if self.paraphrases == 0 {
            return bad("paraphrases", "must be > 0");
        }
        if !(0.0..1.0).contains(&self.beta1) || !(0.0..1.0).contains(&self.beta2) {
            return bad("beta1", "betas must be in [0, 1)");
        }
        let sm = &self.sparse_memory;
        let lo = &self.lora;
        let fu = &self.full;
        for (sec, lr, steps, epochs, clip) in [
            ("sparse_memory", sm.lr, sm.steps_per_fact, sm.epochs, sm.grad_clip),
            ("lora", lo.lr, lo.steps_per_fact, lo.epochs, lo.grad_clip),
            ("full", fu.lr, fu.steps_per_fact, fu.epochs, fu.grad_clip),
        ] {
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

/// One run of the forgetting grid: the method, the grid values that define it, and the finetune
/// config with them applied.
#[derive(Clone, Debug, PartialEq)]
pub struct GridRun {
    pub method: MethodKind,
    pub point: std::collections::BTreeMap<String, toml::Value>,
    pub finetune: FinetuneConfig,
}

impl ForgettingConfig {
    /// Every run of the grid, method by method in `methods` order, the grid's keys varying
    /// fastest in reverse name order (a fixed order).
    pub fn runs(&self, base: &FinetuneConfig) -> std::result::Result<Vec<GridRun>, (String, String)> {
        let mut out = vec![];
        for &m in &self.methods {
            let grid = self.grid.get(m);
            let mut points: Vec<std::collections::BTreeMap<String, toml::Value>> = vec![Default::default()];
            for (k, values) in grid {
                if values.is_empty() {
                    return Err((format!("forgetting.grid.{}.{k}", m.section()), "lists no value".into()));
                }
                points = points
                    .into_iter()
                    .flat_map(|p| {
                        values.iter().map(move |v| {
                            let mut q = p.clone();
                            q.insert(k.clone(), v.clone());
                            q
                        })
                    })
                    .collect();
            }
            for point in points {
                let mut ft = FinetuneConfig { method: m, ..base.clone() };
                for (k, v) in &point {
                    ft = ft.with_method_value(m, k, v).map_err(|(_, msg)| (format!("forgetting.grid.{}.{k}", m.section()), msg))?;
                }
                out.push(GridRun { method: m, point, finetune: ft });
            }
        }
        for (i, t) in self.extra.iter().enumerate() {
            let key = |k: &str| format!("forgetting.extra[{i}].{k}");
            let m: MethodKind = match t.get("method") {
                Some(v) => v.clone().try_into().map_err(|e: toml::de::Error| (key("method"), e.message().to_string()))?,
                None => return Err((key("method"), "missing (sparse-memory, lora or full)".into())),
            };
            let mut ft = FinetuneConfig { method: m, ..base.clone() };
            let mut point = std::collections::BTreeMap::new();
            for (k, v) in t.iter().filter(|(k, _)| k.as_str() != "method") {
                ft = ft.with_method_value(m, k, v).map_err(|(_, msg)| (key(k), msg))?;
                point.insert(k.clone(), v.clone());
            }
            out.push(GridRun { method: m, point, finetune: ft });
        }
        Ok(out)
    }
}

/// Grid values per key, per method (`[forgetting.grid.sparse_memory]`, `.lora`, `.full`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ForgettingGrid {
    pub sparse_memory: std::collections::BTreeMap<String, Vec<toml::Value>>,
    pub lora: std::collections::BTreeMap<String, Vec<toml::Value>>,
    pub full: std::collections::BTreeMap<String, Vec<toml::Value>>,
}

impl ForgettingGrid {
    pub fn get(&self, m: MethodKind) -> &std::collections::BTreeMap<String, Vec<toml::Value>> {
        match m {
            MethodKind::SparseMemory => &self.sparse_memory,
            MethodKind::Lora => &self.lora,
            MethodKind::Full => &self.full,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// Questions asked per split (a seeded sample; 0 = all).
    pub max_questions: usize,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self { max_questions: 300 }
    }
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    Adamw,
    Sgd,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    Cosine,
    Linear,
    Constant,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    pub seed: u64,
    /// Optimiser steps.
    pub steps: usize,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    pub seq_len: usize,
    /// Micro-batches whose gradients are summed (averaged) into one optimiser step.
    pub grad_accum: usize,
    pub optimizer: OptimizerKind,
    pub lr: f64,
    pub schedule: ScheduleKind,
    pub warmup_steps: usize,
    /// Final lr as a fraction of `lr` (cosine and linear schedules).
    pub min_lr_ratio: f64,
    /// Decoupled weight decay for matrices; norms, biases and embeddings of size 1-D get none.
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// SGD momentum.
    pub momentum: f64,
    /// Global-norm gradient clipping; 0 disables.
    pub grad_clip: f64,
    pub log_every: usize,
    /// Write a checkpoint every N steps (0: only at the end).
    pub checkpoint_every: usize,
    /// Held-out loss every N steps (0: never during training).
    pub eval_every: usize,
    pub eval_batches: usize,
    /// Precision of the matrix multiplies (`f32`, or `bf16` on bf16 copies of f32 master
    /// weights); every training loop built from this config uses it. Written only when not f32,
    /// so f32 configs keep their pretraining hash.
    #[serde(skip_serializing_if = "Precision::is_f32")]
    pub precision: Precision,
}

pub use crate::model::params::Precision;

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            steps: 1000,
            batch_size: 16,
            seq_len: 128,
            grad_accum: 1,
            optimizer: OptimizerKind::Adamw,
            lr: 2e-3,
            schedule: ScheduleKind::Cosine,
            warmup_steps: 100,
            min_lr_ratio: 0.1,
            weight_decay: 0.1,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            momentum: 0.0,
            grad_clip: 1.0,
            log_every: 10,
            checkpoint_every: 0,
            eval_every: 0,
            eval_batches: 8,
            precision: Precision::F32,
        }
    }
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DataSource {
    /// The built-in synthetic world (docs/design.md, "The synthetic world").
    Synthetic,
    /// Plain-text files (`data.text_files`).
    Text,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    pub source: DataSource,
    pub world: WorldConfig,
    /// Corpus files for `source = "text"` (one document per line for .jsonl with a "text" field,
    /// whole file otherwise).
    pub text_files: Vec<String>,
    /// A `tokenizer.json` to use; empty: train a BPE tokenizer of `model.vocab_size` on the corpus.
    pub tokenizer: String,
    /// Fraction of pretraining documents that are question/answer pairs (synthetic world).
    pub qa_fraction: f64,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            source: DataSource::Synthetic,
            world: WorldConfig::default(),
            text_files: vec![],
            tokenizer: String::new(),
            qa_fraction: 0.3,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// Run directory: checkpoints, metrics.jsonl, the resolved config.
    pub dir: String,
    /// "cpu", "cuda" (= cuda:0) or "cuda:N" (the CUDA build); `--device` on the command line.
    pub device: String,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self { dir: "runs/default".into(), device: "cpu".into() }
    }
}

impl ExperimentConfig {
    /// Load `path` (if given) over the defaults and apply `key=value` overrides.
    pub fn load(path: Option<&Path>, overrides: &[String]) -> Result<Self> {
        let (file, text) = match path {
            Some(p) => {
                let text =
                    std::fs::read_to_string(p).map_err(|e| MemtuneError::Other(format!("cannot read config {}: {e}", p.display())))?;
                (p.display().to_string(), text)
            }
            None => ("<defaults>".to_string(), String::new()),
        };
        Self::from_toml_str(&text, &file, overrides)
    }

    pub fn from_toml_str(text: &str, file: &str, overrides: &[String]) -> Result<Self> {
        let mut value: toml::Table = text.parse().map_err(|e: toml::de::Error| MemtuneError::BadConfigValue {
            file: file.into(),
            key: e.span().map(|s| snippet(text, s)).unwrap_or_default(),
            msg: e.message().to_string(),
        })?;
        for o in overrides {
            apply_override(&mut value, o, file)?;
        }
        let cfg: ExperimentConfig = serde_path_to_error::deserialize(toml::Value::Table(value)).map_err(|e| {
            let key = e.path().to_string();
            let msg = e.inner().to_string();
            if let Some(rest) = msg.strip_prefix("unknown field `") {
                let name = rest.split('`').next().unwrap_or("");
                // serde_path_to_error's path already ends at the unknown field.
                let full = if key.is_empty() || key == "." {
                    name.to_string()
                } else if key == name || key.ends_with(&format!(".{name}")) {
                    key.clone()
                } else {
                    format!("{key}.{name}")
                };
                let hint = rest
                    .split_once(", expected")
                    .map(|(_, h)| format!(" (expected{})", h.lines().next().unwrap_or("")))
                    .unwrap_or_default();
                MemtuneError::UnknownConfigKey { file: file.into(), key: full, hint }
            } else {
                MemtuneError::BadConfigValue { file: file.into(), key, msg }
            }
        })?;
        // With `[init] model` the architecture comes from that model's config.json; it is checked
        // once known (`pretrain::with_init_model`).
        if cfg.init.model.is_empty() {
            cfg.model.validate().map_err(|m| MemtuneError::BadConfigValue { file: file.into(), key: "model".into(), msg: m })?;
        }
        cfg.validate().map_err(|(key, msg)| MemtuneError::BadConfigValue { file: file.into(), key, msg })?;
        Ok(cfg)
    }

    fn validate(&self) -> std::result::Result<(), (String, String)> {
        let t = &self.train;
        let bad = |k: &str, m: &str| Err((k.to_string(), m.to_string()));
        if let Err(m) = crate::device::DeviceSpec::parse(&self.run.device) {
            return Err(("run.device".into(), m));
        }
        if t.batch_size == 0 {
            return bad("train.batch_size", "must be > 0");
        }
        if t.seq_len < 2 {
            return bad("train.seq_len", "must be ≥ 2");
        }
        if t.seq_len > self.model.max_position_embeddings && self.init.model.is_empty() {
            return bad("train.seq_len", "exceeds model.max_position_embeddings");
        }
        if t.grad_accum == 0 {
            return bad("train.grad_accum", "must be ≥ 1");
        }
        if !(t.lr.is_finite() && t.lr >= 0.0) {
            return bad("train.lr", "must be a finite number ≥ 0");
        }
        if !(0.0..=1.0).contains(&t.min_lr_ratio) {
            return bad("train.min_lr_ratio", "must be in [0, 1]");
        }
        if !(0.0..1.0).contains(&t.beta1) || !(0.0..1.0).contains(&t.beta2) {
            return bad("train.beta1", "betas must be in [0, 1)");
        }
        if let Err(m) = self.data.world.validate() {
            return Err(("data.world".into(), m));
        }
        if !(0.0..=1.0).contains(&self.data.qa_fraction) {
            return bad("data.qa_fraction", "must be in [0, 1]");
        }
        self.finetune.validate()?;
        if self.background.batches == 0 || self.background.batch_size == 0 {
            return bad("background.batches", "background.batches and background.batch_size must be > 0");
        }
        if self.background.seq_len == 1 || (self.background.seq_len > self.model.max_position_embeddings && self.init.model.is_empty()) {
            return bad("background.seq_len", "must be 0 (train.seq_len) or in [2, model.max_position_embeddings]");
        }
        let f = &self.forgetting;
        if f.methods.is_empty() {
            return bad("forgetting.methods", "lists no method");
        }
        if !(0.0..=1.0).contains(&f.match_tolerance) {
            return bad("forgetting.match_tolerance", "must be in [0, 1]");
        }
        f.runs(&self.finetune)?;
        self.seal.validate()?;
        Ok(())
    }

    /// The resolved config as TOML (written into every run directory).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises")
    }
}

fn snippet(text: &str, span: std::ops::Range<usize>) -> String {
    let line_start = text[..span.start.min(text.len())].rfind('\n').map(|i| i + 1).unwrap_or(0);
    let line_end = text[line_start..].find('\n').map(|i| line_start + i).unwrap_or(text.len());
    let line_no = text[..line_start].matches('\n').count() + 1;
    format!("line {line_no}: {}", text[line_start..line_end].trim())
}

/// `a.b.c=value`: value parsed as a TOML value (number, bool, array, quoted string), else a bare string.
fn apply_override(root: &mut toml::Table, o: &str, file: &str) -> Result<()> {
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

// ---------------------------------------------------------------------------------------------
// SEAL (docs/design.md, "SEAL").

/// ReST-EM's choice of the self-edit kept per passage.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum SealFilter {
    /// The best of the k (the paper's choice); ties go to the earlier sample.
    Top1,
    /// The best, only if its reward beats the passage-only update's.
    Positive,
    /// Every self-edit whose reward is above the mean of its group of k.
    AboveGroupMean,
}

/// How a predicted answer is scored against the gold answers. All three are always reported;
/// `seal.metric` picks the one rewards, ReST-EM's filter and continual SEAL's retention use.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum AnswerMetric {
    /// SQuAD exact match of the normalised answer.
    #[default]
    Em,
    /// SQuAD token F1.
    F1,
    /// A gold answer occurs, as whole normalised words, in the predicted answer: a lenient
    /// stand-in for the paper's LLM grader, for small chat models that answer in sentences.
    Contains,
}

impl AnswerMetric {
    /// As tables print it.
    pub fn name(self) -> &'static str {
        match self {
            AnswerMetric::Em => "EM",
            AnswerMetric::F1 => "F1",
            AnswerMetric::Contains => "contains",
        }
    }
}

/// What continual SEAL trains on besides each passage.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ContinualEdits {
    /// The generator's first base self-edit of the passage.
    Generated,
    /// The passage's own questions with their answers as "Q: … A: …" lines: a perfect self-edit,
    /// which isolates forgetting from the generator's quality.
    Oracle,
}

/// Whether prompts are wrapped in the model's chat template.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ChatMode {
    /// The model folder's `tokenizer_config.json` `chat_template`, rendered as Jinja; plain text
    /// when it has none.
    Auto,
    /// A bare ChatML user turn and an open assistant turn.
    Chatml,
    /// Plain prompts.
    None,
}

/// `[seal]`: `memtune seal`. Inner-loop methods take their hyperparameters from
/// `[finetune.<method>]`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SealConfig {
    /// The model updated by self-edits: a model folder or run dir; empty: pretrain (or reuse by
    /// config hash) the experiment's own model on the synthetic world, as `bench forgetting` does.
    pub model: String,
    /// The generator of self-edits when it is not the updated model (teacher/student); ReST-EM
    /// trains it. Empty: the model generates its own self-edits.
    pub teacher: String,
    /// A SQuAD v1.1 JSON file; empty: the synthetic world's SEAL split (one person's biography
    /// per passage).
    pub data: String,
    /// Held-out passages every condition is evaluated on.
    pub eval_passages: usize,
    /// Passages per ReST-EM round (fresh ones every round).
    pub train_passages: usize,
    /// Questions asked per passage (the first ones; 0 = all).
    pub questions_per_passage: usize,
    /// `implications`, `rewrite`, `self-qa` or a key of `templates`.
    pub template: String,
    /// User-defined self-edit templates: text with `{title}` and `{passage}`.
    pub templates: std::collections::BTreeMap<String, String>,
    /// Closed-book question prompt (`{question}`); open-book adds `{passage}` and `{title}`.
    pub qa_template: String,
    pub open_book_template: String,
    pub chat: ChatMode,
    /// Text the answer starts with, after the chat template's assistant turn opens (e.g.
    /// "Answer:"): it makes a chat model give the answer rather than a sentence around it.
    pub answer_prefix: String,
    /// The accuracy rewards, ReST-EM's filter and continual SEAL use (em, f1 and contains are
    /// all reported either way).
    pub metric: AnswerMetric,
    /// k self-edits sampled per passage.
    pub k: usize,
    pub temperature: f64,
    pub top_p: f64,
    pub max_new_tokens: usize,
    /// r: inner-loop repeats per self-edit (different seeds), rewards averaged.
    pub repeats: usize,
    /// Inner-loop methods; every condition is evaluated with each. ReST-EM rewards use the first.
    pub inner_methods: Vec<MethodKind>,
    /// Passes over a self-edit's training sequences in the inner loop.
    pub inner_epochs: usize,
    /// Training sequences per inner-loop batch.
    pub inner_batch_size: usize,
    pub filter: SealFilter,
    /// R: ReST-EM rounds.
    pub rounds: usize,
    /// How the generator is supervised-finetuned on its kept self-edits: lora (merged after) or
    /// full (rank and alpha of LoRA from `[finetune.lora]`).
    pub sft_method: MethodKind,
    pub sft_lr: f64,
    pub sft_epochs: usize,
    /// Prompt → self-edit pairs per SFT batch.
    pub sft_batch_size: usize,
    /// Continual SEAL: this many eval passages learned in sequence, each update merged (0 = off).
    pub continual_passages: usize,
    /// Inner-loop methods compared in continual SEAL.
    pub continual_methods: Vec<MethodKind>,
    pub continual_edits: ContinualEdits,
    pub seed: u64,
    /// Results folder; empty: `<run.dir>/seal`.
    pub out: String,
}

impl Default for SealConfig {
    fn default() -> Self {
        Self {
            model: String::new(),
            teacher: String::new(),
            data: String::new(),
            eval_passages: 20,
            train_passages: 20,
            questions_per_passage: 0,
            template: "implications".into(),
            templates: Default::default(),
            qa_template: "Q: {question} A:".into(),
            open_book_template: "{passage}\nQ: {question} A:".into(),
            chat: ChatMode::Auto,
            answer_prefix: String::new(),
            metric: AnswerMetric::Em,
            k: 5,
            temperature: 1.0,
            top_p: 0.95,
            max_new_tokens: 128,
            repeats: 1,
            inner_methods: vec![MethodKind::Lora],
            inner_epochs: 3,
            inner_batch_size: 4,
            filter: SealFilter::Positive,
            rounds: 1,
            sft_method: MethodKind::Lora,
            sft_lr: 1e-4,
            sft_epochs: 1,
            sft_batch_size: 4,
            continual_passages: 0,
            continual_methods: vec![MethodKind::SparseMemory, MethodKind::Lora],
            continual_edits: ContinualEdits::Generated,
            seed: 0,
            out: String::new(),
        }
    }
}

impl SealConfig {
    /// Errors name the key.
    pub fn validate(&self) -> std::result::Result<(), (String, String)> {
        let bad = |k: &str, m: &str| Err((format!("seal.{k}"), m.to_string()));
        for (k, v) in [
            ("eval_passages", self.eval_passages),
            ("k", self.k),
            ("max_new_tokens", self.max_new_tokens),
            ("repeats", self.repeats),
            ("inner_epochs", self.inner_epochs),
            ("inner_batch_size", self.inner_batch_size),
            ("sft_epochs", self.sft_epochs),
            ("sft_batch_size", self.sft_batch_size),
        ] {
            if v == 0 {
                return bad(k, "must be > 0");
            }
        }
        if self.inner_methods.is_empty() {
            return bad("inner_methods", "lists no method");
        }
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad("temperature", "must be ≥ 0 (0 = greedy)");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", "must be in (0, 1]");
        }
        if self.sft_method == MethodKind::SparseMemory {
            return bad("sft_method", "must be lora or full (the generator is finetuned on whole sequences)");
        }
        if !(self.sft_lr.is_finite() && self.sft_lr > 0.0) {
            return bad("sft_lr", "must be a finite number > 0");
        }
        if self.rounds > 0 && self.train_passages == 0 {
            return bad("train_passages", "must be > 0 when seal.rounds > 0");
        }
        if !["implications", "rewrite", "self-qa"].contains(&self.template.as_str()) && !self.templates.contains_key(&self.template) {
            return bad("template", &format!("`{}` is neither implications, rewrite, self-qa nor a key of seal.templates", self.template));
        }
        for (name, t) in &self.templates {
            if !t.contains("{passage}") {
                return Err((format!("seal.templates.{name}"), "must contain {passage}".into()));
            }
        }
        if !self.qa_template.contains("{question}") {
            return bad("qa_template", "must contain {question}");
        }
        if !self.open_book_template.contains("{question}") || !self.open_book_template.contains("{passage}") {
            return bad("open_book_template", "must contain {passage} and {question}");
        }
        Ok(())
    }
}
