//! `[seal]`: self-edits, inner-loop rewards, ReST-EM and continual SEAL (docs/design.md, "SEAL").

use super::finetune::MethodKind;
use serde::{Deserialize, Serialize};

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
