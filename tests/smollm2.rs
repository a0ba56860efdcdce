//! The real SmolLM2-135M-Instruct, imported from its Q4_1 GGUF by `scripts/get-smollm2.sh`:
//! greedy decoding of "The capital of France is" must begin with " Paris". That exercises the
//! whole import on a real file: Q4_1 / Q8_0 dequantisation, the q/k un-permutation with grouped
//! query attention (9 heads, 3 kv heads), rope theta 100000, tied embeddings and the SmolLM
//! pre-tokenizer. Skipped, with a message, when the model has not been fetched.

use candle_core::Device;
use memtune::eval::generate::{generate, GenerateOptions};
use memtune::model::pretrained::load_model_dir;
use std::path::PathBuf;

const PROMPT: &str = "The capital of France is";
const EXPECTED: &str = " Paris";
/// Enough new tokens to spell the expected word and see what follows.
const NEW_TOKENS: usize = 8;

fn model_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/smollm2-135m-instruct")
}

#[test]
fn smollm2_knows_the_capital_of_france() {
    let dir = model_dir();
    if !dir.join("config.json").exists() {
        eprintln!("skipped: {} is absent (run scripts/get-smollm2.sh to fetch and import it)", dir.display());
        return;
    }
    let m = load_model_dir(&dir, &Device::Cpu).unwrap();
    let ids = m.tokenizer.encode(PROMPT).unwrap();
    let opts = GenerateOptions { max_new_tokens: NEW_TOKENS, stop_tokens: m.tokenizer.stop_ids().to_vec(), ..Default::default() };
    let out = generate(&m.model, &ids, &opts).unwrap();
    let text = m.tokenizer.decode(&out).unwrap();
    println!("{PROMPT:?} → {text:?} (prompt ids {ids:?}, new ids {out:?})");
    assert!(text.starts_with(EXPECTED), "greedy continuation of {PROMPT:?} is {text:?}, expected it to begin with {EXPECTED:?}");
}
