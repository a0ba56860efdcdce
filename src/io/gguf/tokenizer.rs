//! `tokenizer.json` and `tokenizer_config.json` rebuilt from a GGUF file's `tokenizer.*`
//! metadata, as Hugging Face writes them for the same model.
//!
//! Only `tokenizer.ggml.model = "gpt2"` (byte-level BPE: GPT-2, SmolLM2, Llama 3, Qwen2) is
//! supported. The vocabulary is `tokenizer.ggml.tokens` (id = index) with the merges of
//! `tokenizer.ggml.merges` ("a b" strings); tokens typed CONTROL / UNKNOWN in
//! `tokenizer.ggml.token_type`, and the bos/eos/unk/pad tokens, become special added tokens,
//! USER_DEFINED ones plain added tokens. The pre-tokenizer depends on `tokenizer.ggml.pre`, named
//! after llama.cpp's `llama_vocab_pre_type`; an unknown one is an error, since a wrong
//! pre-tokenizer splits text differently from what the model was trained on, silently.

use super::metadata::Metadata;
use anyhow::{anyhow, bail, Result};
use serde_json::{json, Value};

/// llama.cpp's token types (`llama_token_type`).
const TOKEN_NORMAL: i64 = 1;
const TOKEN_UNKNOWN: i64 = 2;
const TOKEN_CONTROL: i64 = 3;
const TOKEN_USER_DEFINED: i64 = 4;

/// The split patterns of Hugging Face's Llama 3 and Qwen2 `tokenizer.json` (a `Split`
/// pre-tokenizer before a ByteLevel one without its own regex); llama.cpp uses the same.
const LLAMA3_PATTERN: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_PATTERN: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Both files, as JSON values.
pub struct TokenizerFiles {
    pub tokenizer: Value,
    pub tokenizer_config: Value,
}

pub fn build(md: &Metadata, context_length: usize) -> Result<TokenizerFiles> {
    let model = md.str("tokenizer.ggml.model")?;
    if model != "gpt2" {
        bail!(
            "GGUF {}: `tokenizer.ggml.model` is {model:?}; memtune rebuilds only \"gpt2\" (byte-level BPE) tokenizers",
            md.file.display()
        );
    }
    let tokens = md.strings("tokenizer.ggml.tokens")?;
    let types = md.ints_opt("tokenizer.ggml.token_type")?.unwrap_or_else(|| vec![TOKEN_NORMAL; tokens.len()]);
    if types.len() != tokens.len() {
        bail!(
            "GGUF {}: `tokenizer.ggml.token_type` has {} entries but `tokenizer.ggml.tokens` has {}",
            md.file.display(),
            types.len(),
            tokens.len()
        );
    }
    let special_id = |key: &str| -> Result<Option<usize>> {
        let Some(id) = md.u64_opt(key)? else { return Ok(None) };
        let id = id as usize;
        if id >= tokens.len() {
            bail!("GGUF {}: `{key}` = {id} is not a token id (the vocabulary has {})", md.file.display(), tokens.len());
        }
        Ok(Some(id))
    };
    let (bos, eos) = (special_id("tokenizer.ggml.bos_token_id")?, special_id("tokenizer.ggml.eos_token_id")?);
    let (unk, pad) = (special_id("tokenizer.ggml.unknown_token_id")?, special_id("tokenizer.ggml.padding_token_id")?);
    let named = [bos, eos, unk, pad];

    let mut vocab = serde_json::Map::with_capacity(tokens.len());
    let mut added = vec![];
    for (id, (tok, ty)) in tokens.iter().zip(&types).enumerate() {
        if vocab.insert(tok.to_string(), json!(id)).is_some() {
            bail!("GGUF {}: token {tok:?} appears twice in `tokenizer.ggml.tokens` (again at id {id})", md.file.display());
        }
        let special = matches!(*ty, TOKEN_CONTROL | TOKEN_UNKNOWN) || named.contains(&Some(id));
        if special || *ty == TOKEN_USER_DEFINED {
            added.push(added_token(id, tok, special));
        }
    }
    let merges = md
        .strings("tokenizer.ggml.merges")?
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let (a, b) = m
                .split_once(' ')
                .ok_or_else(|| anyhow!("GGUF {}: `tokenizer.ggml.merges`[{i}] = {m:?} is not two tokens", md.file.display()))?;
            Ok(json!([a, b]))
        })
        .collect::<Result<Vec<_>>>()?;
    let pre = md.str_opt("tokenizer.ggml.pre")?.unwrap_or("default");
    let (pre_tokenizer, ignore_merges) = pre_tokenizer(pre).ok_or_else(|| {
        anyhow!(
            "GGUF {}: `tokenizer.ggml.pre` = {pre:?} is a pre-tokenizer memtune does not know (known: {})",
            md.file.display(),
            KNOWN_PRE.join(", ")
        )
    })?;
    let add_bos = md.bool_opt("tokenizer.ggml.add_bos_token")?.unwrap_or(false);
    let name = |id: Option<usize>| id.map(|i| tokens[i]);
    let post_processor = match (add_bos, bos) {
        (true, Some(id)) => bos_template(tokens[id], id),
        _ => json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": true}),
    };
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": ignore_merges,
            "vocab": vocab, "merges": merges
        }
    });
    let mut config = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": add_bos,
        "add_eos_token": false,
        "clean_up_tokenization_spaces": false,
        "model_max_length": context_length,
        "bos_token": name(bos),
        "eos_token": name(eos),
        "unk_token": name(unk),
        "pad_token": name(pad),
    });
    if let Some(t) = md.str_opt("tokenizer.chat_template")? {
        config["chat_template"] = json!(t);
    }
    Ok(TokenizerFiles { tokenizer, tokenizer_config: config })
}

/// A post-processor that puts the BOS token before every sequence (`add_bos_token`).
fn bos_template(bos: &str, id: usize) -> Value {
    let mut special = serde_json::Map::new();
    special.insert(bos.to_string(), json!({"id": bos, "ids": [id], "tokens": [bos]}));
    json!({
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                 {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": special
    })
}

fn added_token(id: usize, content: &str, special: bool) -> Value {
    json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
           "normalized": !special, "special": special})
}

/// `tokenizer.ggml.pre` values this module maps (llama.cpp's names).
const KNOWN_PRE: &[&str] = &["default", "gpt-2", "gpt2", "smollm", "starcoder", "refact", "llama-bpe", "llama3", "qwen2"];

fn byte_level(use_regex: bool) -> Value {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex})
}

fn split(pattern: &str) -> Value {
    json!({"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false})
}

/// The pre-tokenizer of a `tokenizer.ggml.pre` value, and the BPE model's `ignore_merges`.
fn pre_tokenizer(pre: &str) -> Option<(Value, bool)> {
    Some(match pre {
        // GPT-2's regex, inside ByteLevel.
        "default" | "gpt-2" | "gpt2" => (byte_level(true), false),
        // llama.cpp: "\p{N}" then GPT-2's regex; Hugging Face: Digits(individual) + ByteLevel.
        "smollm" | "starcoder" | "refact" => {
            (json!({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level(true)]}), false)
        }
        "llama-bpe" | "llama3" => (json!({"type": "Sequence", "pretokenizers": [split(LLAMA3_PATTERN), byte_level(false)]}), true),
        "qwen2" => (json!({"type": "Sequence", "pretokenizers": [split(QWEN2_PATTERN), byte_level(false)]}), false),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer, PreTokenizerWrapper};

    /// The pieces a `tokenizer.ggml.pre` value splits `text` into (byte-level symbols).
    fn pieces(pre: &str, text: &str) -> Vec<String> {
        let (json, _) = pre_tokenizer(pre).unwrap();
        let p: PreTokenizerWrapper = serde_json::from_value(json).unwrap_or_else(|e| panic!("{pre}: {e}"));
        let mut s = PreTokenizedString::from(text);
        p.pre_tokenize(&mut s).unwrap();
        s.get_splits(OffsetReferential::Original, OffsetType::Byte).into_iter().map(|(t, _, _)| t.to_string()).collect()
    }

    #[test]
    fn every_known_pre_tokenizer_loads_and_splits_numbers_as_llama_cpp_does() {
        for pre in KNOWN_PRE {
            assert!(!pieces(pre, "Hi 12345!").is_empty(), "{pre}");
        }
        // GPT-2: one number piece; SmolLM/StarCoder: single digits; Llama 3: groups of up to 3;
        // Qwen2: single digits. ("Ġ" is the byte-level space.)
        assert_eq!(pieces("gpt2", "a 12345"), ["a", "Ġ12345"]);
        assert_eq!(pieces("smollm", "a 12345"), ["a", "Ġ", "1", "2", "3", "4", "5"]);
        assert_eq!(pieces("llama-bpe", "a 12345"), ["a", "Ġ", "123", "45"]);
        assert_eq!(pieces("qwen2", "a 12345"), ["a", "Ġ", "1", "2", "3", "4", "5"]);
        assert!(pre_tokenizer("mystery").is_none());
    }
}
