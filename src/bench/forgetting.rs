//! `memtune bench forgetting`: the learning-vs-forgetting benchmark (DESIGN.md §2, §4b).
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

use super::finetune::{fact_items, facts_for, load_base, run_method, Base};
use super::plot::{scatter_with_fronts, PlotSpec, Series};
use crate::config::{ExperimentConfig, GridRun, MethodKind, Ranking};
use crate::data::batches::{Batch, BatchList};
use crate::data::facts::Fact;
use crate::data::synthetic::Split;
use crate::eval::qa::{evaluate_batched, sample_items, statement_completion, world_items, QaItem};
use crate::io::checkpoint::Checkpoint;
use crate::model::Llama;
use crate::train::background::build_and_store;
use crate::train::pretrain::{self, training_stream, CHECKPOINT_DIR, HELDOUT_SEED};
use crate::train::trainer::heldout_loss;
use crate::util::stable_hash;
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

/// Part of the pretraining hash: bump it when a code change makes old pretrained models stale.
pub const PRETRAIN_FORMAT: &str = "1";

/// The pretraining run folder of a config: `<run.dir>/pretrain-<hash of [model], [train], [data]>`.
pub fn pretrain_dir(cfg: &ExperimentConfig) -> PathBuf {
    fn part<T: Serialize>(v: &T) -> String {
        toml::to_string(v).expect("config sections serialise")
    }
    let h = stable_hash(&[part(&cfg.model).as_bytes(), part(&cfg.train).as_bytes(), part(&cfg.data).as_bytes(), PRETRAIN_FORMAT.as_bytes()]);
    Path::new(&cfg.run.dir).join(format!("pretrain-{h:016x}"))
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
}

/// The measurements of one model state.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Measures {
    pub retention_em: f64,
    pub retention_em_stderr: f64,
    pub heldout_loss: f64,
    pub new_fact_em: f64,
    pub new_fact_em_stderr: f64,
    pub new_fact_statement_em: f64,
}

/// What every run is measured on.
pub struct Probes {
    pub retention: Vec<QaItem>,
    pub new_facts: Vec<QaItem>,
    pub facts: Vec<Fact>,
    pub heldout: Vec<Batch>,
}

impl Probes {
    pub fn measure(&self, model: &Llama, base: &Base) -> Result<Measures> {
        let r = evaluate_batched(model, &base.tokenizer, &self.retention)?.0;
        let n = evaluate_batched(model, &base.tokenizer, &self.new_facts)?.0;
        let s = statement_completion(model, &base.tokenizer, &self.facts)?;
        let mut held = BatchList::new(self.heldout.clone(), 1)?;
        let hl = heldout_loss(model, &mut held, self.heldout.len())? as f64;
        Ok(Measures { retention_em: r.em, retention_em_stderr: r.em_stderr, heldout_loss: hl, new_fact_em: n.em, new_fact_em_stderr: n.em_stderr, new_fact_statement_em: s.em })
    }
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
pub fn run(cfg: &ExperimentConfig, quick: bool) -> Result<ForgettingOutcome> {
    let t_start = std::time::Instant::now();
    let device = crate::device::open(&cfg.run.device)?;
    let out = out_dir(cfg, quick);
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let runs = cfg.forgetting.runs(&cfg.finetune).map_err(|(k, m)| anyhow::anyhow!("{k}: {m}"))?;

    // 1, 2. Pretrained model and its background index.
    let base = pretrained_base(cfg, &device)?;
    let world = base.world.clone().context("the forgetting benchmark needs a model pretrained on the synthetic world (data.source = \"synthetic\")")?;
    let run_cfg = base.run_cfg.clone().expect("memtune checkpoints carry their config");

    // 3. Probes, and the pretrained model's measures.
    let facts = facts_for(&cfg.finetune, Some(&world))?;
    let probes = Probes {
        retention: sample_items(world_items(&world, Split::BioOnly), cfg.forgetting.retention_questions, cfg.train.seed),
        new_facts: fact_items(&facts, cfg.forgetting.questions_per_fact),
        facts: facts.clone(),
        heldout: {
            let mut s = training_stream(&run_cfg, Some(&world), &base.tokenizer, run_cfg.train.seed ^ HELDOUT_SEED, None)?;
            (0..cfg.forgetting.heldout_batches).map(|_| s.next_batch()).collect::<Result<Vec<_>>>()?
        },
    };
    let t0 = std::time::Instant::now();
    let before = probes.measure(&base.model, &base)?;
    tracing::info!(
        "pretrained model: bio-only QA EM {:.3} ± {:.3} ({} questions), held-out loss {:.4}, new-fact QA EM {:.3} ({:.0} s)",
        before.retention_em,
        before.retention_em_stderr,
        probes.retention.len(),
        before.heldout_loss,
        before.new_fact_em,
        t0.elapsed().as_secs_f64()
    );
    crate::io::atomic::write_atomic(&out.join("config.toml"), cfg.to_toml().as_bytes())?;
    let pre = Pretrained { measures: before.clone(), retention_questions: probes.retention.len(), new_fact_questions: probes.new_facts.len(), facts: facts.len() };
    crate::io::atomic::write_atomic(&out.join(PRETRAINED_FILE), serde_json::to_string_pretty(&pre)?.as_bytes())?;

    // 4. The grid.
    let results_path = out.join("results.jsonl");
    let mut file = std::fs::File::create(&results_path).with_context(|| format!("cannot create {}", results_path.display()))?;
    let bar = crate::util::progress_bar("forgetting", runs.len());
    let mut results = vec![];
    for (i, run) in runs.iter().enumerate() {
        let label = format!("{} {}", variant(run), point_label(&run.point));
        bar.set_message(label.clone());
        let (tuned, outcome) = run_method(&base, &run.finetune, &facts, |s, total| bar.set_message(format!("{label} step {}/{total}", s.step)))?;
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
        };
        writeln!(file, "{}", serde_json::to_string(&r)?)?;
        file.flush()?;
        tracing::info!(
            "run {}/{}: {label}: new-fact EM {:.3}, retention {:.3} -> {:.3} ({:+.1}%), held-out loss {:.4} -> {:.4}",
            i + 1,
            runs.len(),
            r.new_fact_em,
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

/// The model of `cfg` pretrained on its data into `pretrain_dir(cfg)`, or the finished run found
/// there (same `[model]`, `[train]`, `[data]` hash; an unfinished one is resumed), with its
/// background index of `background.batches` batches built unless the checkpoint holds it.
pub fn pretrained_base(cfg: &ExperimentConfig, device: &Device) -> Result<Base> {
    let pdir = pretrain_dir(cfg);
    let ckpt = pdir.join(CHECKPOINT_DIR);
    let mut pcfg = cfg.clone();
    pcfg.run.dir = pdir.display().to_string();
    let done = Checkpoint::exists(&ckpt) && crate::train::background::checkpoint_step(&ckpt)? == cfg.train.steps;
    if done {
        tracing::info!("reusing the pretrained model in {}", pdir.display());
    } else {
        let resume = Checkpoint::exists(&ckpt);
        tracing::info!("pretraining into {} ({} steps{})", pdir.display(), cfg.train.steps, if resume { ", resumed" } else { "" });
        pretrain::run(&pcfg, resume)?;
    }
    let mut base = load_base(&ckpt, device)?;
    if base.background.as_ref().map(|b| b.batches) != Some(cfg.background.batches as u64) {
        let bar = crate::util::progress_bar("background", cfg.background.batches);
        let r = build_and_store(&ckpt, &cfg.background, device, |d, _| bar.set_position(d as u64))?;
        bar.finish_and_clear();
        tracing::info!("background index: {} batches, {:.1}% of slots accessed ({:.0} s)", r.batches, 100.0 * r.coverage, r.seconds);
        base = load_base(&ckpt, device)?;
    }
    Ok(base)
}

/// The pretrained model's measures, kept beside the results (`pretrained.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Pretrained {
    pub measures: Measures,
    pub retention_questions: usize,
    pub new_fact_questions: usize,
    pub facts: usize,
}

pub const PRETRAINED_FILE: &str = "pretrained.json";

/// Write `results.md` and `pareto.png` / `.svg` into `out`.
pub fn write_report(out: &Path, results: &[RunResult], pre: &Pretrained, tolerance: f64, seconds: Option<f64>) -> Result<(Summary, String)> {
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
    let pre: Pretrained = serde_json::from_str(&read(PRETRAINED_FILE)?).with_context(|| format!("{}: not valid", out.join(PRETRAINED_FILE).display()))?;
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
    let max_em: Vec<(String, f64)> =
        series.iter().map(|s| (s.clone(), results.iter().filter(|r| &r.variant == s).map(|r| r.new_fact_em).fold(f64::NEG_INFINITY, f64::max))).collect();
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
    md += &format!(
        "## Learning vs forgetting: {} new facts\n\nPretrained model: closed-book QA exact match on held-out pretraining-world facts (bio-only people, {} questions) **{:.1}%** ± {:.1}; held-out loss {:.4}; new-fact QA before learning {:.1}% ({} questions).\n\n",
        pre.facts,
        pre.retention_questions,
        100.0 * before.retention_em,
        100.0 * before.retention_em_stderr,
        before.heldout_loss,
        100.0 * before.new_fact_em,
        pre.new_fact_questions
    );
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
    md += "\nAll runs:\n\n| method | grid | new-fact QA EM | statement EM | retention after | retention drop | held-out loss after | steps | seconds |\n|---|---|---:|---:|---:|---:|---:|---:|---:|\n";
    for r in results {
        md += &format!(
            "| {} | {} | {:.1}% ± {:.1} | {:.1}% | {:.1}% | {:.1}% | {:.4} | {} | {:.1} |\n",
            r.variant,
            compact(&r.grid),
            100.0 * r.new_fact_em,
            100.0 * r.new_fact_em_stderr,
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
    out += &format!("- pretrained model answers held-out pretraining-world QA with ≥ 50% EM: {} ({:.1}%)\n", yes(before.retention_em >= 0.5), 100.0 * before.retention_em);
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
        &PlotSpec { title: &title, x_label: "new-fact QA exact match (%)", y_label: "retention drop on held-out QA (%, lower is better)", series: &series },
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
        assert_eq!(s.best, vec![("sparse-memory".into(), Some(0)), ("lora".into(), Some(3)), ("full".into(), Some(5)), ("sparse-memory (tf)".into(), Some(6))]);
        let before = Measures { retention_em: 0.8, retention_em_stderr: 0.0, heldout_loss: 1.0, new_fact_em: 0.0, new_fact_em_stderr: 0.0, new_fact_statement_em: 0.0 };
        let pre = Pretrained { measures: before, retention_questions: 10, new_fact_questions: 40, facts: 10 };
        let md = render_markdown(&rs, &pre, &s, Some(1.0));
        assert!(md.contains("| sparse-memory | lr=1.0 | 30.0% |"), "{md}");
        // full's best (35%) vs the least-drop sparse-memory run with EM ≥ 30%: 5% vs 40%.
        assert!(md.contains("sparse-memory's retention drop at most one third of its: yes (5.0% at 30.0% new-fact EM vs 40.0% at 35.0%)"), "{md}");
        // lora's best (40%): no sparse-memory run reached 35%.
        assert!(md.contains("learning level of lora's best run: no sparse-memory run learned as much"), "{md}");
        assert!(md.contains("within 10 points of lora's best: yes (30.0% vs 40.0%)"), "{md}");
        assert_eq!(relative_drop(0.5, 0.25), 50.0);
    }
}
