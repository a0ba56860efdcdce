//! `memtune pretrain`: train a model from scratch on the synthetic world or a text corpus, with
//! checkpoints that resume bit for bit.

use super::optim::{default_groups, optimizer_from_config, Optimizer};
use super::progress::Progress;
use super::trainer::{dense_names, heldout_loss, StepStats, Trainer};
use super::values::{value_update_from_config, ValueUpdate};
use crate::config::{DataSource, ExperimentConfig};
use crate::data::batches::{BatchSource, DataPosition, SyntheticStream, TextCorpusStream};
use crate::data::synthetic::World;
use crate::data::tokenizer::Tokenizer;
use crate::io::checkpoint::{Checkpoint, CheckpointMeta, OPTIMIZER_FILE};
use crate::io::files::{METRICS_FILE, TOKENIZER_FILE};
use crate::model::memory::{is_addressing_param, is_memory_param};
use crate::model::{Llama, ParamBuilder, ParamStore};
use crate::MemtuneError;
use anyhow::{Context, Result};
use candle_core::Device;
use std::io::Write;
use std::path::{Path, PathBuf};

/// What a finished pretraining run leaves behind.
pub struct PretrainOutcome {
    pub dir: PathBuf,
    pub store: ParamStore,
    pub model: Llama,
    pub tokenizer: Tokenizer,
    pub final_loss: f32,
    pub steps: usize,
}

/// The tokenizer for a run: the configured file, the run directory's, or one trained on the corpus.
pub fn run_tokenizer(cfg: &ExperimentConfig, dir: &Path, world: Option<&World>) -> Result<Tokenizer> {
    let in_run = dir.join(TOKENIZER_FILE);
    let tok = if in_run.exists() {
        Tokenizer::from_file(&in_run)?
    } else if !cfg.data.tokenizer.is_empty() {
        Tokenizer::from_file(Path::new(&cfg.data.tokenizer))?
    } else {
        let texts: Vec<String> = match (cfg.data.source, world) {
            (DataSource::Synthetic, Some(w)) => {
                let mut docs = w.corpus_sample(4000, cfg.train.seed);
                // The reader world's document forms, so that their words get tokens of their own.
                let mut rng = crate::util::rng_for(cfg.train.seed, "reading-corpus");
                docs.extend((0..400).filter_map(|_| cfg.data.reading.document(w, &mut rng)));
                docs
            }
            _ => crate::data::text::read_documents(&cfg.data.text_files)?,
        };
        crate::data::tokenizer::train_bpe(&texts, cfg.model.vocab_size)?
    };
    let path = if cfg.data.tokenizer.is_empty() || in_run.exists() { in_run.clone() } else { PathBuf::from(&cfg.data.tokenizer) };
    tok.check_vocab(cfg.model.vocab_size, &path)?;
    Ok(tok)
}

/// The training stream of a config, positioned at `pos` (a fresh stream when `None`).
pub fn training_stream(
    cfg: &ExperimentConfig,
    world: Option<&World>,
    tok: &Tokenizer,
    seed: u64,
    pos: Option<&DataPosition>,
) -> Result<Box<dyn BatchSource>> {
    let t = &cfg.train;
    Ok(match cfg.data.source {
        DataSource::Synthetic => {
            let w = world.context("synthetic data needs a world")?.clone();
            let s = SyntheticStream::new(w, tok.clone(), seed, cfg.data.qa_fraction, t.batch_size, t.seq_len)?
                .with_reading(&cfg.data.reading)?;
            Box::new(match pos {
                Some(p) => s.from_position(p)?,
                None => s,
            })
        }
        DataSource::Text => {
            let s = TextCorpusStream::new(&cfg.data.text_files, tok.clone(), seed, t.batch_size, t.seq_len)?;
            Box::new(match pos {
                Some(p) => s.from_position(p)?,
                None => s,
            })
        }
    })
}

pub fn make_optimizer(cfg: &ExperimentConfig, store: &ParamStore, names: &[String]) -> Result<Box<dyn Optimizer>> {
    optimizer_from_config(&cfg.train, store, default_groups(store, names, cfg.train.weight_decay))
}

/// Train per `cfg`; with `resume`, continue from the run directory's checkpoint.
pub fn run(cfg: &ExperimentConfig, resume: bool, device: &Device) -> Result<PretrainOutcome> {
    run_until(cfg, resume, None, device)
}

/// As `run`, but stop (after writing a checkpoint) once `stop_after` steps are done: a session
/// can be cut short and resumed later with the same schedule.
pub fn run_until(cfg: &ExperimentConfig, resume: bool, stop_after: Option<usize>, device: &Device) -> Result<PretrainOutcome> {
    let cfg = &with_init_model(cfg)?;
    let dir = PathBuf::from(&cfg.run.dir);
    let ckpt_dir = dir.join(CHECKPOINT_DIR);
    let has_ckpt = Checkpoint::exists(&ckpt_dir);
    if has_ckpt && !resume {
        return Err(MemtuneError::Other(format!(
            "{} already holds a checkpoint; pass --resume to continue it or set run.dir to a new directory",
            dir.display()
        ))
        .into());
    }
    if resume && !has_ckpt {
        return Err(MemtuneError::BadCheckpoint { path: dir.clone(), msg: "--resume given but there is no checkpoint".into() }.into());
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create run directory {}", dir.display()))?;
    let world = matches!(cfg.data.source, DataSource::Synthetic).then(|| World::generate(&cfg.data.world));
    let tok = run_tokenizer(cfg, &dir, world.as_ref())?;
    tok.save(dir.join(TOKENIZER_FILE))?;

    let store = ParamStore::new();
    let (model, optimizer, values, start, pos) = if resume {
        let ck = Checkpoint::load(&ckpt_dir, device)?;
        let model = Llama::new(
            &cfg.model,
            &ParamBuilder::from_tensors(&store, ck.model, device).with_trainable(trainable_filter(cfg)).with_precision(cfg.train.precision),
        )?;
        let mut opt = make_optimizer(cfg, &store, &trainable_names(cfg, &store))?;
        opt.load_state(&ck.optimizer)?;
        let mut values = value_update_from_config(&cfg.model, &cfg.train);
        if let Some(v) = values.as_mut() {
            v.load_state(&ck.optimizer)
                .map_err(|e| MemtuneError::BadCheckpoint { path: ckpt_dir.join(OPTIMIZER_FILE), msg: format!("{e:#}") })?;
        }
        let pos: DataPosition = serde_json::from_value(ck.meta.trainer["data_position"].clone()).map_err(|e| {
            MemtuneError::BadCheckpoint { path: ckpt_dir.clone(), msg: format!("trainer state has no valid data position: {e}") }
        })?;
        (model, opt, values, ck.meta.step, Some(pos))
    } else {
        let model = init_model(cfg, &store, device)?;
        if cfg.init.query_stats_batches > 0 && cfg.model.memory.is_some() {
            let mut calib = training_stream(cfg, world.as_ref(), &tok, cfg.train.seed ^ QUERY_STATS_SEED, None)?;
            for s in super::retrofit::standardize_memory_queries(&model, &store, calib.as_mut(), cfg.init.query_stats_batches)? {
                tracing::info!(
                    "memory layer {}: query standardised against its input over {} tokens (channel std max/min {:.0})",
                    s.layer,
                    s.tokens,
                    s.std_ratio
                );
            }
        }
        let opt = make_optimizer(cfg, &store, &trainable_names(cfg, &store))?;
        (model, opt, value_update_from_config(&cfg.model, &cfg.train), 0, None)
    };
    let mut source = training_stream(cfg, world.as_ref(), &tok, cfg.train.seed, pos.as_ref())?;
    let metrics_path = dir.join(METRICS_FILE);
    truncate_metrics_after(&metrics_path, start)?;
    let mut metrics = std::fs::OpenOptions::new().create(true).append(true).open(&metrics_path)?;

    tracing::info!(
        "pretraining {} parameters for {} steps ({} tokens/step) in {}",
        store.num_elements(),
        cfg.train.steps,
        cfg.train.batch_size * cfg.train.seq_len * cfg.train.grad_accum,
        dir.display()
    );
    // optimizer.safetensors holds the dense optimiser's state and the value update's (their
    // names do not overlap: `adamw.*` / `sgd.*` vs `value_*`).
    let save = |step: usize, opt: &dyn Optimizer, values: Option<&dyn ValueUpdate>, source: &dyn BatchSource| -> Result<()> {
        let meta = CheckpointMeta {
            step,
            trainer: serde_json::json!({ "data_position": source.position() }),
            model_config: cfg.model.to_hf_json(),
            experiment_toml: cfg.to_toml(),
            extra_files: [(TOKENIZER_FILE.to_string(), tok.to_json_bytes()?)].into(),
            ..Default::default()
        };
        let mut state = opt.state_tensors()?;
        if let Some(v) = values {
            state.extend(v.state_tensors()?);
        }
        Checkpoint::save(&ckpt_dir, &store.tensors(), &state, &meta)
    };
    let trainable = trainable_names(cfg, &store);
    let mut trainer = Trainer { model: &model, store: &store, trainable, optimizer, values, cfg: cfg.train.clone() };
    let mut progress = Progress::new("pretrain", start, cfg.train.steps);
    let mut last = StepStats { step: start, loss: f32::NAN, lr: 0.0, grad_norm: 0.0, tokens: 0 };
    let end = stop_after.unwrap_or(cfg.train.steps).min(cfg.train.steps);
    for step in start..end {
        last = trainer.step(source.as_mut(), step)?;
        progress.update(&last);
        let mut line = serde_json::to_value(&last)?;
        if cfg.train.eval_every > 0 && last.step.is_multiple_of(cfg.train.eval_every) {
            let mut held = training_stream(cfg, world.as_ref(), &tok, cfg.train.seed ^ HELDOUT_SEED, None)?;
            line["heldout_loss"] = heldout_loss(&model, held.as_mut(), cfg.train.eval_batches)?.into();
        }
        if last.step.is_multiple_of(cfg.train.log_every.max(1)) || last.step == cfg.train.steps {
            writeln!(metrics, "{line}")?;
        }
        if cfg.train.checkpoint_every > 0 && last.step.is_multiple_of(cfg.train.checkpoint_every) && last.step < end {
            save(last.step, trainer.optimizer.as_ref(), trainer.values.as_deref(), source.as_ref())?;
        }
    }
    progress.finish(&last);
    save(end.max(start), trainer.optimizer.as_ref(), trainer.values.as_deref(), source.as_ref())?;
    drop(trainer);
    Ok(PretrainOutcome { dir, store, model, tokenizer: tok, final_loss: last.loss, steps: end.max(start) })
}

/// The model a run starts from (`cfg` as returned by [`with_init_model`]): random weights from
/// `train.seed`, or those of `[init] model` with the tensors it lacks initialised from that seed;
/// only what `init.trainable` names is trainable.
pub fn init_model(cfg: &ExperimentConfig, store: &ParamStore, device: &Device) -> Result<Llama> {
    let pb = if cfg.init.model.is_empty() {
        ParamBuilder::fresh(store, cfg.train.seed, device)
    } else {
        let base = init_model_dir(cfg)?;
        let tensors = crate::model::params::load_safetensors(&crate::model::pretrained::weight_files(&base)?, device)?;
        tracing::info!(
            "starting from {} ({} tensors; missing ones initialised from seed {})",
            base.display(),
            tensors.len(),
            cfg.train.seed
        );
        ParamBuilder::from_tensors(store, tensors, device).with_init_missing(cfg.train.seed)
    };
    Llama::new(&cfg.model, &pb.with_trainable(trainable_filter(cfg)).with_precision(cfg.train.precision))
}

/// The folder of `[init] model` (a model folder, run directory or cached hf-hub repo id).
pub fn init_model_dir(cfg: &ExperimentConfig) -> Result<PathBuf> {
    let dir = crate::model::pretrained::resolve_model_dir(Path::new(&cfg.init.model))
        .with_context(|| format!("init.model = {:?}", cfg.init.model))?;
    crate::model::pretrained::check_model_dir(&dir).with_context(|| format!("init.model = {:?}", cfg.init.model))?;
    Ok(dir)
}

/// `cfg` with `[init] model` applied: the architecture from the model's `config.json` with the
/// experiment's `[model.memory]`, and its tokenizer (unless `data.tokenizer` names one). Without
/// `[init] model`, `cfg` itself.
pub fn with_init_model(cfg: &ExperimentConfig) -> Result<ExperimentConfig> {
    let mut out = cfg.clone();
    if !cfg.init.model.is_empty() {
        let dir = init_model_dir(cfg)?;
        let base = crate::model::pretrained::load_config(&dir)?;
        if base.memory.is_some() && cfg.model.memory.is_some() && base.memory != cfg.model.memory {
            anyhow::bail!(
                "init.model {} already has a memory layer that differs from [model.memory]; drop [model.memory] to keep it",
                dir.display()
            );
        }
        let memory = cfg.model.memory.clone().or(base.memory.clone());
        out.model = crate::model::LlamaConfig { memory, ..base };
        out.model.validate().map_err(|e| anyhow::anyhow!("init.model {} with [model.memory]: {e}", dir.display()))?;
        let max = out.model.max_position_embeddings;
        anyhow::ensure!(
            cfg.train.seq_len <= max,
            "train.seq_len ({}) exceeds init.model's max_position_embeddings ({max})",
            cfg.train.seq_len
        );
        if cfg.data.tokenizer.is_empty() {
            out.data.tokenizer = dir.join(TOKENIZER_FILE).display().to_string();
        }
    }
    if cfg.init.trainable != crate::config::InitTrainable::All && out.model.memory.as_ref().is_none_or(|m| m.layers.is_empty()) {
        anyhow::bail!("init.trainable = {} needs a memory layer (model.memory.layers)", toml::Value::try_from(cfg.init.trainable)?);
    }
    Ok(out)
}

/// Which parameters train: all, with `init.trainable = "memory"` those of the memory layers, with
/// `"memory-values"` those but the query and keys.
fn trainable_filter(cfg: &ExperimentConfig) -> impl Fn(&str) -> bool + Send + Sync + 'static {
    use crate::config::InitTrainable;
    let mode = cfg.init.trainable;
    move |name: &str| match mode {
        InitTrainable::All => true,
        InitTrainable::Memory => is_memory_param(name),
        InitTrainable::MemoryValues => is_memory_param(name) && !is_addressing_param(name),
    }
}

/// The dense parameters the optimiser owns.
pub fn trainable_names(cfg: &ExperimentConfig, store: &ParamStore) -> Vec<String> {
    let keep = trainable_filter(cfg);
    dense_names(store).into_iter().filter(|n| keep(n)).collect()
}

/// The checkpoint's folder inside a run directory; it is also a loadable model folder.
pub const CHECKPOINT_DIR: &str = "checkpoint";

/// Seed offset of the held-out stream (same distribution, other documents).
pub const HELDOUT_SEED: u64 = 0x5eed_0fff;
/// Seed of the batches a retrofit measures its memory query's input statistics on (`init.query_stats_batches`).
pub const QUERY_STATS_SEED: u64 = 0x5eed_0a11;

/// On resume, drop metric lines of steps after the checkpoint (they will be produced again).
fn truncate_metrics_after(path: &Path, step: usize) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let text = std::fs::read_to_string(path)?;
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| serde_json::from_str::<serde_json::Value>(l).ok().and_then(|v| v["step"].as_u64()).is_some_and(|s| s as usize <= step))
        .collect();
    let body = if kept.is_empty() { String::new() } else { kept.join("\n") + "\n" };
    crate::io::atomic::write_atomic(path, body.as_bytes())
}
