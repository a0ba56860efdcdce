//! `memtune finetune`: learn a config's facts with one method on a model folder, measure them
//! before and after, and write the result.

use crate::config::{ExperimentConfig, MethodKind};
use crate::eval::qa::{evaluate_batched, statement_completion, QaReport};
use crate::model::Llama;
use crate::train::facts::{fact_items, facts_for, run_method, save_finetuned};
use crate::train::model_dir::load_base;
use anyhow::Result;
use candle_core::Device;
use std::path::{Path, PathBuf};

/// What `memtune finetune` prints.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FinetuneReport {
    pub method: MethodKind,
    pub facts: usize,
    pub steps: usize,
    pub seconds: f64,
    pub mean_first_loss: f32,
    pub mean_last_loss: f32,
    /// Closed-book QA on the new facts' questions (absent when the facts have none).
    pub new_fact_before: Option<QaReport>,
    pub new_fact_after: Option<QaReport>,
    /// Statement completion on the facts' own statements (the first word after the text that
    /// precedes the answer), before and after.
    pub statement_before: Option<QaReport>,
    pub statement_after: Option<QaReport>,
    /// Where the result was written.
    pub out: String,
}

/// `memtune finetune`.
pub fn finetune_command(
    model_dir: &Path,
    cfg: &ExperimentConfig,
    out: Option<&Path>,
    merge: bool,
    device: &Device,
) -> Result<FinetuneReport> {
    let ft = &cfg.finetune;
    let base = load_base(model_dir, device)?;
    let facts = facts_for(ft, base.world.as_ref())?;
    let items = fact_items(&facts, 0);
    let eval = |m: &Llama| -> Result<(Option<QaReport>, Option<QaReport>)> {
        if items.is_empty() {
            return Ok((None, None));
        }
        Ok((Some(evaluate_batched(m, &base.tokenizer, &items)?.0), Some(statement_completion(m, &base.tokenizer, &facts)?)))
    };
    let (before, statement_before) = eval(&base.model)?;
    let bar = crate::util::progress_bar(&format!("finetune {}", ft.method.name()), 0);
    let (tuned, outcome) = run_method(&base, ft, &facts, |s, total| {
        bar.set_length(total as u64);
        bar.set_position(s.step as u64);
        bar.set_message(format!("loss {:.3}", s.loss));
    })?;
    bar.finish_and_clear();
    let (after, statement_after) = eval(&tuned.model)?;
    let out = out.map(PathBuf::from).unwrap_or_else(|| {
        // A repo id from the hub cache (no such path here): never write into the cache; the
        // config's run directory gets the output instead.
        if !model_dir.exists() {
            return Path::new(&cfg.run.dir).join(format!("finetune-{}", ft.method.name()));
        }
        let run = if base.dir.ends_with(crate::train::pretrain::CHECKPOINT_DIR) {
            base.dir.parent().unwrap_or(&base.dir).to_path_buf()
        } else {
            base.dir.clone()
        };
        run.join(format!("finetune-{}", ft.method.name()))
    });
    save_finetuned(&base, cfg, &tuned, &out, merge)?;
    Ok(FinetuneReport {
        method: ft.method,
        facts: facts.len(),
        steps: outcome.steps,
        seconds: outcome.seconds,
        mean_first_loss: outcome.mean_first_loss,
        mean_last_loss: outcome.mean_last_loss,
        new_fact_before: before,
        new_fact_after: after,
        statement_before,
        statement_after,
        out: out.display().to_string(),
    })
}
