//! `memtune bench forgetting`: the learning-vs-forgetting benchmark (docs/design.md, "Sparse memory finetuning").
//!
//! 1. Pretrain a small memory model on the synthetic world, or reuse the finished one whose
//!    `[model]`, `[train]` and `[data]` hash to the same folder (`<run.dir>/pretrain-<hash>`).
//! 2. Build its background index (`[background]`), unless the checkpoint has one of B batches.
//! 3. Measure the pretrained model: retention = closed-book QA exact match on bio-only
//!    pretraining people (their QA pairs were never trained on) and the held-out LM loss.
//! 4. For each method of `[forgetting] methods` and each point of its grid, learn the same K new
//!    facts (`[finetune]`) on a fresh copy of the weights, then measure learning (QA exact match
//!    on the new facts, and statement completion) and retention again.
//! 5. Write `results.jsonl` (one line per run, as it finishes), `results.md` (the best run of each
//!    method at matched learning, then every run) and `pareto.png` / `pareto.svg` (new-fact EM
//!    against retention drop, one series per method, its Pareto front drawn).

mod report;
mod setup;

pub use report::{baseline_pairs, plot, relative_drop, render_markdown, report_only, summarize, write_report, BaselinePair, Summary};

pub use super::probes::{Heldout, Measures, Probes};
use crate::config::{ExperimentConfig, GridRun, MethodKind, Ranking};
use crate::eval::qa::evaluate_batched;
use crate::train::facts::{fact_items, run_method_stream};
use anyhow::{Context, Result};
use candle_core::Device;
use report::point_label;
use serde::{Deserialize, Serialize};
use setup::{model_setup, world_setup};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The benchmark's built-in config (`configs/forgetting.toml`).
pub const FORGETTING_TOML: &str = include_str!("../../../configs/forgetting.toml");

/// Load `path` (the built-in config when `None`) with `sets`; with `quick`, the config's own
/// `forgetting.quick` overrides are applied first (the command line's still win).
pub fn load_config(path: Option<&Path>, quick: bool, sets: &[String]) -> Result<ExperimentConfig> {
    let (text, file) = match path {
        Some(p) => (std::fs::read_to_string(p).with_context(|| format!("cannot read config {}", p.display()))?, p.display().to_string()),
        None => (FORGETTING_TOML.to_string(), "configs/forgetting.toml (built in)".to_string()),
    };
    let cfg = ExperimentConfig::from_toml_str(&text, &file, sets)?;
    if !quick {
        return Ok(cfg);
    }
    let mut all = cfg.forgetting.quick.clone();
    all.extend(sets.iter().cloned());
    ExperimentConfig::from_toml_str(&text, &format!("{file} --quick"), &all)
}

/// One line of `results.jsonl`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RunResult {
    /// `sparse-memory`, `lora` or `full`.
    pub method: String,
    /// The series it is plotted in: the method, or an ablation of sparse memory finetuning
    /// (`sparse-memory (tf)`, `(random)`, `(all)`).
    pub variant: String,
    /// Every setting of the method's `[finetune.<method>]` section for this run.
    pub hparams: serde_json::Value,
    /// The grid values that define the run.
    pub grid: serde_json::Value,
    /// New facts learned (K) and paraphrases per fact.
    pub facts: usize,
    pub paraphrases: usize,
    /// Closed-book QA exact match on the new facts after learning them, and its standard error.
    pub new_fact_em: f64,
    pub new_fact_em_stderr: f64,
    /// Statement completion on the new facts' own statements after learning them.
    pub new_fact_statement_em: f64,
    /// QA exact match on held-out pretraining-world facts (bio-only people), before and after.
    pub retention_em_before: f64,
    pub retention_em_after: f64,
    /// 100 · (before − after) / before: the relative retention loss, in percent.
    pub retention_drop: f64,
    /// Mean LM loss on held-out pretraining-stream batches, before and after.
    pub heldout_loss_before: f64,
    pub heldout_loss_after: f64,
    /// Optimiser steps and wall seconds of finetuning (evaluation excluded).
    pub steps: usize,
    pub seconds: f64,
    /// Wall seconds of the run's evaluation.
    pub eval_seconds: f64,
    /// New facts' QA F1 and `contains` at the end of the stream.
    #[serde(default)]
    pub new_fact_f1: f64,
    #[serde(default)]
    pub new_fact_contains: f64,
    /// Plasticity: QA exact match and `contains` on each fact right after it was first learned
    /// (before the next fact), averaged over facts.
    #[serde(default)]
    pub plasticity_em: f64,
    #[serde(default)]
    pub plasticity_contains: f64,
    /// Held-out real-text perplexity before and after (real-model benchmarks).
    #[serde(default)]
    pub perplexity_before: Option<f64>,
    #[serde(default)]
    pub perplexity_after: Option<f64>,
    /// Multiple-choice accuracy before and after, and its relative drop in percent.
    #[serde(default)]
    pub choice_acc_before: Option<f64>,
    #[serde(default)]
    pub choice_acc_after: Option<f64>,
    #[serde(default)]
    pub choice_drop: Option<f64>,
}

/// The series a run belongs to (`sparse-memory` ablations get their own).
pub fn variant(run: &GridRun) -> String {
    let sm = &run.finetune.sparse_memory;
    match run.method {
        MethodKind::SparseMemory if sm.top_t.0.is_none() => "sparse-memory (all)".into(),
        MethodKind::SparseMemory if sm.ranking == Ranking::Tf => "sparse-memory (tf)".into(),
        MethodKind::SparseMemory if sm.ranking == Ranking::Random => "sparse-memory (random)".into(),
        m => m.name().into(),
    }
}

fn hparams(run: &GridRun) -> Result<serde_json::Value> {
    let ft = &run.finetune;
    Ok(match run.method {
        MethodKind::SparseMemory => serde_json::to_value(&ft.sparse_memory)?,
        MethodKind::Lora => serde_json::to_value(&ft.lora)?,
        MethodKind::Full => serde_json::to_value(&ft.full)?,
    })
}

/// Where a benchmark left its files, and its summary.
pub struct ForgettingOutcome {
    pub out: PathBuf,
    pub results: Vec<RunResult>,
    pub before: Measures,
    pub summary: Summary,
    pub table: String,
}

/// Run the benchmark of `cfg` (see the module doc).
pub fn run(cfg: &ExperimentConfig, quick: bool, device: &Device) -> Result<ForgettingOutcome> {
    let t_start = std::time::Instant::now();
    let out = out_dir(cfg, quick);
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let runs = if cfg.forgetting.measure_only {
        vec![]
    } else {
        cfg.forgetting.runs(&cfg.finetune).map_err(|(k, m)| anyhow::anyhow!("{k}: {m}"))?
    };

    // 1, 2, 3. The model with its background index, the facts and the probes.
    let (base, facts, probes, notes) = if cfg.forgetting.model.is_empty() { world_setup(cfg, device)? } else { model_setup(cfg, device)? };
    let t0 = std::time::Instant::now();
    let before = probes.measure(&base.model, &base)?;
    tracing::info!(
        "base model: retention QA EM {:.3} ± {:.3} ({} questions), held-out loss {:.4}, new-fact QA EM {:.3} ({:.0} s)",
        before.retention_em,
        before.retention_em_stderr,
        probes.retention.len(),
        before.heldout_loss,
        before.new_fact_em,
        t0.elapsed().as_secs_f64()
    );
    crate::io::atomic::write_atomic(&out.join("config.toml"), cfg.to_toml().as_bytes())?;
    let pre = Pretrained {
        measures: before.clone(),
        retention_questions: probes.retention.len(),
        new_fact_questions: probes.new_facts.len(),
        facts: facts.len(),
        notes,
    };
    crate::io::atomic::write_atomic(&out.join(PRETRAINED_FILE), serde_json::to_string_pretty(&pre)?.as_bytes())?;

    // 4. The grid.
    let results_path = out.join("results.jsonl");
    let mut file = std::fs::File::create(&results_path).with_context(|| format!("cannot create {}", results_path.display()))?;
    let bar = crate::util::progress_bar("forgetting", runs.len());
    let mut results = vec![];
    for (i, run) in runs.iter().enumerate() {
        let label = format!("{} {}", variant(run), point_label(&run.point));
        bar.set_message(label.clone());
        let (mut plastic_em, mut plastic_contains) = (vec![], vec![]);
        let (tuned, outcome) = run_method_stream(
            &base,
            &run.finetune,
            &facts,
            |s, total| bar.set_message(format!("{label} step {}/{total}", s.step)),
            |i, model| {
                let q = evaluate_batched(model, &base.tokenizer, &fact_items(&facts[i..=i], cfg.forgetting.questions_per_fact))?.0;
                plastic_em.push(q.em);
                plastic_contains.push(q.contains);
                Ok(())
            },
        )?;
        let t1 = std::time::Instant::now();
        let after = probes.measure(&tuned.model, &base)?;
        drop(tuned);
        let r = RunResult {
            method: run.method.name().into(),
            variant: variant(run),
            hparams: hparams(run)?,
            grid: serde_json::to_value(&run.point)?,
            facts: facts.len(),
            paraphrases: run.finetune.paraphrases,
            new_fact_em: after.new_fact_em,
            new_fact_em_stderr: after.new_fact_em_stderr,
            new_fact_statement_em: after.new_fact_statement_em,
            retention_em_before: before.retention_em,
            retention_em_after: after.retention_em,
            retention_drop: relative_drop(before.retention_em, after.retention_em),
            heldout_loss_before: before.heldout_loss,
            heldout_loss_after: after.heldout_loss,
            steps: outcome.steps,
            seconds: outcome.seconds,
            eval_seconds: t1.elapsed().as_secs_f64(),
            new_fact_f1: after.new_fact_f1,
            new_fact_contains: after.new_fact_contains,
            plasticity_em: mean(&plastic_em),
            plasticity_contains: mean(&plastic_contains),
            perplexity_before: before.heldout_perplexity,
            perplexity_after: after.heldout_perplexity,
            choice_acc_before: before.choice_acc,
            choice_acc_after: after.choice_acc,
            choice_drop: before.choice_acc.zip(after.choice_acc).map(|(b, a)| relative_drop(b, a)),
        };
        writeln!(file, "{}", serde_json::to_string(&r)?)?;
        file.flush()?;
        tracing::info!(
            "run {}/{}: {label}: new-fact EM {:.3} (right after each fact {:.3}), retention {:.3} -> {:.3} ({:+.1}%), held-out loss {:.4} -> {:.4}",
            i + 1,
            runs.len(),
            r.new_fact_em,
            r.plasticity_em,
            r.retention_em_before,
            r.retention_em_after,
            -r.retention_drop,
            r.heldout_loss_before,
            r.heldout_loss_after
        );
        bar.inc(1);
        results.push(r);
    }
    bar.finish_and_clear();

    // 5. Table and plot.
    let (summary, table) = write_report(&out, &results, &pre, cfg.forgetting.match_tolerance, Some(t_start.elapsed().as_secs_f64()))?;
    Ok(ForgettingOutcome { out, results, before, summary, table })
}

fn mean(xs: &[f64]) -> f64 {
    crate::eval::metrics::mean_stderr(xs).0
}

/// The pretrained model's measures, kept beside the results (`pretrained.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Pretrained {
    pub measures: Measures,
    pub retention_questions: usize,
    pub new_fact_questions: usize,
    pub facts: usize,
    /// What the setup measured (known facts found, facts dropped as already known, ...).
    #[serde(default)]
    pub notes: Vec<String>,
}

pub const PRETRAINED_FILE: &str = "pretrained.json";

/// The results folder of a config.
pub fn out_dir(cfg: &ExperimentConfig, quick: bool) -> PathBuf {
    if cfg.forgetting.out.is_empty() {
        Path::new(&cfg.run.dir).join(if quick { "forgetting-quick" } else { "forgetting" })
    } else {
        PathBuf::from(&cfg.forgetting.out)
    }
}
