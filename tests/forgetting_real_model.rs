//! `memtune bench forgetting --model DIR --facts FILE`: the real-model path end to end on the HF
//! tiny-llama fixture, retrofitted here with a parallel memory: every method runs on a facts file
//! with real retention probes (known facts, held-out text perplexity, a BIG-bench-format
//! multiple-choice task); nothing is written into the model folder; bad facts files and a model
//! without memory give named errors before any training.

use std::path::{Path, PathBuf};
use std::process::Command;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/hf-tiny-llama");

fn memtune(args: &[String]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_memtune")).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn args(parts: &[&str], sets: &[String]) -> Vec<String> {
    let mut a: Vec<String> = parts.iter().map(|s| s.to_string()).collect();
    for s in sets {
        a.push("--set".into());
        a.push(s.clone());
    }
    a
}

const WORDS: [&str; 12] =
    ["river", "stone", "garden", "violet", "harbor", "lantern", "meadow", "copper", "falcon", "winter", "orchard", "canyon"];

/// Text, facts, QA and multiple-choice files in the documented formats.
fn write_data(dir: &Path) -> (PathBuf, PathBuf, PathBuf, PathBuf) {
    let corpus = dir.join("corpus.jsonl");
    let lines: Vec<String> =
        (0..40).map(|i| serde_json::json!({ "text": format!("The {} near the {} was {} in {}.", WORDS[i % 12], WORDS[(i * 5 + 1) % 12], WORDS[(i * 7 + 2) % 12], 1900 + i) }).to_string()).collect();
    std::fs::write(&corpus, lines.join("\n")).unwrap();
    let facts = dir.join("facts.jsonl");
    let lines: Vec<String> = (0..3)
        .map(|i| {
            let (a, b) = (WORDS[i], WORDS[i + 6]);
            serde_json::json!({ "subject": a, "statements": [format!("The {a} is kept by {b}."), format!("{b} keeps the {a}.")], "question": format!("Who looks after the {a}?"), "answers": [b] }).to_string()
        })
        .collect();
    std::fs::write(&facts, lines.join("\n")).unwrap();
    let known = dir.join("known.jsonl");
    std::fs::write(
        &known,
        (0..6)
            .map(|i| serde_json::json!({ "question": format!("What is {}?", WORDS[i]), "answers": [WORDS[i + 1]] }).to_string())
            .collect::<Vec<_>>()
            .join("\n"),
    )
    .unwrap();
    let choice = dir.join("choice.json");
    let ex: Vec<serde_json::Value> = (0..8).map(|i| serde_json::json!({ "input": format!("Where is the {}?", WORDS[i]), "target_scores": { WORDS[i + 1]: 1, WORDS[i + 2]: 0, WORDS[i + 3]: 0 } })).collect();
    std::fs::write(&choice, serde_json::json!({ "examples": ex }).to_string()).unwrap();
    (corpus, facts, known, choice)
}

fn probe_sets(known: &Path, corpus: &Path, choice: &Path, out: &Path) -> Vec<String> {
    vec![
        format!("forgetting.probes.known_facts_file=\"{}\"", known.display()),
        format!("forgetting.probes.text_files=[\"{}\"]", corpus.display()),
        "forgetting.probes.text_docs=10".into(),
        "forgetting.probes.text_tokens=32".into(),
        format!("forgetting.probes.choice_file=\"{}\"", choice.display()),
        "forgetting.probes.choice_examples=0".into(),
        "background.batches=10".into(),
        "finetune.facts=0".into(),
        "finetune.paraphrases=2".into(),
        "forgetting.grid.sparse_memory.lr=[1.0]".into(),
        "forgetting.grid.sparse_memory.top_t=[8]".into(),
        "forgetting.grid.sparse_memory.steps_per_fact=[1]".into(),
        "forgetting.grid.lora.lr=[1e-3]".into(),
        "forgetting.grid.lora.steps_per_fact=[2]".into(),
        "forgetting.grid.full.lr=[1e-4]".into(),
        "forgetting.grid.full.steps_per_fact=[1]".into(),
        "forgetting.grid.full.replay=[1]".into(),
        "forgetting.grid.full.epochs=[2]".into(),
        "forgetting.extra=[]".into(),
        format!("forgetting.out=\"{}\"", out.display()),
    ]
}

fn tree_bytes(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(tree_bytes(&p));
        } else {
            out.push((p.clone(), std::fs::read(&p).unwrap()));
        }
    }
    out.sort();
    out
}

#[test]
fn real_model_path_runs_every_method_with_real_probes_and_writes_nothing_into_the_model() {
    let tmp = tempfile::tempdir().unwrap();
    let (corpus, facts, known, choice) = write_data(tmp.path());
    // Retrofit the fixture as configs/smollm2-retrofit.toml does: a parallel memory beside block 1,
    // its query standardised, then trained without query and keys for a few steps.
    let retro = tmp.path().join("retro");
    let sets: Vec<String> = [
        format!("run.dir=\"{}\"", retro.display()),
        format!("init.model=\"{FIXTURE}\""),
        "init.trainable=\"memory-values\"".into(),
        "init.query_stats_batches=2".into(),
        "data.source=\"text\"".into(),
        format!("data.text_files=[\"{}\"]", corpus.display()),
        "model.memory.layers=[1]".into(),
        "model.memory.placement=\"parallel\"".into(),
        "model.memory.n_keys=16".into(),
        "model.memory.heads=2".into(),
        "model.memory.knn=4".into(),
        "model.memory.k_dim=16".into(),
        "model.memory.v_dim=32".into(),
        "train.steps=5".into(),
        "train.batch_size=2".into(),
        "train.seq_len=32".into(),
    ]
    .into();
    let (ok, _, err) = memtune(&args(&["pretrain", "--config", "configs/tiny-test.toml"], &sets));
    assert!(ok, "retrofit failed: {err}");
    let before = tree_bytes(&retro);

    let out = tmp.path().join("bench");
    let bench = |model: &Path, facts: &Path| {
        // --quick: the preset's overrides apply first, the test's own (tiny) ones win.
        let a = args(
            &[
                "bench",
                "forgetting",
                "--config",
                "configs/forgetting-smollm2.toml",
                "--quick",
                "--model",
                model.to_str().unwrap(),
                "--facts",
                facts.to_str().unwrap(),
            ],
            &probe_sets(&known, &corpus, &choice, &out),
        );
        memtune(&a)
    };
    let (ok, stdout, err) = bench(&retro, &facts);
    assert!(ok, "bench failed: {err}");
    assert_eq!(tree_bytes(&retro), before, "the benchmark wrote into the model folder");
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(out.join("results.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let methods: Vec<&str> = lines.iter().map(|l| l["method"].as_str().unwrap()).collect();
    assert_eq!(methods, ["sparse-memory", "lora", "full"]);
    for l in &lines {
        for k in ["plasticity_em", "plasticity_contains", "new_fact_f1", "new_fact_contains"] {
            assert!(l[k].as_f64().is_some_and(|x| (0.0..=1.0).contains(&x)), "{k} in {l}");
        }
        let (pb, pa) = (l["perplexity_before"].as_f64().unwrap(), l["perplexity_after"].as_f64().unwrap());
        assert!(pb > 1.0 && pa > 1.0 && pb.is_finite() && pa.is_finite(), "{l}");
        assert!(l["choice_acc_before"].as_f64().is_some() && l["choice_acc_after"].as_f64().is_some(), "{l}");
        assert_eq!(l["facts"].as_u64(), Some(3));
    }
    // Epochs and replay: full's stream is 2 epochs x (3 facts + 2 replays) = 10 steps.
    assert_eq!(lines[2]["steps"].as_u64(), Some(10), "{}", lines[2]);
    // Full finetuning changed the model: its held-out perplexity moved.
    assert_ne!(lines[2]["perplexity_before"], lines[2]["perplexity_after"]);
    assert!(
        stdout.contains("Held-out text perplexity")
            && stdout.contains("Multiple choice (log-likelihood)")
            && stdout.contains("right after each fact"),
        "{stdout}"
    );
    assert!(out.join("pareto.png").exists() && out.join("pareto.svg").exists());

    // A fact without a question: named by file and line, before any training.
    let bad = tmp.path().join("bad.jsonl");
    let text = std::fs::read_to_string(&facts).unwrap();
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    lines[1] = serde_json::json!({ "subject": "x", "statements": ["The x is y."] }).to_string();
    std::fs::write(&bad, lines.join("\n")).unwrap();
    let (ok, _, err) = bench(&retro, &bad);
    assert!(!ok && err.contains("bad.jsonl:2") && err.contains("no \"question\""), "{err}");
    // A malformed line and a missing field.
    std::fs::write(&bad, format!("{}\n{{not json\n", lines[0])).unwrap();
    let (ok, _, err) = bench(&retro, &bad);
    assert!(!ok && err.contains("bad.jsonl:2") && err.contains("not JSON"), "{err}");
    std::fs::write(&bad, serde_json::json!({ "question": "q?", "answers": ["a"] }).to_string()).unwrap();
    let (ok, _, err) = bench(&retro, &bad);
    assert!(!ok && err.contains("bad.jsonl:1") && err.contains("statements"), "{err}");
    // A model without memory: sparse memory finetuning says how to retrofit one.
    let (ok, _, err) = bench(Path::new(FIXTURE), &facts);
    assert!(!ok && err.contains("no memory layer") && err.contains("retrofit"), "{err}");
}
