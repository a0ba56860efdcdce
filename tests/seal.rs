//! SEAL on a tiny memory model pretrained on the synthetic world (configs/seal-synthetic.toml):
//! - passages from the world and from a SQuAD file; disjoint eval / round passages;
//! - self-edits split into training sequences by line or by Q/A pair, the passage last;
//! - the inner loop leaves the student's weights bit-identical, and candidates are independent
//!   (same seed → same weights and reward, whatever ran in between);
//! - completion-only SFT: the loss is the mean NLL of the completion tokens alone and prompt
//!   positions get no gradient;
//! - ReST-EM filters pick what they should;
//! - continual SEAL: an n × n retention matrix whose diagonal is the accuracy right after each update;
//! - `memtune seal` on the preset writes every file with the documented schema.

use candle_core::{Device, Tensor, Var};
use memtune::config::{AnswerMetric, ExperimentConfig, MethodKind, SealFilter};
use memtune::data::synthetic::Split;
use memtune::ops::IGNORE_INDEX;
use memtune::seal::inner::{closed_book, merged, model_over, reward, update, InnerSettings, Repeats, Student};
use memtune::seal::passages::{split_passages, Passage};
use memtune::seal::rest_em::{select, sft_batches, sft_pair};
use memtune::seal::self_edit::training_sequences;
use memtune::seal::templates::{ChatFormat, QaFormat, SplitRule};
use memtune::train::model_dir::Base;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const PRESET: &str = include_str!("../configs/seal-synthetic.toml");
/// The tests need a trained model, not a good one: 300 pretraining steps instead of 1,500.
const SHORT_PRETRAINING: &str = "train.steps=300";

fn run_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().unwrap()).path()
}

fn cfg(sets: &[&str]) -> ExperimentConfig {
    let mut all = vec![format!("run.dir=\"{}\"", run_dir().display()), SHORT_PRETRAINING.into()];
    all.extend(sets.iter().map(|s| s.to_string()));
    ExperimentConfig::from_toml_str(PRESET, "seal-synthetic.toml", &all).unwrap()
}

/// The preset's model, pretrained once per test binary (the CLI test reuses it by config hash).
fn base() -> &'static Base {
    static BASE: OnceLock<Base> = OnceLock::new();
    BASE.get_or_init(|| memtune::train::model_dir::pretrained_base(&cfg(&[]), &Device::Cpu).unwrap())
}

fn student(b: &Base) -> Student<'_> {
    Student { cfg: &b.model_cfg, store: &b.store, model: &b.model, tok: &b.tokenizer, background: b.background.as_ref() }
}

fn qa() -> QaFormat {
    QaFormat {
        closed_book: "Q: {question} A:".into(),
        open_book: "{passage}\nQ: {question} A:".into(),
        chat: ChatFormat::Plain,
        answer_prefix: String::new(),
    }
}

fn settings(method: MethodKind, sets: &[&str]) -> InnerSettings {
    let c = cfg(sets);
    let mut ft = c.finetune.clone();
    ft.method = method;
    InnerSettings { ft, epochs: c.seal.inner_epochs, batch_size: c.seal.inner_batch_size }
}

fn bits(store: &memtune::model::ParamStore) -> Vec<(String, Vec<u32>)> {
    let mut names = store.names();
    names.sort();
    names
        .into_iter()
        .map(|n| {
            let t = store.get(&n).unwrap().as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            (n, t.iter().map(|x| x.to_bits()).collect())
        })
        .collect()
}

/// The passage's questions with their answers as "Q: … A: …" lines: a perfect self-edit.
fn answer_lines(p: &Passage) -> Vec<String> {
    p.questions.iter().map(|q| format!("Q: {} A: {}", q.question, q.answers[0])).collect()
}

#[test]
fn self_edits_split_by_line_or_qa_pair_with_the_passage_last() {
    let edit = "  Ada was born in Paris.\n\nShe studied physics. \n";
    assert_eq!(training_sequences(edit, SplitRule::Lines, "P."), ["Ada was born in Paris.", "She studied physics.", "P."]);
    let qa = "Some preamble\nQ: Where was Ada born?\nA: Paris\nQuestion: What did Ada study?\nAnswer: physics\nQ: orphan question\nQ: Who? A: Ada\nA: stray answer";
    assert_eq!(
        training_sequences(qa, SplitRule::QaPairs, "P."),
        ["Q: Where was Ada born? A: Paris", "Question: What did Ada study? Answer: physics", "Q: Who? A: Ada", "P."]
    );
    assert_eq!(training_sequences("", SplitRule::Lines, "P."), ["P."]);
}

#[test]
fn passages_from_the_world_and_from_squad() {
    let w = base().world.as_ref().unwrap();
    let ps = Passage::from_world(w, Split::Seal);
    assert_eq!(ps.len(), w.seal_people.len());
    let p = &ps[0];
    assert_eq!(p.context, w.passage(&w.seal_people[0]));
    assert_eq!(p.questions.len(), 20, "5 attributes × 4 question templates");
    assert!(p.questions.iter().all(|q| p.context.contains(&q.answers[0]) && q.question.contains(&p.title)));
    let sq = Passage::from_squad(Path::new("tests/fixtures/seal-squad-mini.json")).unwrap();
    assert_eq!(sq.len(), 2, "the paragraph without questions is dropped");
    assert_eq!((sq[0].id.as_str(), sq[0].title.as_str()), ("Glass_Harbor/0", "Glass Harbor"));
    assert_eq!(sq[0].questions[0].answers, ["1721", "in 1721"]);
    assert_eq!(sq[1].questions.len(), 1);
    assert!(Passage::from_squad_str("{\"data\": 3}").is_err());
    let s = split_passages(ps.clone(), 4, 3, 2, 7).unwrap();
    let mut ids: Vec<&str> = s.eval.iter().chain(s.rounds.iter().flatten()).map(|p| p.id.as_str()).collect();
    assert_eq!(ids.len(), 10);
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 10, "eval and round passages are disjoint");
    let e = split_passages(ps, 10, 6, 2, 7).unwrap_err().to_string();
    assert!(e.contains("seal.eval_passages") && e.contains("22"), "{e}");
}

#[test]
fn inner_loop_leaves_the_base_bit_identical_and_candidates_independent() {
    let b = base();
    let st = student(b);
    let w = b.world.as_ref().unwrap();
    let p = &Passage::from_world(w, Split::Seal)[0];
    let before_bits = bits(&b.store);
    let before = closed_book(&b.model, &b.tokenizer, &qa(), p).unwrap();
    for m in [MethodKind::Lora, MethodKind::SparseMemory, MethodKind::Full] {
        let s = settings(m, &["finetune.lora.lr=1e-2", "finetune.full.lr=1e-3"]);
        let a: Vec<String> = answer_lines(p).into_iter().chain([p.context.clone()]).collect();
        let other = vec!["Q: Where was Zoe Evans born? A: Lima".to_string(), p.context.clone()];
        let ua = bits(&update(&st, &s, &a, 11).unwrap().store);
        let ra = reward(&st, &s, &qa(), p, &a, &before, Repeats { n: 2, seed: 5, candidate: 1 }).unwrap();
        // Another candidate in between changes nothing for the next one.
        let _ = update(&st, &s, &other, 12).unwrap();
        let _ = reward(&st, &s, &qa(), p, &other, &before, Repeats { n: 2, seed: 5, candidate: 2 }).unwrap();
        assert_eq!(bits(&update(&st, &s, &a, 11).unwrap().store), ua, "{m:?}: same seed, same weights");
        assert_eq!(
            reward(&st, &s, &qa(), p, &a, &before, Repeats { n: 2, seed: 5, candidate: 1 }).unwrap(),
            ra,
            "{m:?}: same seed, same reward"
        );
        assert_eq!(bits(&b.store), before_bits, "{m:?}: the student's weights changed");
        assert_ne!(ua, before_bits, "{m:?}: the update changed nothing");
        for m in [AnswerMetric::Em, AnswerMetric::F1, AnswerMetric::Contains] {
            assert!((ra.gain.of(m) - (ra.after_mean.of(m) - ra.before.of(m))).abs() < 1e-12, "{m:?}");
            assert_eq!(ra.before.of(m), before.mean(m), "{m:?}");
        }
    }
    // LoRA repeats differ (adapter init follows the seed).
    let s = settings(MethodKind::Lora, &[]);
    let seqs = vec![p.context.clone()];
    assert_ne!(bits(&update(&st, &s, &seqs, 1).unwrap().store), bits(&update(&st, &s, &seqs, 2).unwrap().store));
}

#[test]
fn sft_loss_is_on_the_completion_only() {
    let b = base();
    let tok = &b.tokenizer;
    let pairs = vec![
        sft_pair(tok, "Passage: Ada was born in Paris.\nImplications:\n", "Ada is from Paris.", tok.eos_id(), 192).unwrap(),
        sft_pair(tok, "Passage: short\n", "A longer completion than the prompt, by far.", tok.eos_id(), 192).unwrap(),
    ];
    let batch = sft_batches(&pairs, tok.eos_id(), 2, 1, 0).unwrap().remove(0);
    // Manual: -mean over completion tokens of log p(token | everything before it).
    let mut logps = vec![];
    for (p, c) in &pairs {
        let full: Vec<u32> = p.iter().chain(c).copied().collect();
        let n = full.len() - 1;
        let x = Tensor::from_vec(full[..n].to_vec(), (1, n), &Device::Cpu).unwrap();
        let y = Tensor::from_vec(full[1..].to_vec(), (1, n), &Device::Cpu).unwrap();
        let lp = b.model.token_logprobs(&x, &y).unwrap();
        logps.extend_from_slice(&lp[p.len() - 1..]);
        assert_eq!(lp.len() - (p.len() - 1), c.len());
    }
    let manual = -logps.iter().map(|&x| x as f64).sum::<f64>() / logps.len() as f64;
    let (x, y) = batch.to_tensors(&Device::Cpu).unwrap();
    let loss = b.model.loss(&x, &y, &mut Default::default()).unwrap().to_scalar::<f32>().unwrap() as f64;
    assert!((loss - manual).abs() < 1e-4 * manual.abs().max(1.0), "batch loss {loss} vs manual {manual}");
    // Prompt positions carry the ignore index and get no gradient.
    let targets: Vec<u32> = batch.targets.clone();
    for (p, c) in &pairs {
        // Rows are in a seeded order: find this pair's row by its first tokens.
        let r = (0..batch.batch).find(|r| batch.inputs[r * batch.seq..].starts_with(p)).unwrap();
        let row = &targets[r * batch.seq..(r + 1) * batch.seq];
        assert!(row[..p.len() - 1].iter().all(|&t| t == IGNORE_INDEX), "prompt targets are ignored");
        assert_eq!(&row[p.len() - 1..p.len() - 1 + c.len()], c.as_slice(), "completion targets are the completion");
        assert!(row[p.len() - 1 + c.len()..].iter().all(|&t| t == IGNORE_INDEX), "padding is ignored");
    }
    let v = b.model_cfg.vocab_size;
    let logits = Var::from_tensor(&Tensor::randn(0f32, 1.0, (targets.len(), v), &Device::Cpu).unwrap()).unwrap();
    let t = Tensor::from_vec(targets.clone(), targets.len(), &Device::Cpu).unwrap();
    let g = memtune::ops::cross_entropy(logits.as_tensor(), &t).unwrap().backward().unwrap();
    let g = g.get(logits.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
    for (row, &tg) in g.iter().zip(&targets) {
        let norm: f32 = row.iter().map(|x| x.abs()).sum();
        assert_eq!(norm == 0.0, tg == IGNORE_INDEX, "gradient {norm} at a row with target {tg}");
    }
}

#[test]
fn filters_pick_what_they_should() {
    let r = [0.1, 0.4, 0.4, -0.2, 0.3];
    assert_eq!(select(&r, 0.0, SealFilter::Top1), [1], "ties go to the earlier sample");
    assert_eq!(select(&r, 0.3, SealFilter::Positive), [1]);
    assert!(select(&r, 0.4, SealFilter::Positive).is_empty(), "must beat passage-only strictly");
    assert_eq!(select(&r, 0.0, SealFilter::AboveGroupMean), [1, 2, 4], "mean 0.2");
    assert!(select(&[0.0, 0.0], 0.0, SealFilter::AboveGroupMean).is_empty());
    assert!(select(&[], 0.0, SealFilter::Top1).is_empty());
}

#[test]
fn continual_retention_matrix_has_the_accuracy_right_after_each_update_on_its_diagonal() {
    let b = base();
    let st = student(b);
    let ps: Vec<Passage> =
        Passage::from_world(b.world.as_ref().unwrap(), Split::Seal).into_iter().take(3).map(|p| p.limit_questions(4)).collect();
    let seqs: Vec<Vec<String>> = ps.iter().map(|p| answer_lines(p).into_iter().chain([p.context.clone()]).collect()).collect();
    let s = settings(MethodKind::Lora, &["finetune.lora.lr=1e-2", "seal.inner_epochs=8"]);
    let r = memtune::seal::continual::continual(&st, &s, &qa(), AnswerMetric::Em, &ps, &seqs, 3, |_| {}).unwrap();
    assert_eq!((r.acc.len(), r.acc[0].len(), r.before.len()), (3, 3, 3));
    // Recompute the diagonal independently: the same updates in sequence, measured right after.
    let mut store = b.store.deep_clone().unwrap();
    for j in 0..3 {
        let model = model_over(&b.model_cfg, &store, &Device::Cpu).unwrap();
        let cur = Student { cfg: &b.model_cfg, store: &store, model: &model, tok: &b.tokenizer, background: None };
        let t = update(&cur, &s, &seqs[j], memtune::seal::inner::candidate_seed(3, &ps[j].id, 0, j)).unwrap();
        store = merged(t, &s.ft).unwrap();
        let model = model_over(&b.model_cfg, &store, &Device::Cpu).unwrap();
        assert_eq!(r.acc[j][j], closed_book(&model, &b.tokenizer, &qa(), &ps[j]).unwrap().mean(AnswerMetric::Em), "diagonal at {j}");
    }
    assert!(r.newest() > 0.0, "learning the answers verbatim must answer some questions: {:?}", r.acc);
    let md = memtune::seal::continual::render_markdown(&[r]);
    assert!(md.contains("| lora |") && md.contains("after 2"), "{md}");
}

#[test]
fn seal_preset_runs_end_to_end_and_writes_the_documented_files() {
    base(); // pretrained once; the command reuses it by config hash
    let out: PathBuf = run_dir().join("seal-e2e");
    let sets = [
        format!("run.dir=\"{}\"", run_dir().display()),
        SHORT_PRETRAINING.into(),
        format!("seal.out=\"{}\"", out.display()),
        "seal.eval_passages=2".into(),
        "seal.train_passages=2".into(),
        "seal.k=2".into(),
        "seal.inner_epochs=3".into(),
        "seal.continual_passages=2".into(),
    ];
    let mut args = vec!["seal".to_string(), "--config".into(), "configs/seal-synthetic.toml".into()];
    for s in &sets {
        args.push("--set".into());
        args.push(s.clone());
    }
    let o = Command::new(env!("CARGO_BIN_EXE_memtune")).args(&args).output().unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(stdout.contains("| no-update | none |") && stdout.contains("Open-book (the passage in the prompt): EM"), "{stdout}");
    let lines = |f: &str| -> Vec<serde_json::Value> {
        std::fs::read_to_string(out.join(f)).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    let summary = lines("summary.jsonl");
    let got: Vec<(String, String)> =
        summary.iter().map(|l| (l["condition"].as_str().unwrap().into(), l["inner_method"].as_str().unwrap().into())).collect();
    let want: Vec<(String, String)> = [
        ("no-update", "none"),
        ("passage-only", "lora"),
        ("base-self-edits", "lora"),
        ("passage-only", "sparse-memory"),
        ("base-self-edits", "sparse-memory"),
        ("round-1", "lora"),
        ("round-1", "sparse-memory"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(got, want);
    for l in &summary {
        assert_eq!((l["seed"].as_u64(), l["n_passages"].as_u64(), l["n_questions"].as_u64()), (Some(0), Some(2), Some(10)), "{l}");
        for k in ["em", "f1", "em_stderr", "f1_stderr", "contains", "contains_stderr"] {
            assert!(l[k].as_f64().is_some_and(|x| (0.0..=1.0).contains(&x)), "{k} in {l}");
        }
    }
    let edits = lines("self_edits.jsonl");
    // Eval: 2 passages × k 2 × 2 methods × (base + round 1); train round: 2 passages × k 2.
    assert_eq!(edits.len(), 2 * 2 * 2 * 2 + 2 * 2);
    for e in &edits {
        for k in ["condition", "inner_method", "passage_id", "title", "self_edit"] {
            assert!(e[k].is_string(), "{k} in {e}");
        }
        for k in ["sample", "n_tokens", "sequences"] {
            assert!(e[k].is_u64(), "{k} in {e}");
        }
        for k in [
            "em_before",
            "em_after",
            "f1_before",
            "f1_after",
            "contains_before",
            "contains_after",
            "reward_em",
            "reward_f1",
            "reward_contains",
        ] {
            assert!(e[k].is_f64(), "{k} in {e}");
        }
        assert!((e["reward_em"].as_f64().unwrap() - (e["em_after"].as_f64().unwrap() - e["em_before"].as_f64().unwrap())).abs() < 1e-9);
        assert_eq!(e["kept"].is_boolean(), e["condition"] == "train-round-1", "{e}");
    }
    let kept = edits.iter().filter(|e| e["kept"] == true).count();
    assert_eq!(kept, 2, "top1 keeps one self-edit per passage");
    let d: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("diagnostics.json")).unwrap()).unwrap();
    assert!(d["open_book_em"].is_f64() && d["self_edits"].as_array().unwrap().len() == 2 && d["rounds"][0]["kept"] == 2, "{d}");
    assert!(d["inner_update_seconds"].as_f64().unwrap() > 0.0 && d["sampling_seconds_per_passage"].as_f64().unwrap() > 0.0, "{d}");
    let ret: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("retention.json")).unwrap()).unwrap();
    assert_eq!(ret.as_array().unwrap().len(), 2);
    assert_eq!(ret[0]["acc"].as_array().unwrap().len(), 2);
    assert_eq!(&std::fs::read(out.join("retention.png")).unwrap()[1..4], b"PNG");
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    assert!(md.contains("| round-1 | lora |") && md.contains("retention matrix") && md.contains("ReST-EM rounds"), "{md}");
    assert!(out.join("config.toml").exists());
    // Bad config keys are named.
    let o = Command::new(env!("CARGO_BIN_EXE_memtune"))
        .args(["seal", "--config", "configs/seal-synthetic.toml", "--set", "seal.filtr=\"top1\""])
        .output()
        .unwrap();
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("seal.filtr"));
    let o = Command::new(env!("CARGO_BIN_EXE_memtune"))
        .args(["seal", "--config", "configs/seal-synthetic.toml", "--set", "seal.template=\"nope\""])
        .output()
        .unwrap();
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("seal.template"));
}

#[test]
fn a_teacher_with_another_tokenizer_is_refused_naming_it() {
    base();
    let teacher = tempfile::tempdir().unwrap();
    let ckpt = memtune::train::model_dir::pretrain_dir(&cfg(&[])).join("checkpoint");
    // A plain model folder (a checkpoint's manifest would refuse the changed tokenizer first).
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(ckpt.join(f), teacher.path().join(f)).unwrap();
    }
    // The same weights with a smaller vocabulary trained on the same world.
    let o = Command::new(env!("CARGO_BIN_EXE_memtune"))
        .args(["tokenizer", "train", "--config", "configs/seal-synthetic.toml", "--vocab-size", "300", "--out"])
        .arg(teacher.path().join("tokenizer.json"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = run_dir().join("seal-bad-teacher");
    let o = seal_output(&out, &[format!("seal.teacher=\"{}\"", teacher.path().display())]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("seal.teacher") && err.contains("300 tokens"), "{err}");
    assert!(!out.join("self_edits.jsonl").exists(), "nothing is written before the refusal");
}

#[test]
fn templates_fill_title_and_passage_and_apply_chatml() {
    use memtune::config::ChatMode;
    use memtune::seal::templates::Template;
    let p = Passage { id: "x".into(), title: "Ada".into(), context: "Ada was born in Paris.".into(), questions: vec![] };
    let c = cfg(&["seal.template=\"mine-qa\"", "seal.templates.mine-qa=\"About {title}: {passage} Questions:\""]);
    let t = Template::from_config(&c.seal).unwrap();
    assert_eq!((t.render(&p).as_str(), t.split), ("About Ada: Ada was born in Paris. Questions:", SplitRule::QaPairs));
    let t = Template::from_config(&cfg(&["seal.template=\"self-qa\""]).seal).unwrap();
    assert!(t.render(&p).contains("Ada\nAda was born in Paris.") && t.split == SplitRule::QaPairs);
    let e = ExperimentConfig::from_toml_str(PRESET, "p", &["seal.templates.bad=\"no passage\"".into()]).unwrap_err().to_string();
    assert!(e.contains("seal.templates.bad"), "{e}");
    let d = tempfile::tempdir().unwrap();
    assert_eq!(ChatFormat::resolve(ChatMode::Auto, d.path()).unwrap(), ChatFormat::Plain);
    let smol = r#"{"chat_template": "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"}"#;
    std::fs::write(d.path().join("tokenizer_config.json"), smol).unwrap();
    let chat = ChatFormat::resolve(ChatMode::Auto, d.path()).unwrap();
    assert_eq!(chat.wrap("Hi"), "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    assert_eq!(ChatFormat::resolve(ChatMode::None, d.path()).unwrap(), ChatFormat::Plain);
    // The template is rendered as Jinja, as transformers does: SmolLM2's default system turn and
    // a template using bos_token come out as the model was trained on them.
    let smol_full = r#"{"chat_template": "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"}"#;
    std::fs::write(d.path().join("tokenizer_config.json"), smol_full).unwrap();
    let full = ChatFormat::resolve(ChatMode::Auto, d.path()).unwrap();
    assert_eq!(
        full.wrap("Hi"),
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(full.end_token(), Some("<|im_end|>"));
    let llama = r#"{"bos_token": "<s>", "eos_token": {"content": "</s>"}, "chat_template": "{{ bos_token }}{% for m in messages %}[INST] {{ m['content'] | trim }} [/INST]{% endfor %}"}"#;
    std::fs::write(d.path().join("tokenizer_config.json"), llama).unwrap();
    let l = ChatFormat::resolve(ChatMode::Auto, d.path()).unwrap();
    assert_eq!((l.wrap("Hi").as_str(), l.end_token()), ("<s>[INST] Hi [/INST]", Some("</s>")));
    // A template that does not show the message verbatim is refused, pointing at seal.chat.
    std::fs::write(d.path().join("tokenizer_config.json"), r#"{"chat_template": "[INST] {{ x }} [/INST]"}"#).unwrap();
    let e = ChatFormat::resolve(ChatMode::Auto, d.path()).unwrap_err().to_string();
    assert!(e.contains("seal.chat"), "{e}");
    let q = QaFormat { chat, ..qa() };
    assert_eq!(q.closed(&p, "Where?"), "<|im_start|>user\nQ: Where? A:<|im_end|>\n<|im_start|>assistant\n");
    assert!(q.open(&p, "Where?").contains("Ada was born in Paris.\nQ: Where? A:"));
    // The answer prefix opens the assistant's answer, after the chat template.
    let q = QaFormat { answer_prefix: "Answer:".into(), ..q };
    assert!(q.closed(&p, "Where?").ends_with("<|im_start|>assistant\nAnswer:") && q.open(&p, "Where?").ends_with("assistant\nAnswer:"));
    let p = Passage {
        questions: vec![memtune::eval::qa::QaItem {
            question: "Where was Ada born?".into(),
            answers: vec!["Paris".into(), "paris".into()],
        }],
        ..p
    };
    assert_eq!(memtune::seal::run::oracle_sequences(&p, &qa()), ["Q: Where was Ada born? A: Paris", "Ada was born in Paris."]);
}

/// `memtune seal` on the preset with the tests' model and `sets`, results into `out`.
fn seal_output(out: &Path, sets: &[String]) -> std::process::Output {
    base();
    let mut args = vec!["seal".to_string(), "--config".into(), "configs/seal-synthetic.toml".into()];
    let all = [format!("run.dir=\"{}\"", run_dir().display()), SHORT_PRETRAINING.into(), format!("seal.out=\"{}\"", out.display())];
    for s in all.iter().chain(sets) {
        args.push("--set".into());
        args.push(s.clone());
    }
    Command::new(env!("CARGO_BIN_EXE_memtune")).args(&args).output().unwrap()
}

/// Runs `memtune seal` as `seal_output` does, into `<run dir>/<name>`; returns that folder.
fn seal_cli(name: &str, sets: &[String]) -> PathBuf {
    let out = run_dir().join(name);
    let o = seal_output(&out, sets);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    out
}

#[test]
fn seal_runs_on_squad_passages_and_a_teacher_copy_changes_nothing() {
    let small: Vec<String> = [
        "seal.eval_passages=1",
        "seal.train_passages=1",
        "seal.k=2",
        "seal.inner_epochs=2",
        "seal.continual_passages=0",
        "seal.inner_methods=[\"lora\"]",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // A teacher that is a copy of the student writes the same self-edits, and ReST-EM trains it
    // the same way: every line is identical.
    let own = seal_cli("seal-own", &small);
    let teacher = memtune::train::model_dir::pretrain_dir(&cfg(&[])).join("checkpoint");
    let mut with_teacher = small.clone();
    with_teacher.push(format!("seal.teacher=\"{}\"", teacher.display()));
    let t = seal_cli("seal-teacher", &with_teacher);
    let read = |d: &Path, f: &str| std::fs::read_to_string(d.join(f)).unwrap();
    assert_eq!(read(&own, "self_edits.jsonl"), read(&t, "self_edits.jsonl"));
    assert_eq!(read(&own, "summary.jsonl"), read(&t, "summary.jsonl"));
    assert!(read(&own, "self_edits.jsonl").contains("\"condition\":\"train-round-1\""));
    // SQuAD passages through the whole pipeline.
    let mut squad = small.clone();
    squad.extend(["seal.data=\"tests/fixtures/seal-squad-mini.json\"".to_string(), "seal.eval_passages=2".into(), "seal.rounds=0".into()]);
    let s = seal_cli("seal-squad", &squad);
    let lines: Vec<serde_json::Value> = read(&s, "summary.jsonl").lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let conds: Vec<&str> = lines.iter().map(|l| l["condition"].as_str().unwrap()).collect();
    assert_eq!(conds, ["no-update", "passage-only", "base-self-edits"]);
    assert!(lines.iter().all(|l| l["n_questions"] == 3 && l["n_passages"] == 2), "{lines:?}");
    let titles: std::collections::BTreeSet<String> = read(&s, "self_edits.jsonl")
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["title"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(titles.into_iter().collect::<Vec<_>>(), ["Glass Harbor", "Mira Oduya"]);
}
