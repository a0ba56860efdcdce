//! Learning a list of facts with one method, the pipeline `memtune finetune`, the forgetting
//! benchmark and the tests share: the facts a config names, the questions that test them, the
//! stream of updates, and the finetuned model written as a model folder or PEFT adapter.

use super::methods::{finetune_stream, prepare, FinetuneOutcome, Finetuned};
use super::model_dir::Base;
use super::tfidf::{BACKGROUND_BATCHES_KEY, BACKGROUND_DF_NAME};
use super::trainer::StepStats;
use crate::config::{ExperimentConfig, FinetuneConfig, MethodKind};
use crate::data::facts::{read_facts_jsonl, world_facts, Fact};
use crate::data::qa::QaItem;
use crate::data::synthetic::World;
use crate::io::checkpoint::{Checkpoint, CheckpointMeta};
use crate::io::files::TOKENIZER_FILE;
use crate::model::lora::{merge_into_base, save_peft};
use crate::model::Llama;
use anyhow::{Context, Result};
use std::collections::HashMap;
use std::path::Path;

/// The facts `ft` asks for: from `ft.facts_file`, or the world's new people.
pub fn facts_for(ft: &FinetuneConfig, world: Option<&World>) -> Result<Vec<Fact>> {
    if !ft.facts_file.is_empty() {
        return read_facts_jsonl(Path::new(&ft.facts_file), ft.facts);
    }
    let w = world.context("no facts: set finetune.facts_file (the model was not trained on the synthetic world)")?;
    anyhow::ensure!(
        !w.new_people.is_empty(),
        "the synthetic world has no new people (data.world.n_new_people = 0); set finetune.facts_file"
    );
    Ok(world_facts(w, ft.facts, ft.paraphrases, ft.seed))
}

/// QA items testing `facts`: the first `per_fact` questions of each (all when 0).
pub fn fact_items(facts: &[Fact], per_fact: usize) -> Vec<QaItem> {
    facts
        .iter()
        .flat_map(|f| {
            let n = if per_fact == 0 { f.questions.len() } else { per_fact.min(f.questions.len()) };
            f.questions[..n].iter().map(|q| QaItem { question: q.question.clone(), answers: q.answers.clone() })
        })
        .collect()
}

/// Finetune a copy of `base` on `facts` with `ft.method`; `on_step(stats, total_steps)`.
pub fn run_method(
    base: &Base,
    ft: &FinetuneConfig,
    facts: &[Fact],
    on_step: impl FnMut(&StepStats, usize),
) -> Result<(Finetuned, FinetuneOutcome)> {
    run_method_stream(base, ft, facts, on_step, |_, _| Ok(()))
}

/// As [`run_method`]; `after_first(i, model)` runs right after fact i is first learned.
pub fn run_method_stream(
    base: &Base,
    ft: &FinetuneConfig,
    facts: &[Fact],
    mut on_step: impl FnMut(&StepStats, usize),
    after_first: impl FnMut(usize, &Llama) -> Result<()>,
) -> Result<(Finetuned, FinetuneOutcome)> {
    let batches = facts.iter().map(|f| f.batch(&base.tokenizer, ft.paraphrases)).collect::<Result<Vec<_>>>()?;
    let p = prepare(ft, &base.model_cfg, &base.store, base.background.as_ref(), base.model.device())?;
    let total = p.stream.schedule(batches.len()).len() * p.stream.steps_per_fact;
    finetune_stream(p, batches, |s| on_step(s, total), after_first)
}

/// Write a finetuned model under `out`: LoRA → `out/adapter/` (PEFT layout), plus with `merge`
/// the merged model in `out/checkpoint/`; other methods → `out/checkpoint/` (a model folder that
/// keeps the base's background index).
pub fn save_finetuned(base: &Base, cfg: &ExperimentConfig, tuned: &Finetuned, out: &Path, merge: bool) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut tensors = if tuned.method == MethodKind::Lora {
        let lc = cfg.finetune.lora.lora();
        save_peft(&tuned.store, &lc, &base.dir.display().to_string(), &out.join("adapter"))?;
        if !merge {
            return Ok(());
        }
        // Merged on a copy-on-write view: `tuned` stays the adapted model.
        let store = tuned.store.copy_on_write(|_| false)?;
        merge_into_base(&store, &lc)?;
        store.tensors()
    } else {
        tuned.store.tensors()
    };
    let mut meta = CheckpointMeta {
        step: 0,
        trainer: serde_json::json!({ "finetune": { "method": tuned.method.name(), "base": base.dir.display().to_string() } }),
        model_config: base.model_cfg.to_hf_json(),
        experiment_toml: {
            let mut c = base.run_cfg.clone().unwrap_or_else(|| cfg.clone());
            c.model = base.model_cfg.clone();
            c.finetune = cfg.finetune.clone();
            c.to_toml()
        },
        extra_files: [(TOKENIZER_FILE.to_string(), base.tokenizer.to_json_bytes()?)].into(),
        ..Default::default()
    };
    if let Some(ix) = &base.background {
        tensors.insert(BACKGROUND_DF_NAME.to_string(), ix.to_tensor()?);
        meta.model_metadata.insert(BACKGROUND_BATCHES_KEY.to_string(), ix.batches.to_string());
    }
    Checkpoint::save(&out.join(crate::train::pretrain::CHECKPOINT_DIR), &tensors, &HashMap::new(), &meta)
}
