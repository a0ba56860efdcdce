//! Opening a `--model` argument: a memtune checkpoint (with its experiment config, background
//! index and synthetic world) or any other model folder, loaded frozen; the one loader every
//! command uses. And the pretrained model of a config, trained once into a folder named by its
//! hash and reused.

use crate::config::{DataSource, ExperimentConfig};
use crate::data::synthetic::World;
use crate::data::tokenizer::Tokenizer;
use crate::io::checkpoint::Checkpoint;
use crate::io::files::{EXPERIMENT_FILE, MODEL_FILE, TOKENIZER_FILE};
use crate::model::pretrained::{load_model_dir, resolve_model_dir};
use crate::model::{Llama, LlamaConfig, ParamBuilder, ParamStore};
use crate::train::background::{build_and_store, checkpoint_config, stored_index};
use crate::train::pretrain::{self, CHECKPOINT_DIR};
use crate::train::tfidf::{BackgroundIndex, BACKGROUND_DF_NAME};
use crate::util::stable_hash;
use anyhow::Result;
use candle_core::{Device, Tensor};
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A pretrained model loaded to be finetuned.
pub struct Base {
    /// The model folder read.
    pub dir: PathBuf,
    /// The experiment config it was trained with (memtune checkpoints only).
    pub run_cfg: Option<ExperimentConfig>,
    pub model_cfg: LlamaConfig,
    pub store: ParamStore,
    /// The base model over `store` (nothing trainable).
    pub model: Llama,
    pub tokenizer: Tokenizer,
    pub background: Option<BackgroundIndex>,
    /// The synthetic world of its run, when it was trained on one.
    pub world: Option<World>,
}

/// A `--model` argument opened: the folder it stands for (a model folder, a run directory's
/// checkpoint, or a hub-cache snapshot) and, for a memtune run, the experiment it was trained
/// with. Nothing heavy is read until [`ModelDir::load`].
pub struct ModelDir {
    pub dir: PathBuf,
    /// `experiment.toml` of a memtune checkpoint.
    pub experiment: Option<ExperimentConfig>,
    checkpoint: bool,
}

impl ModelDir {
    pub fn open(arg: &Path) -> Result<Self> {
        let dir = resolve_model_dir(arg)?;
        let checkpoint = Checkpoint::exists(&dir);
        let exp = dir.join(EXPERIMENT_FILE);
        let experiment = if exp.exists() { Some(ExperimentConfig::load(Some(&exp), &[])?) } else { None };
        Ok(Self { dir, experiment, checkpoint })
    }

    /// The synthetic world the run was trained on, if it was.
    pub fn world(&self) -> Option<World> {
        self.experiment.as_ref().filter(|c| matches!(c.data.source, DataSource::Synthetic)).map(|c| World::generate(&c.data.world))
    }

    /// The model, frozen, with its tokenizer and (memtune checkpoints) background index and
    /// synthetic world; a checkpoint's optimiser state is not read.
    pub fn load(self, device: &Device) -> Result<Base> {
        let dir = self.dir;
        if !self.checkpoint {
            let m = load_model_dir(&dir, device)?;
            return Ok(Base {
                dir,
                run_cfg: None,
                model_cfg: m.model.cfg.clone(),
                store: m.store,
                model: m.model,
                tokenizer: m.tokenizer,
                background: None,
                world: None,
            });
        }
        let ck = Checkpoint::load_weights(&dir, device)?;
        let cfg = checkpoint_config(&ck)?;
        let background = stored_index(&ck.model, &ck.meta.model_metadata, &dir.join(MODEL_FILE))?;
        let tokenizer = Tokenizer::from_file(dir.join(TOKENIZER_FILE))?;
        let world = matches!(cfg.data.source, DataSource::Synthetic).then(|| World::generate(&cfg.data.world));
        let store = ParamStore::new();
        let tensors: HashMap<String, Tensor> = ck.model.into_iter().filter(|(k, _)| k != BACKGROUND_DF_NAME).collect();
        let model = Llama::new(&cfg.model, &ParamBuilder::from_tensors(&store, tensors, device).with_trainable(|_| false))?;
        Ok(Base { dir, model_cfg: cfg.model.clone(), run_cfg: Some(cfg), store, model, tokenizer, background, world })
    }
}

/// Open and load a model folder (see [`ModelDir`]).
pub fn load_base(dir: &Path, device: &Device) -> Result<Base> {
    ModelDir::open(dir)?.load(device)
}

/// Part of the pretraining hash: bump it when a code change makes old pretrained models stale.
pub const PRETRAIN_FORMAT: &str = "1";

/// The pretraining run folder of a config: `<run.dir>/pretrain-<hash of [model], [train], [data]>`.
pub fn pretrain_dir(cfg: &ExperimentConfig) -> PathBuf {
    fn part<T: Serialize>(v: &T) -> String {
        toml::to_string(v).expect("config sections serialise")
    }
    let h =
        stable_hash(&[part(&cfg.model).as_bytes(), part(&cfg.train).as_bytes(), part(&cfg.data).as_bytes(), PRETRAIN_FORMAT.as_bytes()]);
    Path::new(&cfg.run.dir).join(format!("pretrain-{h:016x}"))
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
        pretrain::run(&pcfg, resume, device)?;
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
