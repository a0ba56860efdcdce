//! Prompts: the self-edit templates of SEAL's reference code (`implications`, `rewrite`,
//! `self-qa`) and user-defined ones (text with `{title}` and `{passage}`), the QA prompts, and
//! the model's chat template.
//!
//! Chat templates: rather than a general Jinja renderer, the one form the target models use is
//! rendered directly: ChatML (SmolLM2, Qwen2), a user turn then an open assistant turn,
//! `<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n`. `chat = "auto"` picks it when
//! the model folder's `tokenizer_config.json` has a `chat_template` written in ChatML; another
//! template is an error that says to set `seal.chat` (a Jinja engine is the way to add more).

use crate::config::{ChatMode, SealConfig};
use crate::seal::passages::Passage;
use anyhow::{bail, Context, Result};
use std::path::Path;

pub const IMPLICATIONS: &str = "Let's read the following passage and produce a list of implications derived directly or indirectly from the content, one per line.\n\nPassage:\n{title}\n{passage}\n\nImplications:\n";
pub const REWRITE: &str = "Let's read the following passage and rewrite it in a few different ways, one sentence per line.\n\nPassage:\n{title}\n{passage}\n\nRewrite:\n";
pub const SELF_QA: &str = "Let's read the following passage and write question and answer pairs about it, each as a line \"Q: ...\" followed by a line \"A: ...\".\n\nPassage:\n{title}\n{passage}\n\nQuestions and answers:\n";

/// How a self-edit is cut into training sequences.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SplitRule {
    /// One sequence per non-empty line.
    Lines,
    /// One sequence per question/answer pair.
    QaPairs,
}

/// The self-edit template in use.
#[derive(Clone, Debug, PartialEq)]
pub struct Template {
    pub name: String,
    pub text: String,
    pub split: SplitRule,
}

impl Template {
    /// `seal.template`: a built-in name or a key of `seal.templates` (those split by lines,
    /// unless the name ends in `qa`).
    pub fn from_config(cfg: &SealConfig) -> Result<Template> {
        let (text, split) = match cfg.template.as_str() {
            "implications" => (IMPLICATIONS.to_string(), SplitRule::Lines),
            "rewrite" => (REWRITE.to_string(), SplitRule::Lines),
            "self-qa" => (SELF_QA.to_string(), SplitRule::QaPairs),
            name => {
                let t = cfg.templates.get(name).with_context(|| format!("seal.template = `{name}` is not a built-in template nor a key of seal.templates"))?;
                (t.clone(), if name.ends_with("qa") { SplitRule::QaPairs } else { SplitRule::Lines })
            }
        };
        Ok(Template { name: cfg.template.clone(), text, split })
    }

    /// The self-edit prompt for a passage (before any chat template).
    pub fn render(&self, p: &Passage) -> String {
        fill(&self.text, p, "")
    }
}

/// `{title}`, `{passage}` and `{question}` substituted.
pub fn fill(template: &str, p: &Passage, question: &str) -> String {
    template.replace("{title}", &p.title).replace("{passage}", &p.context).replace("{question}", question)
}

/// How a prompt reaches the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChatFormat {
    Plain,
    ChatMl,
}

impl ChatFormat {
    /// From `seal.chat` and the model folder (its `tokenizer_config.json`, if any).
    pub fn resolve(mode: ChatMode, model_dir: &Path) -> Result<ChatFormat> {
        Ok(match mode {
            ChatMode::None => ChatFormat::Plain,
            ChatMode::Chatml => ChatFormat::ChatMl,
            ChatMode::Auto => match model_chat_template(model_dir)? {
                None => ChatFormat::Plain,
                Some(t) if t.contains("<|im_start|>") => ChatFormat::ChatMl,
                Some(_) => bail!(
                    "{}: its chat_template is not ChatML, the only form memtune renders; set seal.chat = \"none\" (plain prompts) or \"chatml\"",
                    model_dir.join("tokenizer_config.json").display()
                ),
            },
        })
    }

    /// A user message as the model expects it, ending where the answer starts.
    pub fn wrap(self, user: &str) -> String {
        match self {
            ChatFormat::Plain => user.to_string(),
            ChatFormat::ChatMl => format!("<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"),
        }
    }
}

/// The `chat_template` string of `<dir>/tokenizer_config.json`, if it has one.
pub fn model_chat_template(dir: &Path) -> Result<Option<String>> {
    let path = dir.join("tokenizer_config.json");
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
    Ok(v.get("chat_template").and_then(|t| t.as_str()).map(String::from))
}

/// The prompts questions are asked with.
#[derive(Clone, Debug)]
pub struct QaFormat {
    pub closed_book: String,
    pub open_book: String,
    pub chat: ChatFormat,
}

impl QaFormat {
    pub fn closed(&self, p: &Passage, question: &str) -> String {
        self.chat.wrap(&fill(&self.closed_book, p, question))
    }

    pub fn open(&self, p: &Passage, question: &str) -> String {
        self.chat.wrap(&fill(&self.open_book, p, question))
    }
}
