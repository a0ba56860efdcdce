//! Checkpoints: the files of a run directory that resume a run, and that also make the directory
//! a Hugging Face-style model folder.
//!
//! ```text
//! <dir>/model.safetensors      all parameters, HF names, header metadata {"format": "pt", ..}
//! <dir>/optimizer.safetensors  optimiser state tensors (adamw.m.<param>, adamw.step, ...)
//! <dir>/config.json            model config, HF-style
//! <dir>/experiment.toml        the resolved experiment config
//! <dir>/<extra files>          given by the caller, e.g. tokenizer.json
//! <dir>/trainer_state.json     step, data position / RNG state, and the manifest: size of every
//!                              other file (a file truncated or replaced later is reported by name)
//! ```
//! Other files of the run directory (metrics.jsonl, ...) are never touched.
//!
//! Crash safety. Replacing the files one by one, however atomically each, would leave a mix of two
//! checkpoints if the run were killed between two renames. So a save
//! 0. first repairs what an interrupted save left (see below);
//! 1. writes the new checkpoint into `<dir>/.checkpoint-new/` (each file atomically and fsynced,
//!    `trainer_state.json` last: its presence marks the staged checkpoint complete);
//! 2. if there is a checkpoint in `<dir>`, hard-links its files (a copy where links are not
//!    supported) into `.checkpoint-prev-tmp/` and renames that to `<dir>/.checkpoint-prev/`, so the
//!    backup appears complete or not at all, and costs no copying;
//! 3. commits: renames the staged files into `<dir>`, `trainer_state.json` last (the previous
//!    file contents live on through the backup's links);
//! 4. removes `.checkpoint-prev/` and the emptied `.checkpoint-new/`.
//!
//! Invariant: at every instant a complete checkpoint can be read. A kill in steps 0–2 leaves
//! `<dir>`'s files untouched. During step 3 (`.checkpoint-prev/` complete and
//! `.checkpoint-new/trainer_state.json` not yet moved) `<dir>` may hold a mix, and
//! [`Checkpoint::load`] reads the backup, i.e. the previous checkpoint, instead. The next save
//! finishes the interrupted commit (roll forward: the staged files are complete) before starting.
//!
//! This module sits at the ground floor (docs/design.md, "Architecture"), so it takes the model's tensors as a map
//! (`ParamStore::tensors()`) rather than the store itself.

use crate::io::atomic::{sync_dir, write_atomic, write_atomic_with};
use crate::MemtuneError;
use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

pub use super::files::{CONFIG_FILE, EXPERIMENT_FILE, MODEL_FILE, OPTIMIZER_FILE, TRAINER_STATE_FILE};
const FORMAT: &str = "memtune-checkpoint";
const VERSION: u32 = 1;

/// Everything in a checkpoint besides the tensors.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CheckpointMeta {
    /// Optimiser steps completed.
    pub step: usize,
    /// What the trainer needs to resume exactly: data position, RNG state, ... (opaque here).
    pub trainer: serde_json::Value,
    /// The model config, HF-style; written as `config.json`.
    pub model_config: serde_json::Value,
    /// The resolved experiment config; written as `experiment.toml`.
    pub experiment_toml: String,
    /// Header metadata of `model.safetensors` (e.g. the number of background batches behind
    /// `memory.background_df`). `"format": "pt"` is added if absent: Hugging Face
    /// `transformers` refuses safetensors files without it.
    pub model_metadata: BTreeMap<String, String>,
    /// Further files written into the checkpoint, by file name (e.g. `tokenizer.json`).
    pub extra_files: BTreeMap<String, Vec<u8>>,
}

/// A checkpoint read back by [`Checkpoint::load`].
#[derive(Debug)]
pub struct LoadedCheckpoint {
    /// The directory actually read: the one asked for, or its backup `.checkpoint-prev` after a
    /// save was killed while committing.
    pub dir: PathBuf,
    pub model: HashMap<String, Tensor>,
    pub optimizer: HashMap<String, Tensor>,
    pub meta: CheckpointMeta,
}

#[derive(Serialize, Deserialize)]
struct TrainerState {
    format: String,
    version: u32,
    step: usize,
    trainer: serde_json::Value,
    /// File name → size in bytes, for every file of the checkpoint but this one.
    files: BTreeMap<String, u64>,
}

pub struct Checkpoint;

/// Staging directory of a save in progress.
const NEW_DIR: &str = ".checkpoint-new";
/// Backup (hard links) of the checkpoint being replaced, complete whenever it exists.
const PREV_DIR: &str = ".checkpoint-prev";
/// The backup while it is being built.
const PREV_TMP_DIR: &str = ".checkpoint-prev-tmp";

impl Checkpoint {
    /// Write a checkpoint into the run directory `dir` (created if needed), replacing the one
    /// there; see the module comment for why a kill at any point leaves one loadable.
    /// `model`: parameter name → tensor (`ParamStore::tensors()`); `optimizer`:
    /// `Optimizer::state_tensors()`.
    pub fn save(dir: &Path, model: &HashMap<String, Tensor>, optimizer: &HashMap<String, Tensor>, meta: &CheckpointMeta) -> Result<()> {
        save_impl(dir, model, optimizer, meta, &mut |_| Ok(()))
    }

    /// Read the checkpoint in `dir` (the previous one if a save was killed while committing).
    /// Tensors keep their stored dtypes and are placed on `device`. Any missing, truncated or
    /// unreadable file is a `MemtuneError::BadCheckpoint` naming that file.
    pub fn load(dir: &Path, device: &Device) -> Result<LoadedCheckpoint> {
        load_impl(dir, device, true)
    }

    /// As [`Checkpoint::load`], every file checked against the manifest, but the optimiser state
    /// is not read (`optimizer` is empty): for a model that is evaluated or finetuned afresh.
    pub fn load_weights(dir: &Path, device: &Device) -> Result<LoadedCheckpoint> {
        load_impl(dir, device, false)
    }

    /// Whether `dir` holds a checkpoint to resume from.
    pub fn exists(dir: &Path) -> bool {
        resolve(dir).is_ok()
    }
}

fn load_impl(dir: &Path, device: &Device, with_optimizer: bool) -> Result<LoadedCheckpoint> {
    let src = resolve(dir)?;
    let state_path = src.join(TRAINER_STATE_FILE);
    let state = read_state(&state_path)?;
    for f in [MODEL_FILE, OPTIMIZER_FILE, CONFIG_FILE, EXPERIMENT_FILE] {
        if !state.files.contains_key(f) {
            return Err(bad(&state_path, format!("the manifest does not list {f}")));
        }
    }
    for (name, &size) in &state.files {
        let p = src.join(name);
        let actual = fs::metadata(&p).map_err(|e| bad(&p, format!("missing or unreadable: {e}")))?.len();
        if actual != size {
            return Err(bad(&p, format!("is {actual} bytes but was written with {size} (truncated or modified after the save)")));
        }
    }
    let model_path = src.join(MODEL_FILE);
    let model = load_tensors(&model_path, device)?;
    let model_metadata = read_safetensors_metadata(&model_path)?;
    let optimizer = if with_optimizer { load_tensors(&src.join(OPTIMIZER_FILE), device)? } else { HashMap::new() };
    let cfg_path = src.join(CONFIG_FILE);
    let model_config: serde_json::Value = fs::read(&cfg_path)
        .map_err(|e| bad(&cfg_path, format!("cannot read: {e}")))
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| bad(&cfg_path, format!("not valid JSON: {e}"))))?;
    let exp_path = src.join(EXPERIMENT_FILE);
    let experiment_toml = fs::read_to_string(&exp_path).map_err(|e| bad(&exp_path, format!("cannot read: {e}")))?;
    let mut extra_files = BTreeMap::new();
    for name in state.files.keys().filter(|n| !is_core_file(n)) {
        let p = src.join(name);
        extra_files.insert(name.clone(), fs::read(&p).map_err(|e| bad(&p, format!("cannot read: {e}")))?);
    }
    Ok(LoadedCheckpoint {
        dir: src,
        model,
        optimizer,
        meta: CheckpointMeta { step: state.step, trainer: state.trainer, model_config, experiment_toml, model_metadata, extra_files },
    })
}

fn bad(path: &Path, msg: impl Into<String>) -> anyhow::Error {
    MemtuneError::BadCheckpoint { path: path.to_path_buf(), msg: msg.into() }.into()
}

fn is_core_file(name: &str) -> bool {
    [MODEL_FILE, OPTIMIZER_FILE, CONFIG_FILE, EXPERIMENT_FILE, TRAINER_STATE_FILE].contains(&name)
}

fn read_state(path: &Path) -> Result<TrainerState> {
    let text = fs::read_to_string(path).map_err(|e| bad(path, format!("cannot read: {e}")))?;
    let state: TrainerState = serde_json::from_str(&text).map_err(|e| bad(path, format!("not a valid trainer state: {e}")))?;
    if state.format != FORMAT || state.version > VERSION {
        return Err(bad(
            path,
            format!("format {:?} version {} (this build reads {FORMAT:?} up to version {VERSION})", state.format, state.version),
        ));
    }
    Ok(state)
}

/// The directory whose files form the checkpoint to read: `dir`, or the backup while a commit
/// is (or was left) half done.
fn resolve(dir: &Path) -> Result<PathBuf> {
    let prev = dir.join(PREV_DIR);
    if prev.join(TRAINER_STATE_FILE).is_file() && dir.join(NEW_DIR).join(TRAINER_STATE_FILE).is_file() {
        tracing::warn!("{}: a checkpoint save was interrupted while committing; reading the previous checkpoint", dir.display());
        return Ok(prev);
    }
    if dir.join(TRAINER_STATE_FILE).is_file() {
        return Ok(dir.to_path_buf());
    }
    Err(bad(&dir.join(TRAINER_STATE_FILE), "missing: there is no checkpoint here"))
}

/// Bring `dir` back to one complete checkpoint (or none) after an interrupted save.
fn recover(dir: &Path) -> Result<()> {
    let (new, prev, prev_tmp) = (dir.join(NEW_DIR), dir.join(PREV_DIR), dir.join(PREV_TMP_DIR));
    if prev_tmp.exists() {
        // Killed while building the backup: nothing was committed yet.
        fs::remove_dir_all(&prev_tmp).with_context(|| format!("cannot remove {}", prev_tmp.display()))?;
    }
    if new.join(TRAINER_STATE_FILE).is_file() {
        if prev.exists() || !dir.join(TRAINER_STATE_FILE).is_file() {
            // Killed while committing (or before committing, with no old checkpoint to lose):
            // the staged checkpoint is complete, so finish moving it in.
            tracing::warn!("{}: finishing an interrupted checkpoint save", dir.display());
            commit(dir, &mut |_| Ok(()))?;
        } else {
            // Staged but not committed, and no backup of the live one: drop the staged one.
            fs::remove_dir_all(&new).with_context(|| format!("cannot remove {}", new.display()))?;
        }
    }
    if prev.exists() {
        fs::remove_dir_all(&prev).with_context(|| format!("cannot remove {}", prev.display()))?;
    }
    if new.exists() {
        fs::remove_dir_all(&new).with_context(|| format!("cannot remove {}", new.display()))?;
    }
    sync_dir(dir)
}

/// Move the staged files into `dir`, `trainer_state.json` last. Idempotent: files already moved
/// are no longer in the staging directory.
fn commit(dir: &Path, fault: &mut dyn FnMut(&str) -> Result<()>) -> Result<()> {
    let new = dir.join(NEW_DIR);
    let mut names: Vec<String> = fs::read_dir(&new)
        .with_context(|| format!("cannot list {}", new.display()))?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<std::io::Result<_>>()?;
    names.retain(|n| n != TRAINER_STATE_FILE && !n.starts_with('.'));
    names.sort();
    for n in &names {
        fs::rename(new.join(n), dir.join(n)).with_context(|| format!("cannot move {n} into {}", dir.display()))?;
        fault(&format!("commit:{n}"))?;
    }
    sync_dir(dir)?;
    fs::rename(new.join(TRAINER_STATE_FILE), dir.join(TRAINER_STATE_FILE))
        .with_context(|| format!("cannot move {TRAINER_STATE_FILE} into {}", dir.display()))?;
    sync_dir(dir)
}

/// Hard-link (or copy) the live checkpoint's files into a complete backup directory.
fn backup(dir: &Path) -> Result<()> {
    let Ok(live) = read_state(&dir.join(TRAINER_STATE_FILE)) else {
        return Ok(()); // no (readable) checkpoint to preserve
    };
    let (prev, tmp) = (dir.join(PREV_DIR), dir.join(PREV_TMP_DIR));
    fs::create_dir(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    for name in live.files.keys().map(|s| s.as_str()).chain([TRAINER_STATE_FILE]) {
        let (from, to) = (dir.join(name), tmp.join(name));
        if !from.is_file() {
            continue; // already damaged; loading the backup will name it
        }
        if fs::hard_link(&from, &to).is_err() {
            fs::copy(&from, &to).with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
            fs::File::open(&to)?.sync_all()?;
        }
    }
    sync_dir(&tmp)?;
    fs::rename(&tmp, &prev).with_context(|| format!("cannot rename {} to {}", tmp.display(), prev.display()))?;
    sync_dir(dir)
}

/// `fault` is called after each staged file is written (with its name), after the backup
/// ("backup") and after each commit rename ("commit:<name>"); tests make it fail to simulate a
/// kill at that point.
fn save_impl(
    dir: &Path,
    model: &HashMap<String, Tensor>,
    optimizer: &HashMap<String, Tensor>,
    meta: &CheckpointMeta,
    fault: &mut dyn FnMut(&str) -> Result<()>,
) -> Result<()> {
    for name in meta.extra_files.keys() {
        if is_core_file(name) || name.contains('/') || name.contains('\\') || name.starts_with('.') || name.is_empty() {
            anyhow::bail!("checkpoint extra file `{name}`: must be a plain file name other than the checkpoint's own files");
        }
    }
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    recover(dir)?;
    let new = dir.join(NEW_DIR);
    fs::create_dir(&new).with_context(|| format!("cannot create {}", new.display()))?;
    if let Err(e) = write_all_files(&new, model, optimizer, meta, fault) {
        let _ = fs::remove_dir_all(&new);
        return Err(e.context(format!("saving checkpoint in {}", dir.display())));
    }
    backup(dir)?;
    fault("backup")?;
    commit(dir, fault)?;
    for d in [dir.join(PREV_DIR), new] {
        // No backup exists when this save is the first: nothing to remove.
        if let Err(e) = fs::remove_dir_all(&d).or_else(|e| if e.kind() == std::io::ErrorKind::NotFound { Ok(()) } else { Err(e) }) {
            tracing::warn!("checkpoint saved, but {} could not be removed: {e}", d.display());
        }
    }
    Ok(())
}

fn write_all_files(
    tmp: &Path,
    model: &HashMap<String, Tensor>,
    optimizer: &HashMap<String, Tensor>,
    meta: &CheckpointMeta,
    fault: &mut dyn FnMut(&str) -> Result<()>,
) -> Result<()> {
    let mut files = BTreeMap::new();
    let mut record = |name: &str, files: &mut BTreeMap<String, u64>| -> Result<()> {
        let p = tmp.join(name);
        files.insert(name.to_string(), fs::metadata(&p).with_context(|| format!("cannot stat {}", p.display()))?.len());
        fault(name)
    };

    let mut model_meta: HashMap<String, String> = meta.model_metadata.clone().into_iter().collect();
    model_meta.entry("format".into()).or_insert_with(|| "pt".into());
    write_tensors(&tmp.join(MODEL_FILE), model, Some(model_meta))?;
    record(MODEL_FILE, &mut files)?;
    write_tensors(&tmp.join(OPTIMIZER_FILE), optimizer, None)?;
    record(OPTIMIZER_FILE, &mut files)?;
    let cfg = serde_json::to_vec_pretty(&meta.model_config)?;
    write_atomic(&tmp.join(CONFIG_FILE), &cfg)?;
    record(CONFIG_FILE, &mut files)?;
    write_atomic(&tmp.join(EXPERIMENT_FILE), meta.experiment_toml.as_bytes())?;
    record(EXPERIMENT_FILE, &mut files)?;
    for (name, bytes) in &meta.extra_files {
        write_atomic(&tmp.join(name), bytes)?;
        record(name, &mut files)?;
    }
    // Last: its presence marks the directory complete, and it records the sizes above.
    let state = TrainerState { format: FORMAT.into(), version: VERSION, step: meta.step, trainer: meta.trainer.clone(), files };
    write_atomic(&tmp.join(TRAINER_STATE_FILE), &serde_json::to_vec_pretty(&state)?)?;
    fault(TRAINER_STATE_FILE)?;
    sync_dir(tmp)
}

/// A tensor handed to the safetensors writer without copying its data when it is a contiguous
/// CPU tensor (candle's own `View` copies every tensor: +1× a 1M-slot value table at save time).
struct BorrowedView(Tensor);

impl safetensors::View for BorrowedView {
    fn dtype(&self) -> safetensors::Dtype {
        safetensors::View::dtype(&&self.0)
    }
    fn shape(&self) -> &[usize] {
        self.0.dims()
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        let (storage, layout) = self.0.storage_and_layout();
        let bytes = match (&*storage, layout.contiguous_offsets()) {
            (candle_core::Storage::Cpu(cpu), Some((a, b))) => {
                let size = self.0.dtype().size_in_bytes();
                let ptr = match cpu {
                    candle_core::CpuStorage::F32(v) => v[a..b].as_ptr() as *const u8,
                    candle_core::CpuStorage::U32(v) => v[a..b].as_ptr() as *const u8,
                    _ => std::ptr::null(),
                };
                (!ptr.is_null()).then(|| (ptr, (b - a) * size))
            }
            _ => None,
        };
        drop(storage);
        match bytes {
            // SAFETY: `self.0` keeps the storage alive for the borrow, and checkpoints are written
            // between optimiser steps, when nothing mutates parameters or state. Safetensors is
            // little-endian, as are the platforms memtune runs on.
            Some((ptr, len)) => std::borrow::Cow::Borrowed(unsafe { std::slice::from_raw_parts(ptr, len) }),
            None => safetensors::View::data(&&self.0).into_owned().into(),
        }
    }
    fn data_len(&self) -> usize {
        self.0.elem_count() * self.0.dtype().size_in_bytes()
    }
}

/// Write `tensors` (sorted by name) as one safetensors file, atomically, without copying
/// contiguous f32/u32 CPU tensors. Also used by the GGUF import.
pub fn write_tensors(path: &Path, tensors: &HashMap<String, Tensor>, metadata: Option<HashMap<String, String>>) -> Result<()> {
    let mut items: Vec<(&String, BorrowedView)> = tensors.iter().map(|(k, t)| (k, BorrowedView(t.clone()))).collect();
    items.sort_by(|a, b| a.0.cmp(b.0));
    write_atomic_with(path, |tmp| {
        safetensors::serialize_to_file(items, metadata, tmp).with_context(|| format!("cannot write {}", tmp.display()))
    })
}

fn load_tensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    if !path.is_file() {
        return Err(bad(path, "missing"));
    }
    candle_core::safetensors::load(path, device).map_err(|e| bad(path, format!("not a readable safetensors file: {e}")))
}

/// The `__metadata__` of a safetensors header, read without touching the tensor data.
fn read_safetensors_metadata(path: &Path) -> Result<BTreeMap<String, String>> {
    let mut f = fs::File::open(path).map_err(|e| bad(path, format!("cannot open: {e}")))?;
    let mut n = [0u8; 8];
    f.read_exact(&mut n).map_err(|e| bad(path, format!("header: {e}")))?;
    let n = u64::from_le_bytes(n);
    if n > 100 << 20 {
        return Err(bad(path, format!("header of {n} bytes is implausible")));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).map_err(|e| bad(path, format!("header: {e}")))?;
    let v: serde_json::Value = serde_json::from_slice(&header).map_err(|e| bad(path, format!("header is not JSON: {e}")))?;
    let mut out = BTreeMap::new();
    if let Some(m) = v.get("__metadata__").and_then(|m| m.as_object()) {
        for (k, v) in m {
            if let Some(s) = v.as_str() {
                out.insert(k.clone(), s.to_string());
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;

    fn model(scale: f32) -> HashMap<String, Tensor> {
        let mut m = HashMap::new();
        let w: Vec<f32> = (0..12).map(|i| i as f32 * scale - 0.3).collect();
        m.insert("model.layers.0.mlp.up_proj.weight".into(), Tensor::from_vec(w, (3, 4), &Device::Cpu).unwrap());
        m.insert("model.norm.weight".into(), Tensor::new(&[1.0f32, 0.5, f32::MIN_POSITIVE], &Device::Cpu).unwrap());
        m.insert("memory.background_df".into(), Tensor::new(&[0u32, 7, 3], &Device::Cpu).unwrap());
        m
    }

    fn optim(step: u32) -> HashMap<String, Tensor> {
        let mut m = HashMap::new();
        m.insert("adamw.step".into(), Tensor::new(&[step], &Device::Cpu).unwrap());
        m.insert("adamw.m.model.norm.weight".into(), Tensor::new(&[1e-9f32, -2.0, 3.5], &Device::Cpu).unwrap());
        m
    }

    fn meta(step: usize) -> CheckpointMeta {
        CheckpointMeta {
            step,
            trainer: serde_json::json!({"rng": [1, 2, 3], "doc": step * 10}),
            model_config: serde_json::json!({"architectures": ["LlamaForCausalLM"], "hidden_size": 4}),
            experiment_toml: format!("[train]\nsteps = {step}\n"),
            model_metadata: [("background_batches".to_string(), "1000".to_string())].into(),
            extra_files: [("tokenizer.json".to_string(), b"{}".to_vec())].into(),
        }
    }

    fn bits(t: &Tensor) -> Vec<u32> {
        match t.dtype() {
            DType::U32 => t.flatten_all().unwrap().to_vec1::<u32>().unwrap(),
            _ => t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|x| x.to_bits()).collect(),
        }
    }

    fn same_tensors(a: &HashMap<String, Tensor>, b: &HashMap<String, Tensor>) {
        assert_eq!(a.len(), b.len());
        for (k, t) in a {
            let u = &b[k];
            assert_eq!(t.dims(), u.dims(), "{k}");
            assert_eq!(t.dtype(), u.dtype(), "{k}");
            assert_eq!(bits(t), bits(u), "{k}");
        }
    }

    fn bad_path(e: &anyhow::Error) -> PathBuf {
        match e.downcast_ref::<MemtuneError>() {
            Some(MemtuneError::BadCheckpoint { path, .. }) => path.clone(),
            _ => panic!("expected BadCheckpoint, got {e:#}"),
        }
    }

    fn listing(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    /// Save step 2 with a kill injected at `at`; returns the error.
    fn killed_save(dir: &Path, at: &str) -> anyhow::Error {
        save_impl(dir, &model(0.2), &optim(2), &meta(2), &mut |f| if f == at { anyhow::bail!("injected kill at {f}") } else { Ok(()) })
            .unwrap_err()
    }

    fn assert_step1(dir: &Path) {
        let l = Checkpoint::load(dir, &Device::Cpu).unwrap();
        assert_eq!(l.meta.step, 1);
        same_tensors(&l.model, &model(0.1));
        same_tensors(&l.optimizer, &optim(1));
        assert_eq!(l.meta.experiment_toml, meta(1).experiment_toml);
    }

    #[test]
    fn save_load_roundtrip() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("runs").join("x");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("metrics.jsonl"), b"{}\n").unwrap();
        assert!(!Checkpoint::exists(&dir));
        Checkpoint::save(&dir, &model(0.1), &optim(5), &meta(5)).unwrap();
        assert!(Checkpoint::exists(&dir));
        let l = Checkpoint::load(&dir, &Device::Cpu).unwrap();
        assert_eq!(l.dir, dir);
        same_tensors(&l.model, &model(0.1));
        same_tensors(&l.optimizer, &optim(5));
        let mut want = meta(5);
        want.model_metadata.insert("format".into(), "pt".into());
        assert_eq!(l.meta, want);
        // Overwrite with a newer one: other files kept, nothing left behind.
        Checkpoint::save(&dir, &model(0.2), &optim(6), &meta(6)).unwrap();
        let l = Checkpoint::load(&dir, &Device::Cpu).unwrap();
        assert_eq!(l.meta.step, 6);
        same_tensors(&l.model, &model(0.2));
        assert_eq!(
            listing(&dir),
            [
                "config.json",
                "experiment.toml",
                "metrics.jsonl",
                "model.safetensors",
                "optimizer.safetensors",
                "tokenizer.json",
                "trainer_state.json"
            ]
        );
        assert_eq!(fs::read(dir.join("metrics.jsonl")).unwrap(), b"{}\n");
        // Other tools see the model's metadata.
        let bytes = fs::read(dir.join(MODEL_FILE)).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let (_, md) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        assert_eq!(md.metadata().as_ref().unwrap()["format"], "pt");
        assert_eq!(st.len(), 3);
    }

    #[test]
    fn truncated_model_is_reported_by_name() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("ck");
        Checkpoint::save(&dir, &model(0.1), &optim(1), &meta(1)).unwrap();
        let p = dir.join(MODEL_FILE);
        let len = fs::metadata(&p).unwrap().len();
        fs::OpenOptions::new().write(true).open(&p).unwrap().set_len(len - 7).unwrap();
        let e = Checkpoint::load(&dir, &Device::Cpu).unwrap_err();
        assert_eq!(bad_path(&e), p);
        assert!(e.to_string().contains("model.safetensors"), "{e}");
        // Corruption that keeps the size is caught by the safetensors parser.
        let mut bytes = fs::read(&p).unwrap();
        bytes.resize(len as usize, 0);
        bytes[0] = 0xff;
        fs::write(&p, bytes).unwrap();
        let e = Checkpoint::load(&dir, &Device::Cpu).unwrap_err();
        assert_eq!(bad_path(&e), p);
        assert!(e.to_string().contains("model.safetensors"), "{e}");
        // A missing file, a broken trainer state, no checkpoint at all.
        fs::remove_file(dir.join(OPTIMIZER_FILE)).unwrap();
        assert_eq!(bad_path(&Checkpoint::load(&dir, &Device::Cpu).unwrap_err()), dir.join(OPTIMIZER_FILE));
        fs::write(dir.join(TRAINER_STATE_FILE), b"{").unwrap();
        assert_eq!(bad_path(&Checkpoint::load(&dir, &Device::Cpu).unwrap_err()), dir.join(TRAINER_STATE_FILE));
        let none = d.path().join("nothing");
        assert_eq!(bad_path(&Checkpoint::load(&none, &Device::Cpu).unwrap_err()), none.join(TRAINER_STATE_FILE));
    }

    #[test]
    fn kill_while_staging_keeps_previous_checkpoint() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("ck");
        Checkpoint::save(&dir, &model(0.1), &optim(1), &meta(1)).unwrap();
        for at in [MODEL_FILE, OPTIMIZER_FILE, CONFIG_FILE, "tokenizer.json", TRAINER_STATE_FILE, "backup"] {
            killed_save(&dir, at);
            assert_step1(&dir);
        }
        // A real kill leaves a half-written staging directory; the next save clears it.
        fs::create_dir_all(dir.join(NEW_DIR)).unwrap();
        fs::write(dir.join(NEW_DIR).join(MODEL_FILE), b"garbage").unwrap();
        assert_step1(&dir);
        Checkpoint::save(&dir, &model(0.3), &optim(3), &meta(3)).unwrap();
        assert_eq!(Checkpoint::load(&dir, &Device::Cpu).unwrap().meta.step, 3);
        assert!(!dir.join(NEW_DIR).exists() && !dir.join(PREV_DIR).exists());
    }

    #[test]
    fn kill_while_committing_keeps_previous_checkpoint() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("ck");
        Checkpoint::save(&dir, &model(0.1), &optim(1), &meta(1)).unwrap();
        for at in ["commit:config.json", "commit:model.safetensors", "commit:tokenizer.json"] {
            killed_save(&dir, at);
            // The live files are a mix of steps 1 and 2 ...
            if at == "commit:model.safetensors" {
                let live = candle_core::safetensors::load(dir.join(MODEL_FILE), &Device::Cpu).unwrap();
                same_tensors(&live, &model(0.2));
                assert!(fs::read_to_string(dir.join(TRAINER_STATE_FILE)).unwrap().contains("\"step\": 1"));
            }
            // ... so loading reads the backup: the whole previous checkpoint.
            let l = Checkpoint::load(&dir, &Device::Cpu).unwrap();
            assert_eq!(l.dir, dir.join(PREV_DIR));
            assert_step1(&dir);
            assert!(Checkpoint::exists(&dir));
            // The next save first finishes the interrupted commit, then writes its own.
            recover(&dir).unwrap();
            let l = Checkpoint::load(&dir, &Device::Cpu).unwrap();
            assert_eq!((l.meta.step, l.dir.clone()), (2, dir.clone()));
            same_tensors(&l.model, &model(0.2));
            same_tensors(&l.optimizer, &optim(2));
            // Back to step 1 for the next round.
            Checkpoint::save(&dir, &model(0.1), &optim(1), &meta(1)).unwrap();
            assert_step1(&dir);
        }
        killed_save(&dir, "commit:tokenizer.json");
        Checkpoint::save(&dir, &model(0.3), &optim(3), &meta(3)).unwrap();
        assert_eq!(Checkpoint::load(&dir, &Device::Cpu).unwrap().meta.step, 3);
        assert!(!listing(&dir).iter().any(|n| n.starts_with('.')));
    }

    #[test]
    fn killed_first_save_leaves_no_checkpoint_then_recovers() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("ck");
        killed_save(&dir, "commit:model.safetensors");
        assert!(!Checkpoint::exists(&dir));
        Checkpoint::save(&dir, &model(0.1), &optim(1), &meta(1)).unwrap();
        assert_step1(&dir);
    }
}
