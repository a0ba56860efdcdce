//! Finetuning methods on a tiny pretrained memory model (configs/tiny-memory-test.toml):
//! - sparse memory finetuning changes only the top-t value rows, everything else bit-identical,
//!   and tfidf / tf / random / all pick different rows; padding never counts as an access;
//! - LoRA leaves the base bit-identical and writes PEFT files;
//! - full finetuning changes the dense weights and, lazily, only the value rows the batch read;
//! - finetuning raises accuracy on the new facts;
//! - `memtune background` stores the index in the checkpoint; `memtune finetune` runs end to end.

use candle_core::{Device, Tensor};
use memtune::config::{ExperimentConfig, MethodKind, Ranking, SparseOptimizer, TopT};
use memtune::data::facts::Fact;
use memtune::eval::qa::statement_completion;
use memtune::model::{access_counts, ForwardCtx, VALUES_NAME};
use memtune::train::background::build_and_store;
use memtune::train::facts::{facts_for, run_method};
use memtune::train::model_dir::{load_base, Base};
use memtune::train::tfidf::{BACKGROUND_BATCHES_KEY, BACKGROUND_DF_NAME};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const TINY_MEMORY: &str = include_str!("../configs/tiny-memory-test.toml");

/// One tiny memory model per test binary: pretrained for 300 steps, background index of 200
/// batches stored in its checkpoint.
fn pretrained() -> &'static Path {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &DIR.get_or_init(|| {
        let d = tempfile::tempdir().unwrap();
        let run = d.path().join("run");
        let cfg = ExperimentConfig::from_toml_str(
            TINY_MEMORY,
            "tiny-memory-test.toml",
            &[format!("run.dir=\"{}\"", run.display()), "train.steps=300".into()],
        )
        .unwrap();
        memtune::train::pretrain::run(&cfg, false, &candle_core::Device::Cpu).unwrap();
        let bg = memtune::config::BackgroundConfig { batches: 200, ..Default::default() };
        let r = build_and_store(&run, &bg, &Device::Cpu, |_, _| {}).unwrap();
        assert_eq!(r.batches, 200);
        (d, run)
    })
    .1
}

fn base() -> Base {
    load_base(pretrained(), &Device::Cpu).unwrap()
}

fn cfg(sets: &[&str]) -> ExperimentConfig {
    ExperimentConfig::from_toml_str(TINY_MEMORY, "tiny-memory-test.toml", &sets.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|x| x.to_bits()).collect()
}

/// Rows of the value table that differ between two snapshots.
fn changed_rows(a: &Tensor, b: &Tensor) -> Vec<u32> {
    let (n, d) = a.dims2().unwrap();
    let (a, b) = (bits(a), bits(b));
    (0..n).filter(|r| a[r * d..(r + 1) * d] != b[r * d..(r + 1) * d]).map(|r| r as u32).collect()
}

/// Every parameter but the value table is bit-identical between `base` and `store`.
fn dense_identical(base: &Base, store: &memtune::model::ParamStore) -> Vec<String> {
    base.store
        .names()
        .into_iter()
        .filter(|n| n != VALUES_NAME)
        .filter(|n| bits(base.store.get(n).unwrap().as_tensor()) != bits(store.get(n).unwrap().as_tensor()))
        .collect()
}

/// The slots real (non-padding) tokens of a fact's batch read, each sequence run alone.
fn slots_read_alone(base: &Base, fact: &Fact, paraphrases: usize) -> Vec<u32> {
    let eos = base.tokenizer.eos_id();
    let mut all = std::collections::BTreeSet::new();
    for i in 0..paraphrases {
        let mut s = vec![eos];
        s.extend(base.tokenizer.encode(&fact.statements[i % fact.statements.len()]).unwrap());
        let input = Tensor::from_vec(s[..].to_vec(), (1, s.len()), &Device::Cpu).unwrap();
        let mut ctx = ForwardCtx::default();
        base.model.forward(&input, None, &mut ctx).unwrap();
        all.extend(access_counts(&ctx.memory).slots);
    }
    all.into_iter().collect()
}

#[test]
fn sparse_memory_updates_only_the_top_t_rows_and_rankings_differ() {
    let base = base();
    assert!(base.background.as_ref().is_some_and(|b| b.batches == 200));
    let values0 = base.store.get(VALUES_NAME).unwrap().as_tensor().copy().unwrap();
    let c = cfg(&["finetune.facts=1", "finetune.paraphrases=4"]);
    let facts = facts_for(&c.finetune, base.world.as_ref()).unwrap();
    let read = slots_read_alone(&base, &facts[0], 4);
    let t = 10;
    let mut picks = vec![];
    for ranking in [Ranking::Tfidf, Ranking::Tf, Ranking::Random] {
        let mut ft = c.finetune.clone();
        ft.sparse_memory.ranking = ranking;
        ft.sparse_memory.top_t = TopT(Some(t));
        let (tuned, out) = run_method(&base, &ft, &facts, |_, _| {}).unwrap();
        assert_eq!(out.steps, 1);
        assert!(dense_identical(&base, &tuned.store).is_empty(), "{ranking:?}: dense weights changed");
        let rows = changed_rows(&values0, tuned.store.get(VALUES_NAME).unwrap().as_tensor());
        assert_eq!(rows.len(), t, "{ranking:?}: {rows:?}");
        assert!(rows.iter().all(|r| read.contains(r)), "{ranking:?} updated a row no real token read");
        picks.push(rows);
    }
    assert_ne!(picks[0], picks[1], "tfidf and tf picked the same rows");
    assert_ne!(picks[0], picks[2], "tfidf and random picked the same rows");
    assert_ne!(picks[1], picks[2], "tf and random picked the same rows");
    // Adam instead of SGD: the same rows (the selection comes first), moved differently.
    let mut ft = c.finetune.clone();
    ft.sparse_memory.top_t = TopT(Some(t));
    ft.sparse_memory.optimizer = SparseOptimizer::Adam;
    ft.sparse_memory.lr = 1e-2;
    let (adam, _) = run_method(&base, &ft, &facts, |_, _| {}).unwrap();
    assert!(dense_identical(&base, &adam.store).is_empty(), "adam: dense weights changed");
    let adam_values = adam.store.get(VALUES_NAME).unwrap().as_tensor().copy().unwrap();
    assert_eq!(changed_rows(&values0, &adam_values), picks[0], "adam must update the rows tfidf picks");
    // Adam's first step moves every element of a picked row by ~lr, whatever the gradient's scale.
    let delta =
        (&adam_values - &values0).unwrap().abs().unwrap().index_select(&Tensor::new(&picks[0][..], &Device::Cpu).unwrap(), 0).unwrap();
    let delta: Vec<f32> = delta.flatten_all().unwrap().to_vec1().unwrap();
    let near_lr = delta.iter().filter(|&&x| (x - 1e-2).abs() < 1e-3).count();
    assert!(near_lr * 10 > delta.len() * 9, "adam's first step: only {near_lr} of {} elements moved by ~lr", delta.len());
    // t = all: exactly the slots real tokens read (padding excluded), each sequence run alone.
    let mut ft = c.finetune.clone();
    ft.sparse_memory.top_t = TopT(None);
    let (tuned, _) = run_method(&base, &ft, &facts, |_, _| {}).unwrap();
    let rows = changed_rows(&values0, tuned.store.get(VALUES_NAME).unwrap().as_tensor());
    assert_eq!(rows, read, "t = all must update every slot real tokens read, and no other");
    assert!(rows.len() > t);
    // The base itself is untouched (each run works on a copy).
    assert_eq!(bits(&values0), bits(base.store.get(VALUES_NAME).unwrap().as_tensor()));
}

#[test]
fn lora_leaves_the_base_bit_identical_and_saves_peft_files() {
    let base = base();
    let c = cfg(&["finetune.method=\"lora\"", "finetune.facts=3", "finetune.lora.rank=4", "finetune.lora.targets=[\"q\", \"v\", \"up\"]"]);
    let facts = facts_for(&c.finetune, base.world.as_ref()).unwrap();
    let (tuned, out) = run_method(&base, &c.finetune, &facts, |_, _| {}).unwrap();
    assert_eq!(out.steps, 3);
    for n in base.store.names() {
        assert_eq!(bits(base.store.get(&n).unwrap().as_tensor()), bits(tuned.store.get(&n).unwrap().as_tensor()), "{n} changed");
    }
    let b = tuned.store.get("model.layers.0.self_attn.q_proj.lora_B.weight").unwrap();
    assert!(b.as_tensor().abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0, "adapters did not train");
    let ids = base.tokenizer.encode("Q: Where was").unwrap();
    let n = ids.len();
    let x = Tensor::from_vec(ids, (1, n), &Device::Cpu).unwrap();
    let la = tuned.model.forward(&x, None, &mut ForwardCtx::inference()).unwrap();
    let d = tempfile::tempdir().unwrap();
    memtune::train::facts::save_finetuned(&base, &c, &tuned, d.path(), true).unwrap();
    let saved = candle_core::safetensors::load(d.path().join("adapter/adapter_model.safetensors"), &Device::Cpu).unwrap();
    // 2 layers × (q, v) + layer 0's MLP (layer 1's MLP is the memory layer, which has no `up_proj`).
    assert_eq!(saved.len(), 2 * (2 * 2 + 1));
    assert!(saved.contains_key("base_model.model.model.layers.1.self_attn.v_proj.lora_A.weight"));
    let conf: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.path().join("adapter/adapter_config.json")).unwrap()).unwrap();
    assert_eq!((conf["r"].as_u64(), conf["peft_type"].as_str()), (Some(4), Some("LORA")));
    // The merged model folder loads and computes what the adapted model did.
    let merged = memtune::model::pretrained::load_model_dir(&d.path().join("checkpoint"), &Device::Cpu).unwrap();
    let lb = merged.model.forward(&x, None, &mut ForwardCtx::inference()).unwrap();
    let err = (la - lb).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(err < 1e-3, "merged model differs by {err}");
}

#[test]
fn full_finetuning_updates_dense_weights_and_values_lazily() {
    let base = base();
    let values0 = base.store.get(VALUES_NAME).unwrap().as_tensor().copy().unwrap();
    let c = cfg(&["finetune.method=\"full\"", "finetune.facts=1", "finetune.paraphrases=4", "finetune.full.lr=1e-3"]);
    let facts = facts_for(&c.finetune, base.world.as_ref()).unwrap();
    let read = slots_read_alone(&base, &facts[0], 4);
    let (tuned, _) = run_method(&base, &c.finetune, &facts, |_, _| {}).unwrap();
    let changed = dense_identical(&base, &tuned.store);
    assert!(changed.iter().any(|n| n.contains("self_attn.q_proj")) && changed.iter().any(|n| n.contains("memory.query")), "{changed:?}");
    let rows = changed_rows(&values0, tuned.store.get(VALUES_NAME).unwrap().as_tensor());
    assert_eq!(rows, read, "lazy AdamW must move exactly the rows real tokens read");
}

#[test]
fn finetuning_raises_new_fact_accuracy() {
    let base = base();
    // A weak model (d 64, 300 steps): each of 4 facts is trained on 10 times; the measure is
    // statement completion on the facts' own statements (0 before for every method).
    let settings: [(MethodKind, &[&str]); 3] = [
        (
            MethodKind::SparseMemory,
            &["finetune.sparse_memory.lr=300", "finetune.sparse_memory.top_t=400", "finetune.sparse_memory.steps_per_fact=10"],
        ),
        (MethodKind::Lora, &["finetune.lora.lr=1e-2", "finetune.lora.steps_per_fact=10"]),
        (MethodKind::Full, &["finetune.full.lr=1e-3", "finetune.full.steps_per_fact=10"]),
    ];
    for (m, sets) in settings {
        let mut all = vec!["finetune.facts=4".to_string(), format!("finetune.method=\"{}\"", m.name())];
        all.extend(sets.iter().map(|s| s.to_string()));
        let c = ExperimentConfig::from_toml_str(TINY_MEMORY, "t", &all).unwrap();
        let facts = facts_for(&c.finetune, base.world.as_ref()).unwrap();
        let before = statement_completion(&base.model, &base.tokenizer, &facts).unwrap();
        let (tuned, out) = run_method(&base, &c.finetune, &facts, |_, _| {}).unwrap();
        let after = statement_completion(&tuned.model, &base.tokenizer, &facts).unwrap();
        assert!(out.mean_last_loss < out.mean_first_loss, "{m:?}: loss did not fall on the facts");
        assert!(after.em >= before.em + 0.06, "{m:?}: statement completion {:.3} -> {:.3}", before.em, after.em);
    }
}

#[test]
fn finetuning_with_bf16_matmuls_learns_and_leaves_frozen_masters_bit_identical() {
    // Sparse memory under `finetune.precision = "bf16"`: the frozen dense weights are only ever
    // cast, never written; top-t rows still move; the facts are still learned.
    let base = base();
    let values0 = base.store.get(VALUES_NAME).unwrap().as_tensor().copy().unwrap();
    let c = cfg(&[
        "finetune.facts=4",
        "finetune.precision=\"bf16\"",
        "finetune.sparse_memory.lr=300",
        "finetune.sparse_memory.top_t=400",
        "finetune.sparse_memory.steps_per_fact=10",
    ]);
    let facts = facts_for(&c.finetune, base.world.as_ref()).unwrap();
    let before = statement_completion(&base.model, &base.tokenizer, &facts).unwrap();
    let (tuned, out) = run_method(&base, &c.finetune, &facts, |_, _| {}).unwrap();
    assert!(dense_identical(&base, &tuned.store).is_empty(), "bf16 finetuning wrote a frozen dense weight");
    let rows = changed_rows(&values0, tuned.store.get(VALUES_NAME).unwrap().as_tensor());
    assert!(!rows.is_empty() && rows.len() <= 4 * 400, "{} rows changed", rows.len());
    let after = statement_completion(&tuned.model, &base.tokenizer, &facts).unwrap();
    assert!(out.mean_last_loss < out.mean_first_loss, "bf16: loss did not fall on the facts");
    assert!(after.em >= before.em + 0.06, "bf16: statement completion {:.3} -> {:.3}", before.em, after.em);
    let mut f32_ft = c.finetune.clone();
    f32_ft.precision = memtune::config::Precision::F32;
    let f32_run = run_method(&base, &f32_ft, &facts, |_, _| {});
    assert_ne!(f32_run.unwrap().1.mean_first_loss, out.mean_first_loss, "finetune.precision = bf16 changed nothing");
}

#[test]
fn background_index_is_stored_in_the_checkpoint() {
    let ck = memtune::io::checkpoint::Checkpoint::load(&pretrained().join("checkpoint"), &Device::Cpu).unwrap();
    let df = &ck.model[BACKGROUND_DF_NAME];
    assert_eq!((df.dtype(), df.dims()), (candle_core::DType::U32, &[1024usize][..]));
    assert_eq!(ck.meta.model_metadata[BACKGROUND_BATCHES_KEY], "200");
    let df: Vec<u32> = df.to_vec1().unwrap();
    assert!(df.iter().all(|&d| d <= 200) && df.iter().filter(|&&d| d > 0).count() > 512);
}

fn memtune(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_memtune")).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn background_and_finetune_commands() {
    let d = tempfile::tempdir().unwrap();
    let run = d.path().join("run");
    let cfgs = ["--config", "configs/tiny-memory-test.toml"];
    let (ok, _, err) = memtune(
        &[&["pretrain"][..], &cfgs[..], &["--set", "train.steps=5", "--set", &format!("run.dir=\"{}\"", run.display())]].concat()[..],
    );
    assert!(ok, "{err}");
    let r = run.to_str().unwrap();
    // sparse-memory with tfidf before the index exists: a clear error.
    let (ok, _, err) = memtune(&["finetune", "--model", r, "--method", "sparse-memory", "--set", "finetune.facts=2"]);
    assert!(!ok && err.contains("memtune background"), "{err}");
    let (ok, out, err) = memtune(&["background", "--model", r, "--set", "background.batches=10"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!((v["batches"].as_u64(), v["slots"].as_u64()), (Some(10), Some(1024)));
    for m in ["sparse-memory", "lora", "full"] {
        let (ok, out, err) =
            memtune(&["finetune", "--model", r, "--method", m, "--set", "finetune.facts=3", "--set", "finetune.paraphrases=2"]);
        assert!(ok, "{m}: {err}");
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!((v["method"].as_str(), v["steps"].as_u64()), (Some(m), Some(3)), "{out}");
        assert_eq!(v["new_fact_after"]["n"], 12);
        let dir = PathBuf::from(v["out"].as_str().unwrap());
        let file = if m == "lora" { "adapter/adapter_model.safetensors" } else { "checkpoint/model.safetensors" };
        assert!(dir.join(file).exists(), "{m}: no {file} in {}", dir.display());
    }
    let (ok, _, err) = memtune(&["finetune", "--model", r, "--method", "sparse-memory", "--set", "finetune.sparse_memory.top_t=\"some\""]);
    assert!(!ok && err.contains("top_t"), "{err}");
}

#[test]
fn batched_qa_gives_the_sequential_answers() {
    let base = base();
    let w = base.world.as_ref().unwrap();
    let items = memtune::eval::qa::sample_items(memtune::eval::qa::world_items(w, memtune::data::synthetic::Split::Qa), 60, 0);
    let (a, pa) = memtune::eval::qa::evaluate(&base.model, &base.tokenizer, &items).unwrap();
    let (b, pb) = memtune::eval::qa::evaluate_batched(&base.model, &base.tokenizer, &items).unwrap();
    assert_eq!(pa, pb);
    assert_eq!((a.n, a.em), (b.n, b.em));
}

#[test]
fn finetune_config_errors_name_the_key() {
    let err = |sets: &[&str]| {
        ExperimentConfig::from_toml_str(TINY_MEMORY, "t.toml", &sets.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap_err()
            .to_string()
    };
    let c = cfg(&["finetune.sparse_memory.top_t=\"all\"", "finetune.sparse_memory.ranking=\"random\""]);
    assert_eq!((c.finetune.sparse_memory.top_t, c.finetune.sparse_memory.ranking), (TopT(None), Ranking::Random));
    assert!(err(&["finetune.sparse_memory.top_t=0"]).contains("finetune.sparse_memory.top_t"));
    assert!(err(&["finetune.sparse_memory.ranking=\"idf\""]).contains("finetune.sparse_memory.ranking"));
    assert!(err(&["finetune.lora.bogus=1"]).contains("finetune.lora.bogus"));
    assert!(err(&["finetune.lora.targets=[\"qq\"]"]).contains("finetune.lora"));
    assert!(err(&["finetune.method=\"dense\""]).contains("finetune.method"));
    assert!(err(&["finetune.precision=\"fp16\""]).contains("finetune.precision"));
    assert!(err(&["train.precision=\"f64\""]).contains("train.precision"));
    assert!(err(&["finetune.full.steps_per_fact=0"]).contains("finetune.full.steps_per_fact"));
    assert!(err(&["background.batches=0"]).contains("background.batches"));
    // Grids: every combination, in order; unknown keys and bad values name the grid key.
    let c = cfg(&[
        "forgetting.methods=[\"sparse-memory\", \"lora\"]",
        "forgetting.grid.sparse_memory.lr=[10, 30]",
        "forgetting.grid.sparse_memory.top_t=[50, \"all\"]",
        "forgetting.grid.lora.rank=[4]",
    ]);
    let runs = c.forgetting.runs(&c.finetune).unwrap();
    assert_eq!(runs.len(), 5);
    assert_eq!(runs[1].method, MethodKind::SparseMemory);
    assert_eq!((runs[1].finetune.sparse_memory.lr, runs[1].finetune.sparse_memory.top_t), (10.0, TopT(None)));
    assert_eq!((runs[4].method, runs[4].finetune.lora.rank, runs[4].finetune.method), (MethodKind::Lora, 4, MethodKind::Lora));
    assert!(err(&["forgetting.grid.lora.rnak=[4]"]).contains("forgetting.grid.lora.rnak"));
    let c = cfg(&["forgetting.methods=[\"full\"]", "forgetting.extra=[{method = \"sparse-memory\", ranking = \"tf\"}]"]);
    let runs = c.forgetting.runs(&c.finetune).unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!((runs[1].method, runs[1].finetune.sparse_memory.ranking), (MethodKind::SparseMemory, Ranking::Tf));
    assert!(err(&["forgetting.extra=[{method = \"lora\", rank = 0}]"]).contains("forgetting.extra[0]"));
    assert!(err(&["forgetting.extra=[{ranking = \"tf\"}]"]).contains("forgetting.extra[0].method"));
    assert!(err(&["forgetting.grid.full.lr=[\"fast\"]"]).contains("forgetting.grid.full.lr"));
}
