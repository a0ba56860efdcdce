//! Tokenizers: load a Hugging Face `tokenizer.json`, or train a byte-level BPE one.
//!
//! Trained tokenizers are GPT-2 style: ByteLevel pre-tokenizer and decoder without an added
//! prefix space, so every string round-trips exactly, and "<|endoftext|>" is id 0 (the
//! document separator and end-of-sequence token).
//!
//! Vocabulary rule: a memtune model's `vocab_size` is its tokenizer's (`check_vocab`: equal);
//! an imported model may have more embedding rows than tokens (`check_vocab_fits`: not fewer).

use crate::MemtuneError;
use anyhow::{anyhow, Context, Result};
use std::path::Path;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::AddedToken;

/// The special token of memtune-trained tokenizers.
pub const ENDOFTEXT: &str = "<|endoftext|>";

/// End-of-sequence names tried in order on loaded tokenizers (the first present is `eos_id`).
const EOS_NAMES: &[&str] = &[ENDOFTEXT, "</s>", "<|im_end|>", "<eos>", "<|end_of_text|>", "<|eot_id|>", "[SEP]"];
const BOS_NAMES: &[&str] = &["<|begin_of_text|>", "<s>", "<bos>", "<|startoftext|>", "[CLS]"];
const PAD_NAMES: &[&str] = &["<|pad|>", "<pad>", "[PAD]", "<|finetune_right_pad_id|>"];

#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    eos: u32,
    bos: Option<u32>,
    pad: Option<u32>,
    /// Every end-of-sequence-like token present (generation stops on any).
    stops: Vec<u32>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer").field("vocab_size", &self.vocab_size()).field("eos", &self.eos).finish()
    }
}

impl Tokenizer {
    /// Wrap a `tokenizers::Tokenizer`; fails if it has none of the known end-of-sequence tokens.
    pub fn from_inner(inner: tokenizers::Tokenizer) -> Result<Self> {
        let find = |names: &[&str]| names.iter().find_map(|n| inner.token_to_id(n));
        let stops: Vec<u32> = EOS_NAMES.iter().filter_map(|n| inner.token_to_id(n)).collect();
        let eos = *stops.first().ok_or_else(|| anyhow!("tokenizer has no end-of-sequence token (looked for {})", EOS_NAMES.join(", ")))?;
        let (bos, pad) = (find(BOS_NAMES), find(PAD_NAMES));
        Ok(Self { inner, eos, bos, pad, stops })
    }

    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| MemtuneError::Other(format!("cannot load tokenizer {}: {e}", path.display())))?;
        Self::from_inner(inner).with_context(|| format!("tokenizer {}", path.display()))
    }

    /// The `tokenizer.json` text as bytes (for writing into a checkpoint).
    pub fn to_json_bytes(&self) -> Result<Vec<u8>> {
        let s = self.inner.to_string(false).map_err(|e| MemtuneError::Other(format!("cannot serialise tokenizer: {e}")))?;
        Ok(s.into_bytes())
    }

    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        self.inner.save(path, false).map_err(|e| MemtuneError::Other(format!("cannot save tokenizer {}: {e}", path.display())).into())
    }

    /// Token ids of `text`, without any special tokens added around it.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(|e| anyhow!("cannot encode {text:?}: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// `text`'s tokens after an end-of-text token, as every training row starts: a memory model
    /// reads its slots by hidden states that this first token shapes, so a prompt asked without it
    /// does not read back the slots a fact was written to (docs/design.md).
    pub fn encode_after_eos(&self, text: &str) -> Result<Vec<u32>> {
        Ok([self.eos].into_iter().chain(self.encode(text)?).collect())
    }

    /// `text` framed as a training document: end-of-text, its tokens, end-of-text.
    pub fn encode_document(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = self.encode_after_eos(text)?;
        ids.push(self.eos);
        Ok(ids)
    }

    /// The text of `ids`; special tokens are kept, so `decode(encode(s)) == s` for trained tokenizers.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, false).map_err(|e| anyhow!("cannot decode {ids:?}: {e}"))
    }

    /// Rows an embedding table needs: one more than the largest id (added tokens included).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab(true).values().map(|&i| i as usize + 1).max().unwrap_or(0)
    }

    pub fn eos_id(&self) -> u32 {
        self.eos
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    pub fn pad_id(&self) -> Option<u32> {
        self.pad
    }

    /// All end-of-sequence-like ids present (e.g. both "<|endoftext|>" and "<|im_end|>").
    pub fn stop_ids(&self) -> &[u32] {
        &self.stops
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// For models whose vocabulary was sized from this tokenizer (every memtune-trained model:
    /// `model.vocab_size` is the tokenizer's): the sizes must be equal.
    pub fn check_vocab(&self, model_vocab: usize, path: &Path) -> Result<(), MemtuneError> {
        let tokenizer_vocab = self.vocab_size();
        if tokenizer_vocab != model_vocab {
            return Err(MemtuneError::VocabMismatch { path: path.to_path_buf(), tokenizer_vocab, model_vocab });
        }
        Ok(())
    }

    /// For imported models whose embedding table may be padded past the tokenizer (e.g. to a
    /// multiple of 64): every token id must have a row, extra rows are allowed.
    pub fn check_vocab_fits(&self, model_vocab: usize, path: &Path) -> Result<(), MemtuneError> {
        let tokenizer_vocab = self.vocab_size();
        if tokenizer_vocab > model_vocab {
            return Err(MemtuneError::VocabMismatch { path: path.to_path_buf(), tokenizer_vocab, model_vocab });
        }
        Ok(())
    }
}

/// Smallest trainable vocabulary: "<|endoftext|>" plus the 256 byte symbols.
pub const MIN_BPE_VOCAB: usize = 257;

/// Train a byte-level BPE tokenizer with "<|endoftext|>" as id 0 and exactly `vocab_size` ids.
/// When the corpus runs out of merges first (a small world has few distinct words), the rest are
/// reserved special tokens "<|reserved_N|>" that ordinary text never produces, so a model's
/// `vocab_size` never has to be tuned to the corpus; a warning says how many were real.
pub fn train_bpe<I, S>(texts: I, vocab_size: usize) -> Result<Tokenizer>
where
    I: IntoIterator<Item = S>,
    I::IntoIter: Send,
    S: AsRef<str> + Send,
{
    if vocab_size < MIN_BPE_VOCAB {
        return Err(MemtuneError::Other(format!(
            "a byte-level BPE vocabulary needs at least {MIN_BPE_VOCAB} tokens (256 bytes + {ENDOFTEXT}), got {vocab_size}"
        ))
        .into());
    }
    let byte_level = ByteLevel::new(false, true, true);
    let mut tk = tokenizers::Tokenizer::new(BPE::default());
    tk.with_pre_tokenizer(Some(byte_level));
    tk.with_decoder(Some(byte_level));
    let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(0)
        .show_progress(false)
        .special_tokens(vec![AddedToken::from(ENDOFTEXT, true)])
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build()
        .into();
    tk.train(&mut trainer, texts.into_iter()).map_err(|e| anyhow!("BPE training failed: {e}"))?;
    let learned = tk.get_vocab_size(true);
    if learned < vocab_size {
        tracing::warn!("the BPE corpus gave only {learned} tokens; padding to vocab_size = {vocab_size} with reserved tokens");
        let reserved: Vec<AddedToken> = (0..vocab_size - learned).map(|i| AddedToken::from(format!("<|reserved_{i}|>"), true)).collect();
        tk.add_special_tokens(&reserved);
    }
    let tok = Tokenizer::from_inner(tk)?;
    debug_assert_eq!((tok.eos_id(), tok.vocab_size()), (0, vocab_size));
    Ok(tok)
}

/// Train on text files (see `data::text::read_documents`), or on a sample of the default
/// synthetic world when `paths` is empty.
pub fn train_from_files(paths: &[impl AsRef<Path>], vocab_size: usize) -> Result<Tokenizer> {
    if paths.is_empty() {
        let world = super::synthetic::World::generate(&Default::default());
        return train_bpe(world.corpus_sample(5000, 0), vocab_size);
    }
    train_bpe(super::text::read_documents(paths)?, vocab_size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::synthetic::{World, WorldConfig};

    fn corpus() -> Vec<String> {
        let w = World::generate(&WorldConfig { seed: 1, n_qa_people: 40, n_bio_only_people: 40, n_new_people: 10, n_seal_people: 5 });
        w.corpus_sample(200, 0)
    }

    #[test]
    fn bpe_round_trips_with_exact_vocab() {
        let tok = train_bpe(corpus(), 400).unwrap();
        assert_eq!(tok.vocab_size(), 400);
        assert_eq!(tok.eos_id(), 0);
        assert_eq!(tok.token_to_id(ENDOFTEXT), Some(0));
        for text in ["Ada Smith was born in Paris.", "Q: Where does Kai Kim work? A: Nokia", "ünïcödé ☃ and\nnewlines\ttabs  "] {
            let ids = tok.encode(text).unwrap();
            assert_eq!(tok.decode(&ids).unwrap(), text);
        }
        // Prompt + continuation tokenizes the same as the whole text (evaluation relies on it).
        let (p, a) = (tok.encode("Q: Where was Ada Smith born? A:").unwrap(), tok.encode(" Paris").unwrap());
        assert_eq!(tok.encode("Q: Where was Ada Smith born? A: Paris").unwrap(), [p, a].concat());
        // The separator is one token when it appears in text.
        assert_eq!(tok.encode(ENDOFTEXT).unwrap(), vec![0]);
    }

    #[test]
    fn save_load_and_vocab_checks() {
        let tok = train_bpe(corpus(), 300).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/tokenizer.json");
        tok.save(&path).unwrap();
        let back = Tokenizer::from_file(&path).unwrap();
        assert_eq!(back.vocab_size(), 300);
        assert_eq!(back.encode("Lina Kim loves chess.").unwrap(), tok.encode("Lina Kim loves chess.").unwrap());
        assert!(back.check_vocab(300, &path).is_ok());
        assert!(matches!(back.check_vocab(512, &path), Err(MemtuneError::VocabMismatch { tokenizer_vocab: 300, model_vocab: 512, .. })));
        assert!(back.check_vocab(200, &path).is_err());
        assert!(back.check_vocab_fits(512, &path).is_ok());
        assert!(back.check_vocab_fits(299, &path).is_err());
        let err = Tokenizer::from_file(dir.path().join("missing.json")).unwrap_err().to_string();
        assert!(err.contains("missing.json"), "{err}");
    }

    #[test]
    fn trains_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let paths = vec![dir.path().join("c.jsonl")];
        let lines: Vec<String> = corpus().iter().map(|t| serde_json::json!({ "text": t }).to_string()).collect();
        std::fs::write(&paths[0], lines.join("\n")).unwrap();
        assert_eq!(train_from_files(&paths, 300).unwrap().vocab_size(), 300);
    }

    #[test]
    fn vocab_below_bytes_is_an_error_and_small_corpora_are_padded() {
        assert!(train_bpe(["abc"], 100).is_err());
        // A tiny corpus cannot fill a big vocabulary: the rest is reserved tokens.
        let t = train_bpe(["abc abc"], 1000).unwrap();
        assert_eq!(t.vocab_size(), 1000);
        assert_eq!(t.inner().get_vocab(true).len(), 1000);
        assert!(t.token_to_id("<|reserved_0|>").is_some_and(|i| i > 257));
        assert_eq!(t.decode(&t.encode("abc abd").unwrap()).unwrap(), "abc abd");
    }
}
