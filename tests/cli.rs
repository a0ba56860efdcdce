//! The command line on a tiny trained run: score, eval, generate, data synth, tokenizer train,
//! and the error path (non-zero exit, message on stderr).

mod common;
use common::tiny_config;
use std::process::Command;

fn memtune(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_memtune")).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn score_eval_and_generate_on_a_trained_run() {
    let d = tempfile::tempdir().unwrap();
    let cfg = tiny_config(d.path(), &["train.steps=5"]);
    memtune::train::pretrain::run(&cfg, false, &candle_core::Device::Cpu).unwrap();
    let run = d.path().join("run");
    let run = run.to_str().unwrap();

    let (ok, out, err) = memtune(&["score", "--model", run, "--text", "Q: Where was Ada born? A: Paris", "--text", "hello"]);
    assert!(ok, "{err}");
    let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    for l in &lines {
        let n = l["tokens"].as_array().unwrap().len();
        assert!(n > 0);
        let lp: Vec<f64> = l["logprobs"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        assert_eq!(lp.len(), n);
        assert!(lp.iter().all(|x| *x <= 0.0));
        let total: f64 = lp.iter().sum();
        assert!((l["total_logprob"].as_f64().unwrap() - total).abs() < 1e-3);
        assert!((l["perplexity"].as_f64().unwrap() - (-total / n as f64).exp()).abs() < 1e-2);
    }

    let (ok, out, err) = memtune(&["eval", "--model", run, "--split", "bio-only", "--limit", "7"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["n"], 7);
    assert!((0.0..=1.0).contains(&v["em"].as_f64().unwrap()));

    let (ok, _out, err) = memtune(&["generate", "--model", run, "--prompt", "Q: Where", "--max-new-tokens", "4"]);
    assert!(ok, "{err}");
}

#[test]
fn data_synth_and_tokenizer_train_write_files() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("world");
    let (ok, _, err) = memtune(&["data", "synth", "--config", "configs/tiny-test.toml", "--out", out.to_str().unwrap()]);
    assert!(ok, "{err}");
    for f in ["people.jsonl", "bios.jsonl", "qa.jsonl"] {
        assert!(std::fs::metadata(out.join(f)).unwrap().len() > 0, "{f}");
    }
    let tok = d.path().join("tok.json");
    let bios = out.join("bios.jsonl");
    let (ok, _, err) =
        memtune(&["tokenizer", "train", "--input", bios.to_str().unwrap(), "--vocab-size", "300", "--out", tok.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert_eq!(memtune::data::tokenizer::Tokenizer::from_file(&tok).unwrap().vocab_size(), 300);
}

#[test]
fn bad_input_exits_non_zero_with_a_named_error() {
    let (ok, _, err) = memtune(&["pretrain", "--config", "configs/tiny-test.toml", "--set", "train.bogus=1"]);
    assert!(!ok);
    assert!(err.contains("train.bogus") && err.contains("configs/tiny-test.toml"), "{err}");
    let (ok, _, err) = memtune(&["score", "--model", "/nonexistent/model", "--text", "x"]);
    assert!(!ok);
    assert!(err.contains("/nonexistent/model"), "{err}");
    // --device: a bad name is refused as the config key it sets, before any work.
    let (ok, _, err) = memtune(&["pretrain", "--config", "configs/tiny-test.toml", "--device", "tpu"]);
    assert!(!ok && err.contains("run.device") && err.contains("`tpu`"), "{err}");
}

/// A CPU-only binary asked for a GPU says so and how to build one, on every kind of command.
#[cfg(not(feature = "cuda"))]
#[test]
fn cpu_build_refuses_a_gpu_device_by_name() {
    for args in [
        &["pretrain", "--config", "configs/tiny-test.toml", "--device", "cuda:0"][..],
        &["bench", "memory", "--n-keys", "8", "--device", "cuda"],
        &["bench", "forgetting", "--quick", "--device", "cuda:1", "--set", "run.dir=\"/nonexistent-memtune-run\""],
        &["score", "--model", "/nonexistent/model", "--text", "x", "--device", "cuda:0"],
    ] {
        let (ok, _, err) = memtune(args);
        assert!(!ok && err.contains("built without CUDA") && err.contains("--features cuda"), "{args:?}: {err}");
    }
}

#[test]
fn inspect_and_bench_memory_report_json() {
    let d = tempfile::tempdir().unwrap();
    let run = d.path().join("run");
    let (ok, _, err) = memtune(&[
        "pretrain",
        "--config",
        "configs/tiny-memory-test.toml",
        "--set",
        "train.steps=3",
        "--set",
        &format!("run.dir=\"{}\"", run.display()),
    ]);
    assert!(ok, "{err}");
    let (ok, out, err) = memtune(&["inspect", "--model", run.to_str().unwrap(), "--batches", "2", "--top", "3"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["n_slots"], 1024);
    assert_eq!(v["layers"].as_array().unwrap().len(), 1);
    let f = v["pooled"]["fraction_used"].as_f64().unwrap();
    assert!(f > 0.0 && f <= 1.0, "{f}");
    assert_eq!(v["pooled"]["top_slots"].as_array().unwrap().len(), 3);
    let (ok, _, err) = memtune(&["inspect", "--model", "runs/does-not-exist", "--batches", "1"]);
    assert!(!ok && err.contains("does-not-exist"), "{err}");

    let (ok, out, err) = memtune(&[
        "bench",
        "memory",
        "--n-keys",
        "8,16",
        "--tokens",
        "16",
        "--d-model",
        "16",
        "--heads",
        "2",
        "--knn",
        "4",
        "--k-dim",
        "8",
        "--v-dim",
        "8",
        "--warmup",
        "0",
        "--reps",
        "1",
    ]);
    assert!(ok, "{err}");
    let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["slots"], 256);
    assert!(lines[0]["ratio_to_first"].as_f64().unwrap() == 1.0);
    assert!(lines.iter().all(|l| l["value_read_gb_per_s"].as_f64().is_some_and(|g| g > 0.0)), "{out}");
    assert!(
        lines.iter().all(|l| l["layer_fwd_gb_per_s"].as_f64().is_some_and(|g| g > 0.0) && l["value_read_ms"].as_f64().is_some()),
        "{out}"
    );
}
