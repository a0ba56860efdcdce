//! GGUF import. A tiny random Llama is written as llama.cpp's converter writes it (its tensor
//! names, its q/k row permutation, its metadata keys, the tokenizer as metadata); imported back
//! it must give the original logits (f32: to 1e-5; Q8_0 and bf16: within the tolerances below)
//! and tokenize text exactly as the original tokenizer. A failed import leaves no output
//! folder, and unsupported input is an error naming the key or tensor.

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use memtune::data::synthetic::{World, WorldConfig};
use memtune::data::tokenizer::{train_bpe, Tokenizer};
use memtune::io::gguf::{import_gguf, WeightDtype};
use memtune::model::pretrained::load_model_dir;
use memtune::model::{ForwardCtx, Llama, LlamaConfig, ParamBuilder, ParamStore};
use rand_distr::Distribution;
use std::collections::HashMap;
use std::path::Path;

/// Texts the round-trip checks tokenize (digits, unicode, whitespace runs, the special token).
const TEXTS: &[&str] = &[
    "Ada Smith was born in Paris in 1987.",
    "Q: Where does Kai Kim work? A: Nokia",
    "ünïcödé ☃ and\nnewlines\ttabs   end",
    "<|endoftext|>Lina Kim loves chess.<|endoftext|>",
];

const CHAT_TEMPLATE: &str = "{% for m in messages %}{{ m['content'] }}{% endfor %}";

/// Q8_0 stores each block of 32 weights as int8 times one scale: ~0.4% error per weight. The
/// logits of the tiny model move by well under this fraction of their largest magnitude.
const Q8_0_TOLERANCE: f32 = 0.02;
/// bf16 keeps 8 bits of mantissa (~0.4% per weight), the same order as Q8_0.
const BF16_TOLERANCE: f32 = 0.02;

fn tokenizer() -> Tokenizer {
    let world = World::generate(&WorldConfig { seed: 1, n_qa_people: 40, n_bio_only_people: 40, n_new_people: 10, n_seal_people: 5 });
    train_bpe(world.corpus_sample(200, 0), 400).unwrap()
}

struct Tiny {
    cfg: LlamaConfig,
    tensors: HashMap<String, Tensor>,
    tok: Tokenizer,
}

/// A random model whose attention matters: q/k scaled up so that a wrong row order (RoPE pairs)
/// changes the logits, random biases and norm weights so that swapped tensors would show.
fn tiny(tied: bool, bias: bool) -> Tiny {
    let tok = tokenizer();
    let cfg = LlamaConfig {
        vocab_size: tok.vocab_size(),
        hidden_size: 64,
        intermediate_size: 128,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        max_position_embeddings: 64,
        rms_norm_eps: 1e-5,
        rope_theta: 50_000.0,
        tie_word_embeddings: tied,
        attention_bias: bias,
        ..Default::default()
    };
    let store = ParamStore::new();
    Llama::new(&cfg, &ParamBuilder::fresh(&store, 7, &Device::Cpu)).unwrap();
    let tensors = store
        .tensors()
        .into_iter()
        .map(|(name, t)| {
            let t = if name.contains("q_proj.weight") || name.contains("k_proj.weight") {
                (t * 10.0).unwrap()
            } else if name.ends_with(".bias") {
                noise(&name, t.dims(), 0.0, 0.5)
            } else if name.contains("norm") {
                noise(&name, t.dims(), 1.0, 0.2)
            } else {
                t
            };
            (name, t)
        })
        .collect();
    Tiny { cfg, tensors, tok }
}

fn noise(name: &str, dims: &[usize], mean: f32, std: f32) -> Tensor {
    let mut rng = memtune::util::rng_for(3, name);
    let d = rand_distr::Normal::new(mean, std).unwrap();
    let n: usize = dims.iter().product();
    Tensor::from_vec((0..n).map(|_| d.sample(&mut rng)).collect::<Vec<f32>>(), dims, &Device::Cpu).unwrap()
}

fn model(cfg: &LlamaConfig, tensors: &HashMap<String, Tensor>) -> Llama {
    Llama::new(cfg, &ParamBuilder::from_tensors(&ParamStore::new(), tensors.clone(), &Device::Cpu)).unwrap()
}

fn logits(m: &Llama, ids: &[u32]) -> Vec<f32> {
    let x = Tensor::new(ids, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    m.forward(&x, None, &mut ForwardCtx::inference()).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn max_abs(a: &[f32]) -> f32 {
    a.iter().fold(0.0f32, |m, x| m.max(x.abs()))
}

// ---- writing GGUF as llama.cpp does (independent of the importer's code) ----

/// llama.cpp's tensor name for a Hugging Face one.
fn gguf_name(hf: &str) -> String {
    let top = [
        ("model.embed_tokens.weight", "token_embd.weight"),
        ("model.norm.weight", "output_norm.weight"),
        ("lm_head.weight", "output.weight"),
    ];
    if let Some((_, g)) = top.iter().find(|(h, _)| *h == hf) {
        return g.to_string();
    }
    let rest = hf.strip_prefix("model.layers.").unwrap();
    let (layer, rest) = rest.split_once('.').unwrap();
    let (module, suffix) = rest.rsplit_once('.').unwrap();
    let g = match module {
        "input_layernorm" => "attn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "post_attention_layernorm" => "ffn_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        other => panic!("no GGUF name for {other}"),
    };
    format!("blk.{layer}.{g}.{suffix}")
}

/// `LlamaModel.permute` of convert_hf_to_gguf.py:
/// `w.reshape(n_head, 2, rows // n_head // 2, *rest).swapaxes(1, 2).reshape(w.shape)`.
fn llama_cpp_permute(w: &Tensor, n_head: usize) -> Tensor {
    let rows = w.dims()[0];
    let rest = w.elem_count() / rows;
    w.reshape((n_head, 2, rows / n_head / 2, rest)).unwrap().transpose(1, 2).unwrap().contiguous().unwrap().reshape(w.shape()).unwrap()
}

/// The tokenizer as `tokenizer.ggml.*` metadata: tokens by id, CONTROL (3) for special tokens,
/// NORMAL (1) otherwise, merges as "a b".
fn tokenizer_metadata(tok: &Tokenizer) -> Vec<(String, Value)> {
    let j: serde_json::Value = serde_json::from_slice(&tok.to_json_bytes().unwrap()).unwrap();
    let n = tok.vocab_size();
    let mut tokens = vec![None; n];
    let mut types = vec![1i32; n];
    for (t, id) in j["model"]["vocab"].as_object().unwrap() {
        tokens[id.as_u64().unwrap() as usize] = Some(t.clone());
    }
    for a in j["added_tokens"].as_array().unwrap() {
        let id = a["id"].as_u64().unwrap() as usize;
        tokens[id] = Some(a["content"].as_str().unwrap().to_string());
        if a["special"].as_bool().unwrap() {
            types[id] = 3;
        }
    }
    let merges: Vec<Value> = j["model"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| match m {
            serde_json::Value::String(s) => Value::String(s.clone()),
            pair => Value::String(format!("{} {}", pair[0].as_str().unwrap(), pair[1].as_str().unwrap())),
        })
        .collect();
    let tokens: Vec<Value> = tokens.into_iter().map(|t| Value::String(t.expect("dense token ids"))).collect();
    vec![
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String("default".into())),
        ("tokenizer.ggml.tokens".into(), Value::Array(tokens)),
        ("tokenizer.ggml.token_type".into(), Value::Array(types.into_iter().map(Value::I32).collect())),
        ("tokenizer.ggml.merges".into(), Value::Array(merges)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(tok.eos_id())),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
        ("tokenizer.chat_template".into(), Value::String(CHAT_TEMPLATE.into())),
    ]
}

fn metadata(arch: &str, cfg: &LlamaConfig, tok: &Tokenizer) -> Vec<(String, Value)> {
    let k = |s: &str| format!("{arch}.{s}");
    let u = |v: usize| Value::U32(v as u32);
    let mut md = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        (k("context_length"), u(cfg.max_position_embeddings)),
        (k("embedding_length"), u(cfg.hidden_size)),
        (k("block_count"), u(cfg.num_hidden_layers)),
        (k("feed_forward_length"), u(cfg.intermediate_size)),
        (k("attention.head_count"), u(cfg.num_attention_heads)),
        (k("attention.head_count_kv"), u(cfg.num_key_value_heads)),
        (k("rope.freq_base"), Value::F32(cfg.rope_theta as f32)),
        (k("rope.dimension_count"), u(cfg.head_dim())),
        (k("attention.layer_norm_rms_epsilon"), Value::F32(cfg.rms_norm_eps as f32)),
        (k("vocab_size"), u(cfg.vocab_size)),
    ];
    md.extend(tokenizer_metadata(tok));
    md
}

/// GGUF tensors: llama.cpp names, q/k permuted for "llama", 1-D tensors kept f32 (as llama.cpp
/// does), matrices in `qtype`.
fn gguf_tensors(arch: &str, t: &Tiny, qtype: GgmlDType) -> Vec<(String, QTensor)> {
    let mut names: Vec<&String> = t.tensors.keys().collect();
    names.sort();
    names
        .into_iter()
        .map(|hf| {
            let mut w = t.tensors[hf].clone();
            if arch == "llama" && hf.contains("q_proj.") {
                w = llama_cpp_permute(&w, t.cfg.num_attention_heads);
            }
            if arch == "llama" && hf.contains("k_proj.") {
                w = llama_cpp_permute(&w, t.cfg.num_key_value_heads);
            }
            let q = if w.rank() == 1 { GgmlDType::F32 } else { qtype };
            (gguf_name(hf), QTensor::quantize(&w, q).unwrap())
        })
        .collect()
}

fn write_gguf(path: &Path, md: &[(String, Value)], tensors: &[(String, QTensor)]) {
    let md: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut f, &md, &ts).unwrap();
}

fn write_tiny(path: &Path, arch: &str, t: &Tiny, qtype: GgmlDType) {
    write_gguf(path, &metadata(arch, &t.cfg, &t.tok), &gguf_tensors(arch, t, qtype));
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn sample_ids(tok: &Tokenizer) -> Vec<u32> {
    let ids = tok.encode("Ada Smith was born in Paris. She works at Nokia and loves chess.").unwrap();
    assert!(ids.len() > 8 && ids.len() < 64);
    ids
}

// ---- tests ----

#[test]
fn f32_import_gives_the_original_logits_tokenizer_and_config() {
    let t = tiny(false, true);
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("tiny.gguf");
    write_tiny(&gguf, "llama", &t, GgmlDType::F32);
    let out = dir.path().join("imported");
    let report = import_gguf(&gguf, &out, WeightDtype::F32).unwrap();
    assert_eq!(report.tensors, t.tensors.len());

    let loaded = load_model_dir(&out, &Device::Cpu).unwrap();
    let mut want = t.cfg.clone();
    want.eos_token_id = Some(t.tok.eos_id());
    assert_eq!(loaded.model.cfg, want, "config.json carries every hyperparameter");

    let ids = sample_ids(&t.tok);
    let original = logits(&model(&t.cfg, &t.tensors), &ids);
    let imported = logits(&loaded.model, &ids);
    let diff = max_abs_diff(&original, &imported);
    assert!(diff <= 1e-5, "f32 import: logits differ by {diff}");

    // The check is sensitive to the permutation: q/k left in llama.cpp's order change the logits.
    let mut permuted = t.tensors.clone();
    for (name, w) in permuted.iter_mut() {
        if name.contains("q_proj.") {
            *w = llama_cpp_permute(w, t.cfg.num_attention_heads);
        } else if name.contains("k_proj.") {
            *w = llama_cpp_permute(w, t.cfg.num_key_value_heads);
        }
    }
    let wrong = max_abs_diff(&original, &logits(&model(&t.cfg, &permuted), &ids));
    assert!(wrong > 100.0 * 1e-5, "a missing un-permutation would change the logits by only {wrong}");

    for text in TEXTS {
        let ids = t.tok.encode(text).unwrap();
        assert_eq!(loaded.tokenizer.encode(text).unwrap(), ids, "{text:?}");
        assert_eq!(loaded.tokenizer.decode(&ids).unwrap(), *text);
    }
    assert_eq!(loaded.tokenizer.eos_id(), t.tok.eos_id());
    let tc = read_json(&out.join("tokenizer_config.json"));
    assert_eq!(tc["chat_template"], CHAT_TEMPLATE);
    assert_eq!(tc["eos_token"], "<|endoftext|>");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 2, "only the GGUF file and the imported folder: {leftovers:?}");
}

#[test]
fn q8_0_tied_import_is_close_and_bf16_output_loads() {
    let t = tiny(true, false);
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("tiny-q8.gguf");
    write_tiny(&gguf, "llama", &t, GgmlDType::Q8_0);
    let out = dir.path().join("q8");
    import_gguf(&gguf, &out, WeightDtype::F32).unwrap();
    let cfg = read_json(&out.join("config.json"));
    assert_eq!(cfg["tie_word_embeddings"], true, "no output.weight means tied embeddings");
    let loaded = load_model_dir(&out, &Device::Cpu).unwrap();
    assert!(loaded.store.get("lm_head.weight").is_none());

    let ids = sample_ids(&t.tok);
    let original = logits(&model(&t.cfg, &t.tensors), &ids);
    let q8 = logits(&loaded.model, &ids);
    let rel = max_abs_diff(&original, &q8) / max_abs(&original);
    println!("Q8_0: max |Δlogit| / max |logit| = {rel:.5}");
    assert!(rel < Q8_0_TOLERANCE, "Q8_0 logits off by {rel} of their scale");

    let f32_gguf = dir.path().join("tiny-f32.gguf");
    write_tiny(&f32_gguf, "llama", &t, GgmlDType::F32);
    let out = dir.path().join("bf16");
    import_gguf(&f32_gguf, &out, WeightDtype::Bf16).unwrap();
    let st = candle_core::safetensors::load(out.join("model.safetensors"), &Device::Cpu).unwrap();
    assert!(st.values().all(|t| t.dtype() == DType::BF16));
    assert_eq!(read_json(&out.join("config.json"))["torch_dtype"], "bfloat16");
    let bf16 = logits(&load_model_dir(&out, &Device::Cpu).unwrap().model, &ids);
    let rel = max_abs_diff(&original, &bf16) / max_abs(&original);
    println!("bf16: max |Δlogit| / max |logit| = {rel:.5}");
    assert!(rel < BF16_TOLERANCE, "bf16 logits off by {rel} of their scale");
}

/// Qwen2: q/k/v biases, and no permutation (llama.cpp's Qwen2 RoPE is rotate-half too).
#[test]
fn qwen2_import_is_exact() {
    let t = tiny(true, true);
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("qwen.gguf");
    write_tiny(&gguf, "qwen2", &t, GgmlDType::F32);
    let out = dir.path().join("qwen");
    import_gguf(&gguf, &out, WeightDtype::F32).unwrap();
    assert_eq!(read_json(&out.join("config.json"))["model_type"], "qwen2");
    let loaded = load_model_dir(&out, &Device::Cpu).unwrap();
    let ids = sample_ids(&t.tok);
    let diff = max_abs_diff(&logits(&model(&t.cfg, &t.tensors), &ids), &logits(&loaded.model, &ids));
    assert!(diff <= 1e-5, "qwen2 import: logits differ by {diff}");
}

#[test]
fn a_failed_import_leaves_no_output_folder() {
    let t = tiny(false, false);
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("tiny.gguf");
    write_tiny(&gguf, "llama", &t, GgmlDType::F32);
    let bytes = std::fs::read(&gguf).unwrap();
    // Cut in the tensor data (the last tensor is incomplete), and in the header.
    for (cut, what) in [(bytes.len() - 100, "tensor"), (200, "header")] {
        let bad = dir.path().join(format!("cut-{what}.gguf"));
        std::fs::write(&bad, &bytes[..cut]).unwrap();
        let out = dir.path().join(format!("out-{what}"));
        let err = format!("{:#}", import_gguf(&bad, &out, WeightDtype::F32).unwrap_err());
        assert!(err.contains(&format!("cut-{what}.gguf")), "the error names the file: {err}");
        assert!(!out.exists(), "a failed import ({what}) left {}", out.display());
    }
    let entries: Vec<String> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
    assert!(entries.iter().all(|e| e.ends_with(".gguf")), "staging folders left behind: {entries:?}");
}

#[test]
fn refuses_a_non_empty_output_folder() {
    let t = tiny(false, false);
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("tiny.gguf");
    write_tiny(&gguf, "llama", &t, GgmlDType::F32);
    let out = dir.path().join("taken");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep.txt"), b"mine").unwrap();
    let err = import_gguf(&gguf, &out, WeightDtype::F32).unwrap_err().to_string();
    assert!(err.contains("taken") && err.contains("already exists"), "{err}");
    assert_eq!(std::fs::read(out.join("keep.txt")).unwrap(), b"mine");
}

#[test]
fn unsupported_input_is_an_error_naming_it() {
    let t = tiny(false, false);
    let dir = tempfile::tempdir().unwrap();
    let tensors = gguf_tensors("llama", &t, GgmlDType::F32);
    let good = metadata("llama", &t.cfg, &t.tok);
    let import_err = |name: &str, md: Vec<(String, Value)>, tensors: &[(String, QTensor)]| -> String {
        let path = dir.path().join(format!("{name}.gguf"));
        write_gguf(&path, &md, tensors);
        let out = dir.path().join(name);
        let err = format!("{:#}", import_gguf(&path, &out, WeightDtype::F32).unwrap_err());
        assert!(!out.exists());
        err
    };
    let set = |key: &str, v: Value| -> Vec<(String, Value)> {
        good.iter().map(|(k, old)| (k.clone(), if k == key { v.clone() } else { old.clone() })).collect()
    };

    let err = import_err("mamba", set("general.architecture", Value::String("mamba".into())), &tensors);
    assert!(err.contains("general.architecture") && err.contains("mamba"), "{err}");

    let without: Vec<_> = good.iter().filter(|(k, _)| k != "llama.feed_forward_length").cloned().collect();
    let err = import_err("no-ffn", without, &tensors);
    assert!(err.contains("llama.feed_forward_length") && err.contains("missing"), "{err}");

    let err = import_err("spm", set("tokenizer.ggml.model", Value::String("llama".into())), &tensors);
    assert!(err.contains("tokenizer.ggml.model"), "{err}");

    let err = import_err("pre", set("tokenizer.ggml.pre", Value::String("mystery".into())), &tensors);
    assert!(err.contains("tokenizer.ggml.pre") && err.contains("mystery"), "{err}");

    let err = import_err("wrong-type", set("llama.block_count", Value::String("two".into())), &tensors);
    assert!(err.contains("llama.block_count"), "{err}");

    let fewer: Vec<_> = tensors.iter().filter(|(n, _)| n != "blk.1.ffn_up.weight").map(|(n, q)| (n.clone(), requant(q))).collect();
    let err = import_err("no-tensor", good.clone(), &fewer);
    assert!(err.contains("blk.1.ffn_up.weight") && err.contains("missing"), "{err}");

    let mut extra: Vec<_> = tensors.iter().map(|(n, q)| (n.clone(), requant(q))).collect();
    extra.push(("blk.0.attn_qkv.weight".into(), requant(&tensors[0].1)));
    let err = import_err("extra-tensor", good.clone(), &extra);
    assert!(err.contains("blk.0.attn_qkv.weight"), "{err}");
}

/// A copy of a QTensor (it is not Clone).
fn requant(q: &QTensor) -> QTensor {
    QTensor::quantize(&q.dequantize(&Device::Cpu).unwrap(), q.dtype()).unwrap()
}

#[test]
fn the_cli_imports_and_the_folder_generates() {
    let t = tiny(false, false);
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("tiny.gguf");
    write_tiny(&gguf, "llama", &t, GgmlDType::Q8_0);
    let out = dir.path().join("cli");
    let memtune = |args: &[&str]| std::process::Command::new(env!("CARGO_BIN_EXE_memtune")).args(args).output().unwrap();
    let (g, o) = (gguf.to_str().unwrap(), out.to_str().unwrap());

    let r = memtune(&["import", "--gguf", g, "--out", o, "--dtype", "f16"]);
    assert!(!r.status.success() && String::from_utf8_lossy(&r.stderr).contains("f16"));
    let r = memtune(&["import", "--gguf", g, "--out", o]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let report: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(report["architecture"], "llama");
    assert_eq!(report["tensors"], t.tensors.len());
    let r = memtune(&["generate", "--model", o, "--prompt", "Ada Smith", "--max-new-tokens", "4"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
}
