//! `memtune bench forgetting --quick`, shrunk further to a tiny model so that it runs in seconds:
//! every artefact is written (results.jsonl with the documented fields, results.md, the Pareto
//! plot as PNG and SVG), and a second run reuses the pretrained model.

use std::process::Command;

/// Overrides that shrink the quick preset to configs/tiny-memory-test.toml's model and world.
const TINY: &[&str] = &[
    "model.vocab_size=384",
    "model.hidden_size=64",
    "model.intermediate_size=128",
    "model.num_hidden_layers=2",
    "model.max_position_embeddings=64",
    "model.memory.layers=[1]",
    "model.memory.n_keys=32",
    "model.memory.heads=2",
    "model.memory.knn=8",
    "model.memory.k_dim=32",
    "model.memory.v_dim=64",
    "train.steps=60",
    "train.batch_size=8",
    "train.seq_len=64",
    "train.warmup_steps=10",
    "data.world.n_qa_people=30",
    "data.world.n_bio_only_people=30",
    "data.world.n_new_people=4",
    "data.world.n_seal_people=0",
    "background.batches=30",
    "finetune.facts=6",
    "forgetting.retention_questions=24",
    "forgetting.heldout_batches=2",
];

fn bench(dir: &std::path::Path) -> (bool, String, String) {
    let mut args: Vec<String> = vec!["bench".into(), "forgetting".into(), "--quick".into()];
    for s in TINY.iter().map(|s| s.to_string()).chain([format!("run.dir=\"{}\"", dir.display())]) {
        args.push("--set".into());
        args.push(s);
    }
    let out = Command::new(env!("CARGO_BIN_EXE_memtune")).args(&args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn quick_forgetting_benchmark_writes_results_table_and_plot() {
    let d = tempfile::tempdir().unwrap();
    let (ok, out, err) = bench(d.path());
    assert!(ok, "{err}");
    let res = d.path().join("forgetting-quick");
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(res.join("results.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let cfg = memtune::bench::forgetting::load_config(None, true, &TINY.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    let runs = cfg.forgetting.runs(&cfg.finetune).unwrap();
    assert_eq!(lines.len(), runs.len());
    let methods: std::collections::BTreeSet<&str> = lines.iter().map(|l| l["method"].as_str().unwrap()).collect();
    assert_eq!(methods.into_iter().collect::<Vec<_>>(), ["full", "lora", "sparse-memory"]);
    for l in &lines {
        for k in ["new_fact_em", "retention_em_before", "retention_em_after", "heldout_loss_before", "heldout_loss_after", "seconds"] {
            assert!(l[k].as_f64().is_some_and(f64::is_finite), "{k} missing in {l}");
        }
        assert_eq!(l["steps"].as_u64(), Some(6 * l["hparams"]["steps_per_fact"].as_u64().unwrap()), "{l}");
        assert!(l["hparams"]["lr"].as_f64().is_some(), "{l}");
        assert_eq!(l["facts"], 6);
    }
    let md = std::fs::read_to_string(res.join("results.md")).unwrap();
    assert!(md.contains("Best run per method at matched learning") && md.contains("| sparse-memory |"), "{md}");
    assert!(out.contains("Best run per method") && out.contains("pareto.png"), "{out}");
    let png = std::fs::read(res.join("pareto.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert!(std::fs::read_to_string(res.join("pareto.svg")).unwrap().contains("<svg"));
    // The pretrained model (and its background index) is reused by config hash: its checkpoint
    // is not written again.
    let pre: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with("pretrain-"))
        .collect();
    assert_eq!(pre.len(), 1, "{pre:?}");
    let model = pre[0].join("checkpoint/model.safetensors");
    let stamp = || std::fs::metadata(&model).unwrap().modified().unwrap();
    let t = stamp();
    let (ok, _, err) = bench(d.path());
    assert!(ok, "{err}");
    assert_eq!(stamp(), t, "the pretrained checkpoint was written again");
    // `memtune demo` is this quick benchmark: it reuses the same pretrained model too.
    let mut args: Vec<String> = vec!["demo".into()];
    for s in TINY.iter().map(|s| s.to_string()).chain([format!("run.dir=\"{}\"", d.path().display())]) {
        args.push("--set".into());
        args.push(s);
    }
    let out = Command::new(env!("CARGO_BIN_EXE_memtune")).args(&args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("Best run per method") && stdout.contains("pareto.png"), "{stdout}");
    assert_eq!(stamp(), t, "the demo pretrained again");
}
