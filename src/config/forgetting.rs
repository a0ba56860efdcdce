//! `[forgetting]`: the learning-vs-forgetting benchmark, its retention probes and its grid. The
//! grid is expanded here, where the config is checked, so that a bad grid key fails at load.

use super::finetune::{FinetuneConfig, MethodKind};
use serde::{Deserialize, Serialize};

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
