//! Memory retrofit: a trained model without memory gets a parallel memory layer through `[init]`
//! (outputs unchanged at step 0, values with a gradient), continued pretraining on a text corpus
//! trains only the memory (the pretrained weights stay bit-identical) and lowers the loss, and
//! every finetuning method then runs on the result.

mod common;

use candle_core::{Device, Tensor};
use memtune::config::{ExperimentConfig, MethodKind};
use memtune::data::batches::BatchSource;
use memtune::model::memory::is_memory_param;
use memtune::model::pretrained::load_model_dir;
use memtune::model::{ForwardCtx, ParamStore, VALUES_NAME};
use memtune::train::background::build_and_store;
use memtune::train::facts::{facts_for, run_method};
use memtune::train::model_dir::load_base;
use memtune::train::pretrain::{init_model, run, with_init_model};

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|x| x.to_bits()).collect()
}

const MEMORY: [&str; 9] = [
    "model.memory.layers=[1]",
    "model.memory.placement=\"parallel\"",
    "model.memory.n_keys=16",
    "model.memory.heads=2",
    "model.memory.knn=4",
    "model.memory.k_dim=16",
    "model.memory.v_dim=32",
    "model.memory.qk_norm=true",
    "model.memory.value_lr=1e-2",
];

/// The retrofit config: start from `base`, add the memory, train it on the text files.
fn retrofit_config(dir: &std::path::Path, base: &std::path::Path, corpus: &std::path::Path, extra: &[&str]) -> ExperimentConfig {
    let mut sets: Vec<String> = vec![
        format!("run.dir=\"{}\"", dir.display()),
        format!("init.model=\"{}\"", base.display()),
        "init.trainable=\"memory\"".into(),
        "data.source=\"text\"".into(),
        format!("data.text_files=[\"{}\"]", corpus.display()),
        "train.lr=3e-3".into(),
    ];
    sets.extend(MEMORY.iter().map(|s| s.to_string()));
    sets.extend(extra.iter().map(|s| s.to_string()));
    ExperimentConfig::from_toml_str(common::TINY, "configs/tiny-test.toml", &sets).unwrap()
}

/// A trained model without memory (`steps` steps) in `<tmp>/run`, and a text corpus (JSONL) of
/// `docs` documents from the same world.
fn base_and_corpus(
    tmp: &std::path::Path,
    steps: usize,
    docs: usize,
) -> (std::path::PathBuf, memtune::model::pretrained::LoadedModel, memtune::data::synthetic::World, std::path::PathBuf) {
    let base_cfg = common::tiny_config(tmp, &[&format!("train.steps={steps}")]);
    run(&base_cfg, false, &candle_core::Device::Cpu).unwrap();
    let base_dir = tmp.join("run");
    let base = load_model_dir(&base_dir, &Device::Cpu).unwrap();
    let world = memtune::data::synthetic::World::generate(&base_cfg.data.world);
    let corpus = tmp.join("corpus.jsonl");
    let lines: Vec<String> = world.corpus_sample(docs, 1).iter().map(|t| serde_json::json!({ "text": t }).to_string()).collect();
    std::fs::write(&corpus, lines.join("\n")).unwrap();
    (base_dir, base, world, corpus)
}

#[test]
fn retrofit_starts_unchanged_trains_only_the_memory_and_finetunes() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = Device::Cpu;
    let (base_dir, base, world, corpus) = base_and_corpus(tmp.path(), 60, 300);

    // Step 0: the same outputs, bit for bit, and a gradient on the values.
    let cfg = with_init_model(&retrofit_config(&tmp.path().join("retro"), &base_dir, &corpus, &["train.steps=80"])).unwrap();
    assert_eq!(cfg.model.hidden_size, 32, "the architecture comes from the base model's config.json");
    let store = ParamStore::new();
    let model = init_model(&cfg, &store, &dev).unwrap();
    let ids = Tensor::from_vec((0..32u32).map(|i| (i * 7) % 300 + 3).collect::<Vec<_>>(), (2, 16), &dev).unwrap();
    let a = model.forward(&ids, None, &mut ForwardCtx::default()).unwrap();
    let b = base.model.forward(&ids, None, &mut ForwardCtx::default()).unwrap();
    assert_eq!(bits(&a), bits(&b), "a parallel memory must leave the outputs unchanged at step 0");
    let targets = Tensor::from_vec((0..32u32).map(|i| (i * 7 + 1) % 300 + 3).collect::<Vec<_>>(), (2, 16), &dev).unwrap();
    let mut ctx = ForwardCtx::default();
    let grads = model.loss(&ids, &targets, &mut ctx).unwrap().backward().unwrap();
    let gv = grads.get(ctx.memory[0].values.as_tensor()).expect("values have a gradient");
    assert!(gv.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0, "values get no gradient at step 0");
    for (name, var) in store.all() {
        if !is_memory_param(&name) {
            assert!(grads.get(var.as_tensor()).is_none(), "{name} is frozen but has a gradient");
        }
    }

    // Continued pretraining on the text corpus: only the memory moves, the loss falls.
    let out = run(&cfg, false, &candle_core::Device::Cpu).unwrap();
    let losses = common::losses(&tmp.path().join("retro"));
    let head: f32 = losses[..10].iter().map(|x| x.1).sum::<f32>() / 10.0;
    let tail: f32 = losses[losses.len() - 10..].iter().map(|x| x.1).sum::<f32>() / 10.0;
    assert!(tail < head - 0.02, "retrofit loss did not fall: {head:.4} -> {tail:.4}");
    let trained = out.store.tensors();
    for (name, t) in base.store.tensors() {
        assert_eq!(bits(&t), bits(&trained[&name]), "{name}: a pretrained weight changed");
    }
    let gate = &trained["model.layers.1.memory.gate"];
    assert!(bits(gate) != bits(&Tensor::ones(32, candle_core::DType::F32, &dev).unwrap()), "the gate did not learn");
    assert!(trained[VALUES_NAME].abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0, "values did not learn");

    // The retrofitted checkpoint loads on its own and every finetuning method runs on it.
    let retro = tmp.path().join("retro");
    let bg = memtune::config::BackgroundConfig { batches: 20, ..Default::default() };
    build_and_store(&retro, &bg, &dev, |_, _| {}).unwrap();
    let loaded = load_base(&retro, &dev).unwrap();
    let mut held = memtune::data::batches::TextCorpusStream::new(&cfg.data.text_files, loaded.tokenizer.clone(), 5, 2, 16).unwrap();
    let batch = held.next_batch().unwrap();
    let (x, _) = batch.to_tensors(&dev).unwrap();
    let la = loaded.model.forward(&x, None, &mut ForwardCtx::default()).unwrap();
    let lb = out.model.forward(&x, None, &mut ForwardCtx::default()).unwrap();
    assert_eq!(bits(&la), bits(&lb), "the saved retrofit differs from the trained one");
    for m in MethodKind::ALL {
        let mut ft = cfg.finetune.clone();
        ft.method = m;
        ft.facts = 3;
        ft.paraphrases = 2;
        let facts = facts_for(&ft, loaded.world.as_ref().or(Some(&world))).unwrap();
        let (_, outcome) = run_method(&loaded, &ft, &facts, |_, _| {}).unwrap();
        assert_eq!(outcome.steps, 3, "{m:?}");
        assert!(outcome.mean_first_loss.is_finite() && outcome.mean_last_loss.is_finite(), "{m:?}");
    }
}

/// `init.trainable = "memory-values"` with `init.query_stats_batches`: the query projection is
/// standardised once before training and then, like the keys, never moves; values, W1, W2 and the
/// gate train; the pretrained weights stay bit-identical.
#[test]
fn memory_values_retrofit_standardises_the_query_then_keeps_the_addressing_fixed() {
    let tmp = tempfile::tempdir().unwrap();
    let (base_dir, base, _, corpus) = base_and_corpus(tmp.path(), 20, 100);
    let retrofit = |name: &str, steps: usize, stats: usize| {
        let extra =
            [format!("train.steps={steps}"), "init.trainable=\"memory-values\"".into(), format!("init.query_stats_batches={stats}")];
        let extra: Vec<&str> = extra.iter().map(|s| s.as_str()).collect();
        let cfg = with_init_model(&retrofit_config(&tmp.path().join(name), &base_dir, &corpus, &extra)).unwrap();
        run(&cfg, false, &candle_core::Device::Cpu).unwrap().store.tensors()
    };
    let raw = retrofit("raw", 1, 0);
    let short = retrofit("short", 1, 2);
    let long = retrofit("long", 10, 2);
    let (q, k) = ("model.layers.1.memory.query.weight", "model.layers.1.memory.keys");
    assert_ne!(bits(&raw[q]), bits(&short[q]), "the query was not standardised");
    for n in [q, "model.layers.1.memory.query.bias", k] {
        assert_eq!(bits(&short[n]), bits(&long[n]), "{n} trained under memory-values");
    }
    assert_eq!(bits(&raw[k]), bits(&long[k]));
    for n in ["model.layers.1.memory.out.weight", "model.layers.1.memory.gate", VALUES_NAME] {
        assert_ne!(bits(&short[n]), bits(&long[n]), "{n} did not train");
    }
    for (name, t) in base.store.tensors() {
        assert_eq!(bits(&t), bits(&long[&name]), "{name}: a pretrained weight changed");
    }
}
