//! `--model org/name` finds a model in the local Hugging Face hub cache (no network): a fake
//! cache built from the committed fixtures, laid out as `huggingface_hub` lays it out (files in
//! `blobs/`, links in `snapshots/<commit>/`, the commit in `refs/main`), one repo with a single
//! `model.safetensors` and one sharded with `model.safetensors.index.json`. Loading from the
//! cache gives the folder's model; what is missing is listed with where it was looked for.

use candle_core::{Device, Tensor};
use memtune::model::pretrained::{load_model_dir, resolve_model_dir_in, LoadedModel};
use memtune::model::ForwardCtx;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const LLAMA: &str = "tests/fixtures/hf-tiny-llama";
const QWEN2: &str = "tests/fixtures/hf-tiny-qwen2";
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// Put `name` with `bytes` into the repo's snapshot as a link to a blob, as the hub cache does.
fn put(repo: &Path, name: &str, bytes: &[u8]) {
    let blob = repo.join("blobs").join(format!("blob-{name}"));
    std::fs::create_dir_all(blob.parent().unwrap()).unwrap();
    std::fs::write(&blob, bytes).unwrap();
    let link = repo.join("snapshots").join(COMMIT).join(name);
    std::fs::create_dir_all(link.parent().unwrap()).unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink(Path::new("../../blobs").join(format!("blob-{name}")), &link).unwrap();
    #[cfg(not(unix))]
    std::fs::copy(&blob, &link).unwrap();
}

/// `<root>/models--<org>--<name>` holding `src`'s config and tokenizer, its weights in one file
/// or split into `shards` files with an index; returns the snapshot folder.
fn cache_repo(root: &Path, repo_id: &str, src: &str, shards: usize) -> PathBuf {
    let repo = root.join(format!("models--{}", repo_id.replace('/', "--")));
    for f in ["config.json", "tokenizer.json"] {
        put(&repo, f, &std::fs::read(Path::new(src).join(f)).unwrap());
    }
    let weights = std::fs::read(Path::new(src).join("model.safetensors")).unwrap();
    if shards <= 1 {
        put(&repo, "model.safetensors", &weights);
    } else {
        let st = safetensors::SafeTensors::deserialize(&weights).unwrap();
        let mut names: Vec<&str> = st.names();
        names.sort();
        let mut weight_map = BTreeMap::new();
        for (i, chunk) in names.chunks(names.len().div_ceil(shards)).enumerate() {
            let file = format!("model-{:05}-of-{:05}.safetensors", i + 1, shards);
            let views: Vec<(&str, safetensors::tensor::TensorView)> = chunk.iter().map(|n| (*n, st.tensor(n).unwrap())).collect();
            put(&repo, &file, &safetensors::tensor::serialize(views, None).unwrap());
            for n in chunk {
                weight_map.insert(n.to_string(), file.clone());
            }
        }
        let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
        put(&repo, "model.safetensors.index.json", index.to_string().as_bytes());
    }
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), COMMIT).unwrap();
    repo.join("snapshots").join(COMMIT)
}

fn logits(m: &LoadedModel) -> Vec<Vec<f32>> {
    let x = Tensor::new(&[1u32, 5, 9, 42, 7, 3], &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    m.model.forward(&x, None, &mut ForwardCtx::inference()).unwrap().to_vec2().unwrap()
}

fn load(p: &Path) -> LoadedModel {
    load_model_dir(p, &Device::Cpu).unwrap_or_else(|e| panic!("{}: {e:#}", p.display()))
}

fn err_string(r: anyhow::Result<PathBuf>) -> String {
    format!("{:#}", r.expect_err("expected an error"))
}

#[test]
fn cached_repos_load_the_same_model_as_their_folders() {
    let root = tempfile::tempdir().unwrap();
    let llama = cache_repo(root.path(), "test-org/tiny-llama", LLAMA, 1);
    let qwen = cache_repo(root.path(), "test-org/tiny-qwen2", QWEN2, 3);
    assert!(qwen.join("model-00003-of-00003.safetensors").exists());
    for (id, snap, folder) in [("test-org/tiny-llama", &llama, LLAMA), ("test-org/tiny-qwen2", &qwen, QWEN2)] {
        let resolved = resolve_model_dir_in(Path::new(id), root.path()).unwrap();
        assert_eq!(&resolved, snap);
        // A revision may also be named by its commit.
        let by_commit = resolve_model_dir_in(Path::new(&format!("{id}@{COMMIT}")), root.path()).unwrap();
        assert_eq!(&by_commit, snap);
        assert_eq!(logits(&load(&resolved)), logits(&load(Path::new(folder))), "{id}");
    }
    // An existing path is never looked up in the cache.
    assert_eq!(resolve_model_dir_in(Path::new(LLAMA), root.path()).unwrap(), PathBuf::from(LLAMA));
}

#[test]
fn what_is_missing_is_listed_with_where_it_was_looked_for() {
    let root = tempfile::tempdir().unwrap();
    let err = err_string(resolve_model_dir_in(Path::new("test-org/absent"), root.path()));
    assert!(err.contains("test-org/absent") && err.contains(&root.path().display().to_string()), "{err}");
    assert!(err.contains("models--test-org--absent") && err.contains("huggingface-cli download test-org/absent"), "{err}");

    let snap = cache_repo(root.path(), "test-org/broken", QWEN2, 2);
    // A shard whose blob is gone (a dangling link) and no tokenizer.
    std::fs::remove_file(root.path().join("models--test-org--broken/blobs/blob-model-00002-of-00002.safetensors")).unwrap();
    std::fs::remove_file(snap.join("tokenizer.json")).unwrap();
    let err = err_string(resolve_model_dir_in(Path::new("test-org/broken"), root.path()));
    assert!(err.contains("model-00002-of-00002.safetensors") && err.contains("tokenizer.json"), "{err}");
    assert!(!err.contains("model-00001-of-00002"), "{err}");
    assert!(err.contains(&snap.display().to_string()), "{err}");

    let err = err_string(resolve_model_dir_in(Path::new("test-org/broken@dev"), root.path()));
    assert!(err.contains("refs/dev") && err.contains(COMMIT), "{err}");
}

#[test]
fn the_cli_takes_a_repo_id_from_hf_hub_cache() {
    let root = tempfile::tempdir().unwrap();
    cache_repo(root.path(), "test-org/tiny-llama", LLAMA, 2);
    let run = |model: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_memtune"))
            .args(["score", "--model", model, "--text", "The capital of France is Paris."])
            .env("HF_HUB_CACHE", root.path())
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (ok, stdout, stderr) = run("test-org/tiny-llama");
    assert!(ok, "{stderr}");
    let line: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert!(line["total_logprob"].as_f64().unwrap().is_finite());
    let (ok, _, stderr) = run("test-org/not-downloaded");
    assert!(!ok && stderr.contains("not in the hub cache") && stderr.contains(&root.path().display().to_string()), "{stderr}");
}

#[test]
fn finetuning_a_cached_repo_writes_to_the_run_directory_not_the_cache() {
    let root = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let snap = cache_repo(root.path(), "test-org/tiny-qwen2", QWEN2, 1);
    let facts = work.path().join("facts.jsonl");
    std::fs::write(
        &facts,
        "{\"statement\": \"The capital of France is Paris.\", \"question\": \"The capital of France is\", \"answer\": \"Paris\"}\n",
    )
    .unwrap();
    let run_dir = work.path().join("run");
    let out = Command::new(env!("CARGO_BIN_EXE_memtune"))
        .args(["finetune", "--model", "test-org/tiny-qwen2", "--method", "lora"])
        .args(["--set", &format!("finetune.facts_file=\"{}\"", facts.display())])
        .args(["--set", &format!("run.dir=\"{}\"", run_dir.display())])
        .args(["--set", "finetune.paraphrases=2"])
        .env("HF_HUB_CACHE", root.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(run_dir.join("finetune-lora/adapter/adapter_model.safetensors").exists());
    let files: Vec<String> = std::fs::read_dir(&snap).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(files.len(), 3, "the cache snapshot was written into: {files:?}");
}
