//! Prompts: the self-edit templates of SEAL's reference code (`implications`, `rewrite`,
//! `self-qa`) and user-defined ones (text with `{title}` and `{passage}`), the QA prompts, and
//! the model's chat template.
//!
//! Chat templates: the model folder's `tokenizer_config.json` `chat_template` (Jinja) is rendered
//! with `minijinja` for one user message and an open assistant turn, as transformers'
//! `apply_chat_template(..., add_generation_prompt=True)` does (so SmolLM2's default system
//! message is there: without it the 135M model answers off-topic). The template is rendered once,
//! around a marker, into a prefix and a suffix that every prompt is put between.

use crate::config::{ChatMode, SealConfig};
use crate::io::files::TOKENIZER_CONFIG_FILE;
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
                let t = cfg
                    .templates
                    .get(name)
                    .with_context(|| format!("seal.template = `{name}` is not a built-in template nor a key of seal.templates"))?;
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
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChatFormat {
    Plain,
    /// A chat template rendered around the user message: `prefix + message + suffix`. `end` is
    /// the token text that closes the assistant's turn (generation stops there).
    Chat {
        prefix: String,
        suffix: String,
        end: Option<String>,
    },
}

/// ChatML, what `seal.chat = "chatml"` forces: a user turn, then an open assistant turn.
const CHATML_PREFIX: &str = "<|im_start|>user\n";
const CHATML_SUFFIX: &str = "<|im_end|>\n<|im_start|>assistant\n";

impl ChatFormat {
    /// From `seal.chat` and the model folder (its `tokenizer_config.json`, if any).
    pub fn resolve(mode: ChatMode, model_dir: &Path) -> Result<ChatFormat> {
        let chatml = || ChatFormat::Chat { prefix: CHATML_PREFIX.into(), suffix: CHATML_SUFFIX.into(), end: Some("<|im_end|>".into()) };
        Ok(match mode {
            ChatMode::None => ChatFormat::Plain,
            ChatMode::Chatml => chatml(),
            ChatMode::Auto => match model_chat_template(model_dir)? {
                None => ChatFormat::Plain,
                Some(t) => render_around_marker(&t.template, &t.bos, &t.eos).with_context(|| {
                    format!(
                        "{}: chat_template (set seal.chat = \"none\" or \"chatml\" to bypass it)",
                        model_dir.join(TOKENIZER_CONFIG_FILE).display()
                    )
                })?,
            },
        })
    }

    /// A user message as the model expects it, ending where the answer starts.
    pub fn wrap(&self, user: &str) -> String {
        match self {
            ChatFormat::Plain => user.to_string(),
            ChatFormat::Chat { prefix, suffix, .. } => format!("{prefix}{user}{suffix}"),
        }
    }

    /// The text of the token that ends the assistant's turn, if the format has one.
    pub fn end_token(&self) -> Option<&str> {
        match self {
            ChatFormat::Plain => None,
            ChatFormat::Chat { end, .. } => end.as_deref(),
        }
    }
}

/// Render a Jinja chat template for one user message around a marker and split it there.
fn render_around_marker(template: &str, bos: &str, eos: &str) -> Result<ChatFormat> {
    const MARKER: &str = "\u{1}MEMTUNE_USER_MESSAGE\u{1}";
    let mut env = minijinja::Environment::new();
    // Templates call raise_exception on misuse (e.g. roles out of order).
    env.add_function("raise_exception", |msg: String| -> std::result::Result<String, minijinja::Error> {
        Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
    });
    let ctx = serde_json::json!({
        "messages": [{ "role": "user", "content": MARKER }],
        "add_generation_prompt": true,
        "bos_token": bos,
        "eos_token": eos,
    });
    let text = env.render_str(template, ctx).map_err(|e| anyhow::anyhow!("cannot render: {e}"))?;
    let Some((prefix, suffix)) = text.split_once(MARKER) else { bail!("the rendered template does not contain the user message verbatim") };
    if suffix.contains(MARKER) {
        bail!("the rendered template repeats the user message");
    }
    // The assistant's turn ends with the token that ends the user's (ChatML's <|im_end|>), else eos.
    let end = if suffix.contains("<|im_end|>") { Some("<|im_end|>".to_string()) } else { (!eos.is_empty()).then(|| eos.to_string()) };
    Ok(ChatFormat::Chat { prefix: prefix.into(), suffix: suffix.into(), end })
}

/// A model folder's chat template and the special-token strings it may use.
pub struct ModelChatTemplate {
    pub template: String,
    pub bos: String,
    pub eos: String,
}

/// The `chat_template` of `<dir>/tokenizer_config.json` (with its bos/eos strings), if any.
pub fn model_chat_template(dir: &Path) -> Result<Option<ModelChatTemplate>> {
    let path = dir.join(TOKENIZER_CONFIG_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
    // Special tokens are strings, or objects with a "content" field (older tokenizer configs).
    let token = |k: &str| match &v[k] {
        serde_json::Value::String(s) => s.clone(),
        o => o["content"].as_str().unwrap_or("").to_string(),
    };
    Ok(v.get("chat_template").and_then(|t| t.as_str()).map(|t| ModelChatTemplate {
        template: t.to_string(),
        bos: token("bos_token"),
        eos: token("eos_token"),
    }))
}

/// The prompts questions are asked with.
#[derive(Clone, Debug)]
pub struct QaFormat {
    pub closed_book: String,
    pub open_book: String,
    pub chat: ChatFormat,
    /// Put after the wrapped prompt: the start of the answer (`seal.answer_prefix`).
    pub answer_prefix: String,
}

impl QaFormat {
    pub fn from_config(cfg: &SealConfig, chat: ChatFormat) -> Self {
        Self {
            closed_book: cfg.qa_template.clone(),
            open_book: cfg.open_book_template.clone(),
            chat,
            answer_prefix: cfg.answer_prefix.clone(),
        }
    }

    pub fn closed(&self, p: &Passage, question: &str) -> String {
        self.chat.wrap(&fill(&self.closed_book, p, question)) + &self.answer_prefix
    }

    pub fn open(&self, p: &Passage, question: &str) -> String {
        self.chat.wrap(&fill(&self.open_book, p, question)) + &self.answer_prefix
    }
}
