//! Bad input gives named errors and loses nothing: config keys, tokenizer/model vocabulary,
//! missing and corrupt checkpoints, a diverging loss.

mod common;
use common::tiny_config;
use memtune::config::ExperimentConfig;
use memtune::io::checkpoint::Checkpoint;
use memtune::train::pretrain;
use memtune::MemtuneError;

fn err_of<T>(r: anyhow::Result<T>) -> anyhow::Error {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e,
    }
}

#[test]
fn unknown_config_key_names_key_and_file() {
    let e = err_of(ExperimentConfig::from_toml_str("[train]\nlrr = 0.1\n", "exp.toml", &[]));
    let msg = e.to_string();
    assert!(matches!(e.downcast_ref::<MemtuneError>(), Some(MemtuneError::UnknownConfigKey { .. })), "{msg}");
    assert!(msg.contains("train.lrr") && msg.contains("exp.toml"), "{msg}");
    let e = err_of(ExperimentConfig::from_toml_str("", "exp.toml", &["model.hiden_size=3".into()]));
    assert!(e.to_string().contains("model.hiden_size"), "{e}");
    let e = err_of(ExperimentConfig::from_toml_str("[bogus]\nx = 1\n", "exp.toml", &[]));
    assert!(e.to_string().contains("bogus"), "{e}");
}

#[test]
fn ill_typed_config_value_names_key_and_file() {
    let e = err_of(ExperimentConfig::from_toml_str("[train]\nlr = \"fast\"\n", "exp.toml", &[]));
    let msg = e.to_string();
    assert!(msg.contains("train.lr") && msg.contains("exp.toml"), "{msg}");
    let e = err_of(ExperimentConfig::from_toml_str("[train]\noptimizer = \"adam\"\n", "exp.toml", &[]));
    assert!(e.to_string().contains("train.optimizer"), "{e}");
    let e = err_of(ExperimentConfig::from_toml_str("[model]\nhidden_size = 30\nnum_attention_heads = 4\n", "exp.toml", &[]));
    assert!(e.to_string().contains("hidden_size"), "{e}");
    let e = err_of(ExperimentConfig::from_toml_str("[data.reading]\nopen_book_fraction = 0.7\nrestate_fraction = 0.7\n", "exp.toml", &[]));
    assert!(e.to_string().contains("data.reading.restate_fraction") && e.to_string().contains("exp.toml"), "{e}");
    let e = err_of(ExperimentConfig::from_toml_str("[data.reading]\nrestate_prompt = \"Facts:\"\n", "exp.toml", &[]));
    assert!(e.to_string().contains("data.reading.restate_prompt"), "{e}");
}

#[test]
fn tokenizer_vocab_mismatch_fails_before_training() {
    let d = tempfile::tempdir().unwrap();
    let tok = memtune::data::tokenizer::train_bpe(["some text about people and places"; 4], 300).unwrap();
    let tok_path = d.path().join("tok.json");
    tok.save(&tok_path).unwrap();
    let cfg = tiny_config(d.path(), &[&format!("data.tokenizer=\"{}\"", tok_path.display())]);
    let e = err_of(pretrain::run(&cfg, false, &candle_core::Device::Cpu));
    assert!(matches!(e.downcast_ref::<MemtuneError>(), Some(MemtuneError::VocabMismatch { .. })), "{e}");
    assert!(e.to_string().contains("300") && e.to_string().contains("384"), "{e}");
    assert!(!Checkpoint::exists(&d.path().join("run/checkpoint")), "nothing may be trained");
}

#[test]
fn missing_and_corrupt_checkpoints_are_clear_errors_and_nothing_is_overwritten() {
    let d = tempfile::tempdir().unwrap();
    let cfg = tiny_config(d.path(), &["train.steps=3"]);
    // --resume with nothing to resume
    let e = err_of(pretrain::run(&cfg, true, &candle_core::Device::Cpu));
    assert!(e.to_string().contains("no checkpoint"), "{e}");
    // a finished run is not silently overwritten
    pretrain::run(&cfg, false, &candle_core::Device::Cpu).unwrap();
    let e = err_of(pretrain::run(&cfg, false, &candle_core::Device::Cpu));
    assert!(e.to_string().contains("--resume"), "{e}");
    // truncate the weights: resuming names the file and leaves it as it was
    let model = d.path().join("run/checkpoint/model.safetensors");
    let bytes = std::fs::read(&model).unwrap();
    std::fs::write(&model, &bytes[..bytes.len() / 2]).unwrap();
    let resumed = tiny_config(d.path(), &["train.steps=6"]);
    let e = err_of(pretrain::run(&resumed, true, &candle_core::Device::Cpu));
    assert!(matches!(e.downcast_ref::<MemtuneError>(), Some(MemtuneError::BadCheckpoint { .. })), "{e}");
    assert!(e.to_string().contains("model.safetensors"), "{e}");
    assert_eq!(std::fs::read(&model).unwrap(), &bytes[..bytes.len() / 2], "the checkpoint was touched");
    // loading a model folder that lacks files lists them
    let empty = d.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let e = err_of(memtune::model::pretrained::load_model_dir(&empty, &candle_core::Device::Cpu).map(|_| ()));
    assert!(e.to_string().contains("config.json") && e.to_string().contains("tokenizer.json"), "{e}");
}

#[test]
fn diverging_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint() {
    let d = tempfile::tempdir().unwrap();
    let good = tiny_config(d.path(), &["train.steps=4"]);
    pretrain::run(&good, false, &candle_core::Device::Cpu).unwrap();
    let model = d.path().join("run/checkpoint/model.safetensors");
    let before = std::fs::read(&model).unwrap();
    // resume with an absurd learning rate: weights blow up and the loss is no longer finite
    let bad = tiny_config(d.path(), &["train.steps=30", "train.lr=1e30", "train.grad_clip=0", "train.checkpoint_every=0"]);
    let e = err_of(pretrain::run(&bad, true, &candle_core::Device::Cpu));
    match e.downcast_ref::<MemtuneError>() {
        Some(MemtuneError::NonFiniteLoss { step, .. }) => assert!(*step > 4, "step {step}"),
        _ => panic!("expected NonFiniteLoss, got {e}"),
    }
    assert!(e.to_string().contains("step"), "{e}");
    let ck = Checkpoint::load(&d.path().join("run/checkpoint"), &candle_core::Device::Cpu).unwrap();
    let vals: Vec<f32> = ck.model["lm_head.weight"].flatten_all().unwrap().to_vec1().unwrap();
    assert!(vals.iter().all(|v| v.is_finite()), "the kept checkpoint must be a good one");
    assert_eq!(ck.meta.step, 4);
    assert_eq!(std::fs::read(&model).unwrap(), before, "the last good checkpoint was touched");
}

/// Every config shipped in configs/ parses (no unknown or ill-typed key) and its model validates.
#[test]
fn every_shipped_config_loads() {
    let mut n = 0;
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/configs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let cfg = memtune::config::ExperimentConfig::load(Some(&path), &[]).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
            if cfg.init.model.is_empty() {
                cfg.model.validate().unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            }
            n += 1;
        }
    }
    assert!(n >= 10, "only {n} configs found");
}

#[test]
fn checkpoints_memtune_would_compute_differently_are_refused_by_name() {
    use candle_core::{Device, Tensor};
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("model");
    std::fs::create_dir_all(&dir).unwrap();
    let src = std::path::Path::new("tests/fixtures/hf-tiny-llama");
    for f in ["config.json", "tokenizer.json", "model.safetensors"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let load = || err_of(memtune::model::pretrained::load_model_dir(&dir, &Device::Cpu).map(|_| ()));
    // A weight the decoder has no place for (Qwen3-style q norm).
    let mut tensors = candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    tensors.insert("model.layers.0.self_attn.q_norm.weight".into(), Tensor::ones(16, candle_core::DType::F32, &Device::Cpu).unwrap());
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
    let e = load();
    assert!(e.to_string().contains("model.layers.0.self_attn.q_norm.weight") && e.to_string().contains("model"), "{e}");
    std::fs::copy(src.join("model.safetensors"), dir.join("model.safetensors")).unwrap();
    // RoPE scaling is refused, naming the key and the file.
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    cfg["rope_scaling"] = serde_json::json!({"rope_type": "yarn", "factor": 8.0});
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let e = load();
    assert!(e.to_string().contains("rope_scaling.rope_type") && e.to_string().contains("config.json"), "{e}");
}
