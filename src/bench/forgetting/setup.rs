//! What a benchmark runs on: the model, its facts and its probes, from the synthetic world or
//! from a model folder and facts file.

use super::{Heldout, Probes};
use crate::bench::probes::text_and_choice;
use crate::config::{ExperimentConfig, MethodKind};
use crate::data::facts::Fact;
use crate::data::synthetic::Split;
use crate::eval::qa::{sample_items, world_items};
use crate::train::facts::{fact_items, facts_for};
use crate::train::model_dir::{load_base, pretrained_base, Base};
use crate::train::pretrain::{training_stream, HELDOUT_SEED};
use anyhow::{Context, Result};
use candle_core::Device;
use std::path::Path;

/// What a benchmark runs on: the base model, the facts it learns, the probes, and notes on the
/// setup for the report.
pub(super) type Setup = (Base, Vec<Fact>, Probes, Vec<String>);

/// The synthetic world's benchmark: the model pretrained on it, the world's new people as facts,
/// its bio-only people's QA as retention and its held-out stream (plus any `[forgetting.probes]`
/// multiple-choice task).
pub(super) fn world_setup(cfg: &ExperimentConfig, device: &Device) -> Result<Setup> {
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
pub(super) fn model_setup(cfg: &ExperimentConfig, device: &Device) -> Result<Setup> {
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
    let (facts, dropped) = crate::bench::probes::unknown_facts(&base.model, &base, all)?;
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
    let (known, asked) = crate::bench::probes::known_facts(&base.model, &base, p, cfg.train.seed)?;
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
