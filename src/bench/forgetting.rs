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

use super::finetune::{fact_items, facts_for, run_method_stream};
use super::probes::text_and_choice;
pub use super::probes::{Heldout, Measures, Probes};
use crate::config::{ExperimentConfig, GridRun, MethodKind, Ranking};
use crate::data::facts::Fact;
use crate::data::synthetic::Split;
use crate::eval::qa::{evaluate_batched, sample_items, world_items};
use crate::plot::{scatter_with_fronts, PlotSpec, Series};
use crate::train::base_model::{load_base, pretrained_base, Base};
use crate::train::pretrain::{training_stream, HELDOUT_SEED};
use anyhow::{Context, Result};
use candle_core::Device;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The benchmark's built-in config (`configs/forgetting.toml`).
pub const FORGETTING_TOML: &str = include_str!("../../configs/forgetting.toml");

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

/// Relative drop in percent (the absolute drop × 100 when `before` is 0).
pub fn relative_drop(before: f64, after: f64) -> f64 {
    if before > 0.0 {
        100.0 * (before - after) / before
    } else {
        100.0 * (before - after)
    }
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

/// What a benchmark runs on: the base model, the facts it learns, the probes, and notes on the
/// setup for the report.
type Setup = (Base, Vec<Fact>, Probes, Vec<String>);

/// The synthetic world's benchmark: the model pretrained on it, the world's new people as facts,
/// its bio-only people's QA as retention and its held-out stream (plus any `[forgetting.probes]`
/// multiple-choice task).
fn world_setup(cfg: &ExperimentConfig, device: &Device) -> Result<Setup> {
    let base = pretrained_base(cfg, device)?;
    let world = base
        .world
        .clone()
        .context("the forgetting benchmark needs a model pretrained on the synthetic world (data.source = \"synthetic\")")?;
    let run_cfg = base.run_cfg.clone().expect("memtune checkpoints carry their config");
    let facts = facts_for(&cfg.finetune, Some(&world))?;
    let (text, choice) = text_and_choice(&cfg.forgetting.probes, &base, cfg.train.seed)?;
    let heldout = match text {
        Some(docs) => Heldout::Text(docs),
        None => {
            let mut s = training_stream(&run_cfg, Some(&world), &base.tokenizer, run_cfg.train.seed ^ HELDOUT_SEED, None)?;
            Heldout::Batches((0..cfg.forgetting.heldout_batches).map(|_| s.next_batch()).collect::<Result<Vec<_>>>()?)
        }
    };
    let probes = Probes {
        retention: sample_items(world_items(&world, Split::BioOnly), cfg.forgetting.retention_questions, cfg.train.seed),
        retention_contains: false,
        retention_prompt: crate::config::PromptStyle::Qa,
        new_facts: fact_items(&facts, cfg.forgetting.questions_per_fact),
        facts: facts.clone(),
        heldout,
        choice,
    };
    Ok((base, facts, probes, vec![]))
}

/// A given model folder (`forgetting.model`) and facts file (`finetune.facts_file`): the facts the
/// base model does not know, its known facts, held-out text and multiple-choice probes
/// (`[forgetting.probes]`). Nothing is written into the model folder: a missing background index
/// is built in memory.
fn model_setup(cfg: &ExperimentConfig, device: &Device) -> Result<Setup> {
    let f = &cfg.forgetting;
    let p = &f.probes;
    anyhow::ensure!(!cfg.finetune.facts_file.is_empty(), "a benchmark on --model needs a facts file: --facts FILE (finetune.facts_file)");
    anyhow::ensure!(!p.known_facts_file.is_empty(), "a benchmark on --model needs forgetting.probes.known_facts_file (closed-book QA JSONL; the questions the base answers are its known facts)");
    anyhow::ensure!(
        !p.text_files.is_empty(),
        "a benchmark on --model needs forgetting.probes.text_files (held-out real text for perplexity)"
    );
    let facts_path = Path::new(&cfg.finetune.facts_file);
    let all = crate::data::facts::read_facts_jsonl(facts_path, 0)?;
    check_questions(facts_path, &all)?;
    let mut base = load_base(Path::new(&f.model), device).with_context(|| format!("forgetting.model = {:?}", f.model))?;
    let has_memory = base.model_cfg.memory.as_ref().is_some_and(|m| !m.layers.is_empty());
    if f.methods.contains(&MethodKind::SparseMemory) && !has_memory && !f.measure_only {
        anyhow::bail!(
            "{} has no memory layer, so sparse memory finetuning cannot run on it; retrofit one first: `memtune pretrain --config configs/smollm2-retrofit.toml --set init.model=\"{}\"` (README, \"Memory retrofit\"), or drop sparse-memory from forgetting.methods",
            base.dir.display(),
            f.model
        );
    }
    let mut notes = vec![];
    if has_memory && base.background.as_ref().map(|b| b.batches) != Some(cfg.background.batches as u64) {
        base.background = Some(background_in_memory(&base, cfg)?);
        notes.push(format!(
            "background index: {} batches, built in memory (the model folder has none of that size)",
            cfg.background.batches
        ));
    }
    let t0 = std::time::Instant::now();
    let (facts, dropped) = super::probes::unknown_facts(&base.model, &base, all)?;
    let total = facts.len() + dropped;
    let facts: Vec<Fact> = if cfg.finetune.facts > 0 { facts.into_iter().take(cfg.finetune.facts).collect() } else { facts };
    anyhow::ensure!(
        !facts.is_empty(),
        "{}: the base model already answers every fact's question ({total} facts); nothing is left to learn",
        facts_path.display()
    );
    notes.push(format!(
        "facts: {} of {} in {}, after dropping {} the base model already answers (`contains`)",
        facts.len(),
        total,
        facts_path.display(),
        dropped
    ));
    let (known, asked) = super::probes::known_facts(&base.model, &base, p, cfg.train.seed)?;
    notes.push(format!(
        "known facts: {} of {} questions of {} answered by the base model (`contains`; retention is scored the same way)",
        known.len(),
        asked,
        p.known_facts_file
    ));
    if known.is_empty() {
        tracing::warn!("the base model answers none of the {asked} questions of {}: the known-facts probe is empty", p.known_facts_file);
    }
    let (text, choice) = text_and_choice(p, &base, cfg.train.seed)?;
    let text = text.expect("text_files checked above");
    notes.push(format!(
        "held-out text: {} documents, {} tokens of {:?}",
        text.len(),
        text.iter().map(|d| d.len()).sum::<usize>(),
        p.text_files
    ));
    if !choice.is_empty() {
        notes.push(format!("multiple choice: {} examples of {}", choice.len(), p.choice_file));
    }
    tracing::info!("setup ({:.0} s): {}", t0.elapsed().as_secs_f64(), notes.join("; "));
    let probes = Probes {
        retention: known,
        retention_contains: true,
        retention_prompt: p.known_facts_prompt,
        new_facts: fact_items(&facts, f.questions_per_fact),
        facts: facts.clone(),
        heldout: Heldout::Text(text),
        choice,
    };
    Ok((base, facts, probes, notes))
}

/// Every fact must have a question, and one whose wording is in none of its statements (learning
/// is measured on wording the model was not trained on).
fn check_questions(path: &Path, facts: &[Fact]) -> Result<()> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read facts file {}", path.display()))?;
    let lines: Vec<usize> = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()).map(|(i, _)| i + 1).collect();
    let norm = |s: &str| crate::eval::metrics::normalize_answer(s);
    for (f, line) in facts.iter().zip(lines) {
        anyhow::ensure!(
            !f.questions.is_empty(),
            "{}:{line}: fact `{}` has no \"question\" (the benchmark measures learning by closed-book QA)",
            path.display(),
            f.subject
        );
        let held_out = f.questions.iter().any(|q| !f.statements.iter().any(|s| norm(s).contains(&norm(&q.question))));
        anyhow::ensure!(held_out, "{}:{line}: every question of fact `{}` appears word for word in one of its statements; give at least one question in wording it is not trained on", path.display(), f.subject);
    }
    Ok(())
}

/// The background index of `base` over `[background]` batches of its own training data (the
/// run config in the checkpoint), built without writing anything.
fn background_in_memory(base: &Base, cfg: &ExperimentConfig) -> Result<crate::train::tfidf::BackgroundIndex> {
    let mut rc = base.run_cfg.clone().context("the model folder has no memtune run config, so its background data is unknown: run `memtune background --model DIR --config CONFIG`")?;
    rc.train.batch_size = cfg.background.batch_size;
    if cfg.background.seq_len > 0 {
        rc.train.seq_len = cfg.background.seq_len;
    }
    let mut source =
        training_stream(&rc, base.world.as_ref(), &base.tokenizer, rc.train.seed ^ crate::train::background::BACKGROUND_SEED, None)?;
    let bar = crate::util::progress_bar("background", cfg.background.batches);
    let ix =
        crate::train::tfidf::BackgroundIndex::build(&base.model, source.as_mut(), cfg.background.batches, |b| bar.set_position(b as u64))?;
    bar.finish_and_clear();
    Ok(ix)
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

/// Write `results.md` and `pareto.png` / `.svg` into `out`.
pub fn write_report(
    out: &Path,
    results: &[RunResult],
    pre: &Pretrained,
    tolerance: f64,
    seconds: Option<f64>,
) -> Result<(Summary, String)> {
    let summary = summarize(results, tolerance);
    let table = render_markdown(results, pre, &summary, seconds);
    crate::io::atomic::write_atomic(&out.join("results.md"), table.as_bytes())?;
    plot(&out.join("pareto"), results, pre.facts)?;
    Ok((summary, table))
}

/// `bench forgetting --report`: redo the table and plot of a finished benchmark from its
/// `results.jsonl` and `pretrained.json` (nothing is trained).
pub fn report_only(cfg: &ExperimentConfig, quick: bool) -> Result<ForgettingOutcome> {
    let out = out_dir(cfg, quick);
    let read = |f: &str| std::fs::read_to_string(out.join(f)).with_context(|| format!("cannot read {}", out.join(f).display()));
    let pre: Pretrained =
        serde_json::from_str(&read(PRETRAINED_FILE)?).with_context(|| format!("{}: not valid", out.join(PRETRAINED_FILE).display()))?;
    let results: Vec<RunResult> = read("results.jsonl")?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| serde_json::from_str(l).with_context(|| format!("results.jsonl:{}: not a result line", i + 1)))
        .collect::<Result<_>>()?;
    let (summary, table) = write_report(&out, &results, &pre, cfg.forgetting.match_tolerance, None)?;
    Ok(ForgettingOutcome { out, results, before: pre.measures, summary, table })
}

/// The results folder of a config.
pub fn out_dir(cfg: &ExperimentConfig, quick: bool) -> PathBuf {
    if cfg.forgetting.out.is_empty() {
        Path::new(&cfg.run.dir).join(if quick { "forgetting-quick" } else { "forgetting" })
    } else {
        PathBuf::from(&cfg.forgetting.out)
    }
}

fn point_label(p: &std::collections::BTreeMap<String, toml::Value>) -> String {
    p.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
}

/// The best run of each series at matched learning, and what the claims of the benchmark say.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// The matched learning level: the highest new-fact EM that every main method (sparse-memory,
    /// lora, full, those present) reaches in some run.
    pub matched_em: f64,
    pub tolerance: f64,
    /// Per series: the index in the results of its run with the least retention drop among
    /// those within `tolerance` of `matched_em` (None: it never got there).
    pub best: Vec<(String, Option<usize>)>,
    /// Per series: its highest new-fact EM.
    pub max_em: Vec<(String, f64)>,
}

const MAIN: [&str; 3] = ["sparse-memory", "lora", "full"];

pub fn summarize(results: &[RunResult], tolerance: f64) -> Summary {
    let mut series: Vec<String> = vec![];
    for r in results {
        if !series.contains(&r.variant) {
            series.push(r.variant.clone());
        }
    }
    let max_em: Vec<(String, f64)> = series
        .iter()
        .map(|s| (s.clone(), results.iter().filter(|r| &r.variant == s).map(|r| r.new_fact_em).fold(f64::NEG_INFINITY, f64::max)))
        .collect();
    let main: Vec<f64> = max_em.iter().filter(|(s, _)| MAIN.contains(&s.as_str())).map(|x| x.1).collect();
    let pool = if main.is_empty() { max_em.iter().map(|x| x.1).collect() } else { main };
    let matched_em = pool.iter().copied().fold(f64::INFINITY, f64::min).max(0.0);
    let best = series
        .iter()
        .map(|s| {
            let pick = results
                .iter()
                .enumerate()
                .filter(|(_, r)| &r.variant == s && r.new_fact_em >= matched_em - tolerance - 1e-12)
                .min_by(|a, b| a.1.retention_drop.total_cmp(&b.1.retention_drop).then(b.1.new_fact_em.total_cmp(&a.1.new_fact_em)))
                .map(|(i, _)| i);
            (s.clone(), pick)
        })
        .collect();
    Summary { matched_em, tolerance, best, max_em }
}

fn compact(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Object(m) => m.iter().map(|(k, v)| format!("{k}={}", compact(v))).collect::<Vec<_>>().join(", "),
        serde_json::Value::Array(a) => a.iter().map(compact).collect::<Vec<_>>().join("+"),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The markdown report: the pretrained model, the best run per series at matched learning, each
/// baseline's best run against sparse memory finetuning at that learning level, the claims checked,
/// and every run.
pub fn render_markdown(results: &[RunResult], pre: &Pretrained, s: &Summary, seconds: Option<f64>) -> String {
    let before = &pre.measures;
    let mut md = String::new();
    let probe = if pre.notes.is_empty() {
        "exact match on held-out pretraining-world facts (bio-only people"
    } else {
        "`contains` on the base model's known facts (closed-book questions it answered"
    };
    md += &format!(
        "## Learning vs forgetting: {} new facts\n\nBase model: closed-book QA {probe}, {} questions) **{:.1}%** ± {:.1}; held-out loss {:.4}; new-fact QA before learning {:.1}% ({} questions).\n\n",
        pre.facts,
        pre.retention_questions,
        100.0 * before.retention_em,
        100.0 * before.retention_em_stderr,
        before.heldout_loss,
        100.0 * before.new_fact_em,
        pre.new_fact_questions
    );
    if let (Some(p), Some(se)) = (before.heldout_perplexity, before.heldout_perplexity_stderr) {
        md += &format!("Held-out text perplexity: {p:.3} ± {se:.3}.\n");
    }
    if let (Some(a), Some(se), Some(c)) = (before.choice_acc, before.choice_acc_stderr, before.choice_chance) {
        md += &format!("Multiple choice (log-likelihood): {:.1}% ± {:.1} (chance {:.1}%).\n", 100.0 * a, 100.0 * se, 100.0 * c);
    }
    for n in &pre.notes {
        md += &format!("- {n}\n");
    }
    md += "\n";
    md += &format!(
        "Best run per method at matched learning (new-fact EM ≥ {:.1}% − {:.0} points: the highest level every method reaches), the least retention drop among those:\n\n",
        100.0 * s.matched_em,
        100.0 * s.tolerance
    );
    md += "| method | hyperparameters | new-fact QA EM | statement EM | retention EM before → after | retention drop | held-out loss before → after | steps | seconds |\n|---|---|---:|---:|---:|---:|---:|---:|---:|\n";
    for (series, pick) in &s.best {
        match pick {
            Some(i) => {
                let r = &results[*i];
                md += &format!(
                    "| {} | {} | {:.1}% | {:.1}% | {:.1}% → {:.1}% | {:.1}% | {:.4} → {:.4} | {} | {:.1} |\n",
                    series,
                    compact(&r.hparams),
                    100.0 * r.new_fact_em,
                    100.0 * r.new_fact_statement_em,
                    100.0 * r.retention_em_before,
                    100.0 * r.retention_em_after,
                    r.retention_drop,
                    r.heldout_loss_before,
                    r.heldout_loss_after,
                    r.steps,
                    r.seconds
                );
            }
            None => {
                let m = s.max_em.iter().find(|x| &x.0 == series).map(|x| x.1).unwrap_or(0.0);
                md += &format!("| {series} | (no run reached the level; best new-fact EM {:.1}%) | | | | | | | |\n", 100.0 * m);
            }
        }
    }
    md += "\n";
    md += &probe_table(results, s);
    let pairs = baseline_pairs(results, s.tolerance);
    if !pairs.is_empty() {
        md += &format!(
            "Each baseline's best-learning run against the sparse-memory run with the least retention drop among those that learned at least as much (− {:.0} points):\n\n",
            100.0 * s.tolerance
        );
        md += "| baseline | its hyperparameters | its new-fact EM | its retention drop | sparse-memory hyperparameters | sparse-memory new-fact EM | sparse-memory retention drop |\n|---|---|---:|---:|---|---:|---:|\n";
        for p in &pairs {
            let b = &results[p.baseline];
            let smf = p.smf.map(|i| &results[i]);
            md += &format!(
                "| {} | {} | {:.1}% | {:.1}% | {} | {} | {} |\n",
                b.variant,
                compact(&b.grid),
                100.0 * b.new_fact_em,
                b.retention_drop,
                smf.map(|r| compact(&r.grid)).unwrap_or_else(|| "(none learned as much)".into()),
                smf.map(|r| format!("{:.1}%", 100.0 * r.new_fact_em)).unwrap_or_default(),
                smf.map(|r| format!("{:.1}%", r.retention_drop)).unwrap_or_default(),
            );
        }
        md += "\n";
    }
    md += &claims(results, s, before, &pairs);
    md += "\nAll runs:\n\n| method | grid | new-fact QA EM | right after each fact | statement EM | retention after | retention drop | held-out loss after | steps | seconds |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    for r in results {
        md += &format!(
            "| {} | {} | {:.1}% ± {:.1} | {:.1}% | {:.1}% | {:.1}% | {:.1}% | {:.4} | {} | {:.1} |\n",
            r.variant,
            compact(&r.grid),
            100.0 * r.new_fact_em,
            100.0 * r.new_fact_em_stderr,
            100.0 * r.plasticity_em,
            100.0 * r.new_fact_statement_em,
            100.0 * r.retention_em_after,
            r.retention_drop,
            r.heldout_loss_after,
            r.steps,
            r.seconds
        );
    }
    if let Some(t) = seconds {
        md += &format!("\nBenchmark wall time: {t:.0} s.\n");
    }
    md
}

/// Learning and every retention probe of each series' best run at matched learning.
fn probe_table(results: &[RunResult], s: &Summary) -> String {
    let pct = |x: Option<f64>| x.map(|v| format!("{:.1}%", 100.0 * v)).unwrap_or_else(|| "–".into());
    let mut md = String::from("Learning and retention of those runs (new facts: at the end of the stream and right after each fact; retention: every probe, relative drop):\n\n| method | new-fact EM | F1 | contains | right after each fact EM / contains | known-fact or held-out QA drop | held-out perplexity before → after | multiple choice before → after (drop) |\n|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for (series, pick) in &s.best {
        let Some(r) = pick.map(|i| &results[i]) else { continue };
        let ppl = match (r.perplexity_before, r.perplexity_after) {
            (Some(b), Some(a)) => format!("{b:.3} → {a:.3} ({:+.1}%)", 100.0 * (a - b) / b),
            _ => format!("loss {:.4} → {:.4}", r.heldout_loss_before, r.heldout_loss_after),
        };
        md += &format!(
            "| {series} | {:.1}% | {:.1}% | {:.1}% | {:.1}% / {:.1}% | {:.1}% | {ppl} | {} → {} ({}) |\n",
            100.0 * r.new_fact_em,
            100.0 * r.new_fact_f1,
            100.0 * r.new_fact_contains,
            100.0 * r.plasticity_em,
            100.0 * r.plasticity_contains,
            r.retention_drop,
            pct(r.choice_acc_before),
            pct(r.choice_acc_after),
            r.choice_drop.map(|d| format!("{d:.1}%")).unwrap_or_else(|| "–".into()),
        );
    }
    md + "\n"
}

/// A baseline's (full, lora) best-learning run and the sparse-memory run it is compared with.
pub struct BaselinePair {
    pub baseline: usize,
    pub smf: Option<usize>,
}

/// For each baseline method (full, then lora): its run with the highest new-fact EM (ties: least
/// retention drop), and the `sparse-memory` run with the least retention drop among those whose
/// new-fact EM is at least that minus `tolerance`.
pub fn baseline_pairs(results: &[RunResult], tolerance: f64) -> Vec<BaselinePair> {
    let mut out = vec![];
    for m in ["full", "lora"] {
        let Some((bi, b)) = results
            .iter()
            .enumerate()
            .filter(|(_, r)| r.variant == m)
            .max_by(|a, b| a.1.new_fact_em.total_cmp(&b.1.new_fact_em).then(b.1.retention_drop.total_cmp(&a.1.retention_drop)))
        else {
            continue;
        };
        let smf = results
            .iter()
            .enumerate()
            .filter(|(_, r)| r.variant == "sparse-memory" && r.new_fact_em >= b.new_fact_em - tolerance - 1e-12)
            .min_by(|a, b| a.1.retention_drop.total_cmp(&b.1.retention_drop).then(b.1.new_fact_em.total_cmp(&a.1.new_fact_em)))
            .map(|(i, _)| i);
        out.push(BaselinePair { baseline: bi, smf });
    }
    out
}

/// The claims, checked on these results (printed, never enforced).
fn claims(results: &[RunResult], s: &Summary, before: &Measures, pairs: &[BaselinePair]) -> String {
    let mut out = String::from("Claims:\n\n");
    let yes = |b: bool| if b { "yes" } else { "**no**" };
    out += &format!(
        "- the base model answers its retention questions with ≥ 50% EM: {} ({:.1}%)\n",
        yes(before.retention_em >= 0.5),
        100.0 * before.retention_em
    );
    let max = |v: &str| s.max_em.iter().find(|x| x.0 == v).map(|x| x.1);
    let Some(smf) = max("sparse-memory") else {
        return out;
    };
    for p in pairs {
        let b = &results[p.baseline];
        out += &format!(
            "- sparse-memory's best new-fact EM within 10 points of {}'s best: {} ({:.1}% vs {:.1}%)\n",
            b.variant,
            yes(smf >= b.new_fact_em - 0.10 - 1e-12),
            100.0 * smf,
            100.0 * b.new_fact_em
        );
        match p.smf.map(|i| &results[i]) {
            Some(a) => {
                out += &format!(
                    "- at the learning level of {}'s best run, sparse-memory's retention drop at most one third of its: {} ({:.1}% at {:.1}% new-fact EM vs {:.1}% at {:.1}%)\n",
                    b.variant,
                    yes(a.retention_drop <= b.retention_drop / 3.0 + 1e-9),
                    a.retention_drop,
                    100.0 * a.new_fact_em,
                    b.retention_drop,
                    100.0 * b.new_fact_em
                );
            }
            None => out += &format!("- at the learning level of {}'s best run: no sparse-memory run learned as much\n", b.variant),
        }
    }
    if let Some(r) = s.best.iter().find(|(v, _)| v == "sparse-memory").and_then(|(_, i)| i.map(|i| &results[i])) {
        let kept = if r.retention_em_before > 0.0 { r.retention_em_after / r.retention_em_before } else { 1.0 };
        out += &format!(
            "- sparse-memory at matched learning keeps ≥ 95% of the base model's retention QA: {} ({:.1}%)\n",
            yes(kept >= 0.95),
            100.0 * kept
        );
    }
    out
}

/// `pareto.png` / `pareto.svg`: new-fact QA EM (x, %) against retention drop (y, %), one series
/// per method variant.
pub fn plot(stem: &Path, results: &[RunResult], k: usize) -> Result<()> {
    let mut series: Vec<Series> = vec![];
    for r in results {
        let p = (100.0 * r.new_fact_em, r.retention_drop);
        match series.iter_mut().find(|s| s.name == r.variant) {
            Some(s) => s.points.push(p),
            None => series.push(Series { name: r.variant.clone(), points: vec![p] }),
        }
    }
    let title = format!("Learning vs forgetting ({k} new facts)");
    scatter_with_fronts(
        stem,
        &PlotSpec {
            title: &title,
            x_label: "new-fact QA exact match (%)",
            y_label: "retention drop on held-out QA (%, lower is better)",
            series: &series,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(variant: &str, em: f64, drop: f64) -> RunResult {
        RunResult {
            method: variant.split(' ').next().unwrap().into(),
            variant: variant.into(),
            hparams: serde_json::json!({"lr": 1.0}),
            grid: serde_json::json!({}),
            facts: 10,
            paraphrases: 8,
            new_fact_em: em,
            new_fact_em_stderr: 0.0,
            new_fact_statement_em: em,
            retention_em_before: 0.8,
            retention_em_after: 0.8 * (1.0 - drop / 100.0),
            retention_drop: drop,
            heldout_loss_before: 1.0,
            heldout_loss_after: 1.1,
            steps: 10,
            seconds: 1.0,
            eval_seconds: 1.0,
            new_fact_f1: em,
            new_fact_contains: em,
            plasticity_em: em,
            plasticity_contains: em,
            perplexity_before: None,
            perplexity_after: None,
            choice_acc_before: None,
            choice_acc_after: None,
            choice_drop: None,
        }
    }

    #[test]
    fn matched_learning_picks_least_drop_among_runs_that_learned_enough() {
        let rs = vec![
            r("sparse-memory", 0.30, 5.0),
            r("sparse-memory", 0.10, 1.0),
            r("lora", 0.40, 60.0),
            r("lora", 0.28, 30.0),
            r("lora", 0.05, 2.0),
            r("full", 0.35, 40.0),
            r("sparse-memory (tf)", 0.5, 50.0),
        ];
        let s = summarize(&rs, 0.05);
        assert!((s.matched_em - 0.30).abs() < 1e-12, "min over main methods of their max");
        assert_eq!(
            s.best,
            vec![
                ("sparse-memory".into(), Some(0)),
                ("lora".into(), Some(3)),
                ("full".into(), Some(5)),
                ("sparse-memory (tf)".into(), Some(6))
            ]
        );
        let before: Measures = serde_json::from_value(serde_json::json!({"retention_em": 0.8, "retention_em_stderr": 0.0, "heldout_loss": 1.0, "new_fact_em": 0.0, "new_fact_em_stderr": 0.0, "new_fact_statement_em": 0.0})).unwrap();
        let pre = Pretrained { measures: before, retention_questions: 10, new_fact_questions: 40, facts: 10, notes: vec![] };
        let md = render_markdown(&rs, &pre, &s, Some(1.0));
        assert!(md.contains("| sparse-memory | lr=1.0 | 30.0% |"), "{md}");
        // full's best (35%) vs the least-drop sparse-memory run with EM ≥ 30%: 5% vs 40%.
        assert!(
            md.contains("sparse-memory's retention drop at most one third of its: yes (5.0% at 30.0% new-fact EM vs 40.0% at 35.0%)"),
            "{md}"
        );
        // lora's best (40%): no sparse-memory run reached 35%.
        assert!(md.contains("learning level of lora's best run: no sparse-memory run learned as much"), "{md}");
        assert!(md.contains("within 10 points of lora's best: yes (30.0% vs 40.0%)"), "{md}");
        assert_eq!(relative_drop(0.5, 0.25), 50.0);
    }
}
