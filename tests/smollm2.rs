//! The real SmolLM2-135M-Instruct, imported from its Q4_1 GGUF by `scripts/get-smollm2.sh`:
//! greedy decoding of "The capital of France is" must begin with " Paris". That exercises the
//! whole import on a real file: Q4_1 / Q8_0 dequantisation, the q/k un-permutation with grouped
//! query attention (9 heads, 3 kv heads), rope theta 100000, tied embeddings and the SmolLM
//! pre-tokenizer. A second test compares per-token log-probabilities of a sentence with those
//! Hugging Face transformers computes from the same GGUF file with its own loader (greedy
//! "Paris" alone would not notice a wrong q/k row order: it survives it on this short prompt,
//! while these log-probabilities move by up to 8 nats). Skipped, with a message, when the model
//! has not been fetched.

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

/// The imported model, or `None` (with a message) when it has not been fetched.
fn load() -> Option<memtune::model::pretrained::LoadedModel> {
    let dir = model_dir();
    if !dir.join("config.json").exists() {
        eprintln!("skipped: {} is absent (run scripts/get-smollm2.sh to fetch and import it)", dir.display());
        return None;
    }
    Some(load_model_dir(&dir, &Device::Cpu).unwrap())
}

#[test]
fn smollm2_knows_the_capital_of_france() {
    let Some(m) = load() else { return };
    let ids = m.tokenizer.encode(PROMPT).unwrap();
    let opts = GenerateOptions { max_new_tokens: NEW_TOKENS, stop_tokens: m.tokenizer.stop_ids().to_vec(), ..Default::default() };
    let out = generate(&m.model, &ids, &opts).unwrap();
    let text = m.tokenizer.decode(&out).unwrap();
    println!("{PROMPT:?} → {text:?} (prompt ids {ids:?}, new ids {out:?})");
    assert!(text.starts_with(EXPECTED), "greedy continuation of {PROMPT:?} is {text:?}, expected it to begin with {EXPECTED:?}");
}

/// `REFERENCE_TEXT` after "<|endoftext|>" (id 0) as transformers 5.23 tokenizes it and the
/// log-probability of each next token, from
/// `AutoModelForCausalLM.from_pretrained(dir, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", dtype=float32)`
/// (transformers dequantises and un-permutes with its own code; its weights equal the import's
/// bit for bit).
const REFERENCE_TEXT: &str =
    "The capital of France is Paris. It is known for the Eiffel Tower, which was completed in 1889 for the World's Fair.";
const REFERENCE_IDS: &[u32] = &[
    0, 504, 3575, 282, 4649, 314, 7042, 30, 657, 314, 1343, 327, 260, 414, 46682, 18669, 28, 527, 436, 5371, 281, 216, 33, 40, 40, 41, 327,
    260, 2260, 506, 11285, 30,
];
const REFERENCE_LOGPROBS: &[f32] = &[
    -5.11282, -8.07346, -0.24717, -3.14548, -0.16612, -0.21575, -0.30542, -3.32555, -0.6498, -3.53016, -0.31153, -2.17672, -2.0947,
    -0.01646, -0.01663, -0.94775, -2.19839, -0.59147, -3.20378, -0.0647, -0.02668, -0.00032, -0.00422, -0.01073, -0.00186, -5.02757,
    -0.07044, -2.12642, -0.14874, -0.45601, -1.8425,
];
/// f32 summation order differs over 30 layers (measured: 6.5e-5 at most); rounding to 5 decimals.
const LOGPROB_TOLERANCE: f32 = 1e-3;

#[test]
fn smollm2_logprobs_match_transformers_reading_the_gguf() {
    let Some(m) = load() else { return };
    assert_eq!(m.tokenizer.encode(REFERENCE_TEXT).unwrap(), REFERENCE_IDS[1..], "tokenization differs from transformers'");
    let n = REFERENCE_IDS.len() - 1;
    let dev = Device::Cpu;
    let inputs = candle_core::Tensor::new(&REFERENCE_IDS[..n], &dev).unwrap().unsqueeze(0).unwrap();
    let targets = candle_core::Tensor::new(&REFERENCE_IDS[1..], &dev).unwrap().unsqueeze(0).unwrap();
    let ours = m.model.token_logprobs(&inputs, &targets).unwrap();
    let worst = ours.iter().zip(REFERENCE_LOGPROBS).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    println!("max |log p (memtune) - log p (transformers)| over {n} tokens: {worst:.2e}");
    assert!(worst < LOGPROB_TOLERANCE, "log-probabilities differ from transformers' by up to {worst}");
}
