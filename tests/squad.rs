//! Real QA data: the SQuAD v1.1 loader on a hand-written fixture (and on the real dev set when
//! `scripts/get-squad.sh` has fetched it), its errors, and the Natural Questions JSONL.

use memtune::data::qa::read_jsonl;
use memtune::data::squad::load_squad;
use std::path::Path;

const MINI: &str = "tests/fixtures/squad-mini.json";
const SQUAD_DEV: &str = "data/squad/dev-v1.1.json";
const NQ: &str = "data/nq-closed-book.jsonl";

#[test]
fn reads_the_mini_fixture() {
    let s = load_squad(Path::new(MINI)).unwrap();
    assert_eq!(s.version, "1.1");
    assert_eq!((s.n_articles(), s.passages.len(), s.n_questions()), (3, 6, 15));
    let p = &s.passages[1];
    assert_eq!(p.title, "Rust_(programming_language)");
    assert!(p.context.starts_with("Rust began"));
    let q = &p.questions[0];
    assert_eq!((q.id.as_str(), q.question.as_str()), ("mini-004", "Who started Rust as a personal project?"));
    assert_eq!(&p.context[q.answers[0].answer_start..][..q.answers[0].text.len()], "Graydon Hoare");
    // QA items keep each distinct answer text once.
    let items = s.passages[0].qa_items();
    assert_eq!(items[0].answers, vec!["a borrow checker".to_string(), "borrow checker".to_string()]);
}

#[test]
fn bad_files_name_the_file_and_json_path() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(MINI).unwrap()).unwrap();
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(Edit, &str)> = vec![
        (
            Box::new(|v| v["data"][1]["paragraphs"][0]["qas"][1]["answers"][0]["answer_start"] = "x".into()),
            "data[1].paragraphs[0].qas[1].answers[0].answer_start",
        ),
        (
            Box::new(|v| v["data"][2]["paragraphs"][1].as_object_mut().unwrap().remove("context").map(|_| ()).unwrap()),
            "data[2].paragraphs[1]",
        ),
        (
            Box::new(|v| v["data"][0]["paragraphs"][1]["qas"][0]["answers"] = serde_json::json!([])),
            "data[0].paragraphs[1].qas[0].answers: empty",
        ),
        (Box::new(|v| v["data"][0]["paragraphs"][0]["context"] = " ".into()), "data[0].paragraphs[0].context: empty"),
        (Box::new(|v| v.as_object_mut().unwrap().remove("data").map(|_| ()).unwrap()), "data"),
    ];
    let orig = v.clone();
    for (break_it, want) in cases {
        v = orig.clone();
        break_it(&mut v);
        std::fs::write(&p, v.to_string()).unwrap();
        let err = format!("{:#}", load_squad(&p).unwrap_err());
        assert!(err.contains("bad.json") && err.contains(want), "want {want:?} in: {err}");
    }
    std::fs::write(&p, "{ not json").unwrap();
    assert!(format!("{:#}", load_squad(&p).unwrap_err()).contains("bad.json"));
    let err = format!("{:#}", load_squad(&dir.path().join("missing.json")).unwrap_err());
    assert!(err.contains("missing.json"), "{err}");
}

#[test]
fn reads_the_whole_squad_dev_set_when_present() {
    if !Path::new(SQUAD_DEV).exists() {
        eprintln!("skipped: {SQUAD_DEV} is absent (run scripts/get-squad.sh)");
        return;
    }
    let s = load_squad(Path::new(SQUAD_DEV)).unwrap();
    assert_eq!((s.n_articles(), s.passages.len(), s.n_questions()), (48, 2_067, 10_565));
    assert!(s.passages.iter().flat_map(|p| p.qa_items()).all(|q| !q.answers.is_empty()));
}

#[test]
fn reads_the_natural_questions_probe_when_present() {
    if !Path::new(NQ).exists() {
        eprintln!("skipped: {NQ} is absent (run scripts/get-squad.sh)");
        return;
    }
    let items = read_jsonl(Path::new(NQ)).unwrap();
    assert_eq!(items.len(), 17_526);
    assert_eq!(items[0].question, "who does candace like in phineas and ferb?");
    assert_eq!(items[0].answers, vec!["Jeremy Johnson".to_string()]);
}
