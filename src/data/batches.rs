//! Batches for training.
//!
//! Packed streams: documents, each followed by EOS, are concatenated into one token stream that is
//! cut into batches nanoGPT-style: a batch reads `batch·seq + 1` consecutive tokens, row r's inputs
//! are tokens `[r·seq, (r+1)·seq)` and its targets the same shifted by one, and the stream then
//! advances by `batch·seq`, so every token is a target exactly once.
//!
//! Resuming: document k of a stream is a pure function of (seed, k), so the stream position is just
//! (next document, offset into it). A run checkpoints a `DataPosition` and rebuilds the stream from
//! it; the following batches are identical to an uninterrupted run.
//!
//! Padded batches: variable-length sequences right-padded for fact finetuning, with
//! `ops::IGNORE_INDEX` targets where no loss should be taken.

use super::reading::ReadingConfig;
use super::synthetic::World;
use super::tokenizer::Tokenizer;
use crate::ops::IGNORE_INDEX;
use crate::util::{rng_for, stable_hash};
use crate::MemtuneError;
use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;

/// Inputs and targets, row-major (batch, seq).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    pub inputs: Vec<u32>,
    pub targets: Vec<u32>,
    pub batch: usize,
    pub seq: usize,
    /// For each of the batch·seq input positions, whether it is a real token; `None`: all are
    /// (packed batches). The training loop hands it to `ForwardCtx::token_mask`, so padding is
    /// left out of memory access accounting (its targets are `IGNORE_INDEX`, so it has no loss).
    pub mask: Option<Vec<bool>>,
}

impl Batch {
    /// (inputs, targets), both u32 of shape (batch, seq).
    pub fn to_tensors(&self, device: &Device) -> candle_core::Result<(Tensor, Tensor)> {
        let shape = (self.batch, self.seq);
        Ok((Tensor::from_vec(self.inputs.clone(), shape, device)?, Tensor::from_vec(self.targets.clone(), shape, device)?))
    }

    pub fn n_tokens(&self) -> usize {
        self.batch * self.seq
    }
}

/// Where a packed stream stands; serialisable into checkpoints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataPosition {
    /// "synthetic", "text" or a custom name.
    pub kind: String,
    /// Hex hash of what defines the document sequence (world config, qa_fraction, corpus text), so
    /// that resuming against different data is an error rather than a silent change.
    pub fingerprint: String,
    pub seed: u64,
    /// The document the next batch starts in, and how many of its tokens (EOS included) are consumed.
    pub next_doc: u64,
    pub doc_offset: usize,
    /// Batches drawn so far (informational).
    pub batches: u64,
}

pub trait BatchSource {
    fn next_batch(&mut self) -> Result<Batch>;
    fn position(&self) -> DataPosition;
}

/// Document k's tokens (without EOS). Must be a pure function of k: resuming relies on it.
pub trait DocSource {
    fn doc(&mut self, index: u64) -> Result<Vec<u32>>;
}

impl<F: FnMut(u64) -> Result<Vec<u32>>> DocSource for F {
    fn doc(&mut self, index: u64) -> Result<Vec<u32>> {
        self(index)
    }
}

/// A packed stream over any document source.
pub struct PackedStream<S> {
    source: S,
    eos: u32,
    batch: usize,
    seq: usize,
    kind: String,
    fingerprint: String,
    seed: u64,
    next_doc: u64,
    doc_offset: usize,
    batches: u64,
    /// The tokens (EOS included) of the last document read; reads only move forward.
    cache: Option<(u64, Vec<u32>)>,
}

impl<S: DocSource> PackedStream<S> {
    /// `kind`, `seed` and `fingerprint` identify the document sequence in `DataPosition`s.
    pub fn new(source: S, eos: u32, batch: usize, seq: usize, kind: &str, seed: u64, fingerprint: u64) -> Result<Self> {
        if batch == 0 || seq == 0 {
            bail!("packed batches need batch ≥ 1 and seq ≥ 1 (got batch {batch}, seq {seq})");
        }
        Ok(Self {
            source,
            eos,
            batch,
            seq,
            kind: kind.to_string(),
            fingerprint: format!("{fingerprint:016x}"),
            seed,
            next_doc: 0,
            doc_offset: 0,
            batches: 0,
            cache: None,
        })
    }

    /// Continue from `pos`, which must come from a stream over the same documents.
    pub fn seek(&mut self, pos: &DataPosition) -> Result<()> {
        if pos.kind != self.kind || pos.fingerprint != self.fingerprint || pos.seed != self.seed {
            return Err(MemtuneError::Other(format!(
                "cannot resume data stream: checkpoint has {} (seed {}, fingerprint {}) but this run has {} (seed {}, fingerprint {}); \
                 the data config changed",
                pos.kind, pos.seed, pos.fingerprint, self.kind, self.seed, self.fingerprint
            ))
            .into());
        }
        self.next_doc = pos.next_doc;
        self.doc_offset = pos.doc_offset;
        self.batches = pos.batches;
        self.cache = None;
        Ok(())
    }

    fn doc_tokens(&mut self, k: u64) -> Result<&[u32]> {
        if self.cache.as_ref().is_none_or(|(i, _)| *i != k) {
            let mut t = self.source.doc(k)?;
            t.push(self.eos);
            self.cache = Some((k, t));
        }
        Ok(&self.cache.as_ref().unwrap().1)
    }

    /// Append `n` tokens starting at (doc, offset) to `out`; returns the position after them,
    /// moved to the next document when this one is used up.
    fn read(&mut self, (mut doc, mut off): (u64, usize), mut n: usize, out: &mut Vec<u32>) -> Result<(u64, usize)> {
        while n > 0 {
            let toks = self.doc_tokens(doc)?;
            if off > toks.len() {
                bail!("data position offset {off} is past the end of document {doc} ({} tokens)", toks.len());
            }
            let take = n.min(toks.len() - off);
            out.extend_from_slice(&toks[off..off + take]);
            (off, n) = (off + take, n - take);
            if off == toks.len() {
                (doc, off) = (doc + 1, 0);
            }
        }
        Ok((doc, off))
    }
}

impl<S: DocSource> BatchSource for PackedStream<S> {
    fn next_batch(&mut self) -> Result<Batch> {
        let (b, t) = (self.batch, self.seq);
        let mut buf = Vec::with_capacity(b * t + 1);
        let after = self.read((self.next_doc, self.doc_offset), b * t, &mut buf)?;
        // The last target is the next batch's first input: peek it without advancing.
        self.read(after, 1, &mut buf)?;
        (self.next_doc, self.doc_offset) = after;
        self.batches += 1;
        let mut inputs = Vec::with_capacity(b * t);
        let mut targets = Vec::with_capacity(b * t);
        for r in 0..b {
            inputs.extend_from_slice(&buf[r * t..(r + 1) * t]);
            targets.extend_from_slice(&buf[r * t + 1..(r + 1) * t + 1]);
        }
        Ok(Batch { inputs, targets, batch: b, seq: t, mask: None })
    }

    fn position(&self) -> DataPosition {
        DataPosition {
            kind: self.kind.clone(),
            fingerprint: self.fingerprint.clone(),
            seed: self.seed,
            next_doc: self.next_doc,
            doc_offset: self.doc_offset,
            batches: self.batches,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The synthetic world's pretraining stream.

pub struct SyntheticDocs {
    world: Arc<World>,
    tokenizer: Tokenizer,
    qa_fraction: f64,
    reading: ReadingConfig,
    rng: ChaCha8Rng,
}

impl DocSource for SyntheticDocs {
    fn doc(&mut self, index: u64) -> Result<Vec<u32>> {
        // One ChaCha stream per document: document k needs no draws for documents before it.
        let mut rng = self.rng.clone();
        rng.set_stream(index);
        let text = match self.reading.document(&self.world, &mut rng) {
            Some(d) => d,
            None => self.world.pretraining_document(&mut rng, self.qa_fraction),
        };
        self.tokenizer.encode(&text)
    }
}

/// Packed batches of `World::pretraining_document`s (bios and, with probability `qa_fraction`,
/// QA texts of `qa_people`).
pub struct SyntheticStream(PackedStream<SyntheticDocs>);

impl SyntheticStream {
    pub fn new(world: impl Into<Arc<World>>, tokenizer: Tokenizer, seed: u64, qa_fraction: f64, batch: usize, seq: usize) -> Result<Self> {
        let world = world.into();
        if !(0.0..=1.0).contains(&qa_fraction) {
            bail!("qa_fraction must be in [0, 1], got {qa_fraction}");
        }
        let w = &world.config;
        let fingerprint = stable_hash(&[
            &w.seed.to_le_bytes(),
            &[w.n_qa_people, w.n_bio_only_people, w.n_new_people, w.n_seal_people]
                .map(|n| n as u64)
                .iter()
                .flat_map(|n| n.to_le_bytes())
                .collect::<Vec<u8>>(),
            &qa_fraction.to_le_bytes(),
        ]);
        let eos = tokenizer.eos_id();
        let docs = SyntheticDocs { world, tokenizer, qa_fraction, reading: ReadingConfig::default(), rng: rng_for(seed, "synthetic-docs") };
        Ok(Self(PackedStream::new(docs, eos, batch, seq, "synthetic", seed, fingerprint)?))
    }

    /// With reader-world documents mixed in (`data.reading`); off leaves the stream as it is.
    pub fn with_reading(mut self, reading: &ReadingConfig) -> Result<Self> {
        if reading.is_off() {
            return Ok(self);
        }
        reading.validate().map_err(|(k, m)| anyhow::anyhow!("{k}: {m}"))?;
        let r = serde_json::to_string(reading)?;
        self.0.fingerprint = format!("{:016x}", stable_hash(&[self.0.fingerprint.as_bytes(), r.as_bytes()]));
        self.0.source.reading = reading.clone();
        Ok(self)
    }

    /// This stream continued from `pos` (taken from a stream built with the same arguments; a
    /// different seed, world, qa_fraction or `data.reading` is an error).
    pub fn from_position(mut self, pos: &DataPosition) -> Result<Self> {
        self.0.seek(pos)?;
        Ok(self)
    }
}

impl BatchSource for SyntheticStream {
    fn next_batch(&mut self) -> Result<Batch> {
        self.0.next_batch()
    }
    fn position(&self) -> DataPosition {
        self.0.position()
    }
}

// ---------------------------------------------------------------------------------------------
// Plain-text corpora.

pub struct TextDocs {
    docs: Vec<String>,
    tokenizer: Tokenizer,
    rng: ChaCha8Rng,
    /// The document order of the current epoch.
    epoch: Option<(u64, Vec<usize>)>,
}

impl DocSource for TextDocs {
    fn doc(&mut self, index: u64) -> Result<Vec<u32>> {
        let n = self.docs.len() as u64;
        let (e, i) = (index / n, (index % n) as usize);
        if self.epoch.as_ref().is_none_or(|(k, _)| *k != e) {
            // Each epoch is a fresh permutation from its own ChaCha stream.
            let mut rng = self.rng.clone();
            rng.set_stream(e);
            let mut order: Vec<usize> = (0..self.docs.len()).collect();
            order.shuffle(&mut rng);
            self.epoch = Some((e, order));
        }
        let d = self.epoch.as_ref().unwrap().1[i];
        self.tokenizer.encode(&self.docs[d])
    }
}

/// Packed batches of documents from text files (`data::text::read_documents`), reshuffled every epoch.
pub struct TextCorpusStream(PackedStream<TextDocs>);

impl TextCorpusStream {
    pub fn new(paths: &[impl AsRef<Path>], tokenizer: Tokenizer, seed: u64, batch: usize, seq: usize) -> Result<Self> {
        Self::from_documents(super::text::read_documents(paths)?, tokenizer, seed, batch, seq)
    }

    pub fn from_documents(docs: Vec<String>, tokenizer: Tokenizer, seed: u64, batch: usize, seq: usize) -> Result<Self> {
        if docs.is_empty() {
            return Err(MemtuneError::Other("the text corpus has no documents".into()).into());
        }
        let mut parts: Vec<&[u8]> = docs.iter().map(|d| d.as_bytes()).collect();
        let n = (docs.len() as u64).to_le_bytes();
        parts.push(&n);
        let fingerprint = stable_hash(&parts);
        let eos = tokenizer.eos_id();
        let src = TextDocs { docs, tokenizer, rng: rng_for(seed, "text-epochs"), epoch: None };
        Ok(Self(PackedStream::new(src, eos, batch, seq, "text", seed, fingerprint)?))
    }

    /// This stream continued from `pos` (taken from a stream over the same documents and seed).
    pub fn from_position(mut self, pos: &DataPosition) -> Result<Self> {
        self.0.seek(pos)?;
        Ok(self)
    }

    pub fn n_documents(&self) -> usize {
        self.0.source.docs.len()
    }
}

impl BatchSource for TextCorpusStream {
    fn next_batch(&mut self) -> Result<Batch> {
        self.0.next_batch()
    }
    fn position(&self) -> DataPosition {
        self.0.position()
    }
}

// ---------------------------------------------------------------------------------------------
// Padded batches of variable-length sequences.

/// Right-padded (batch, seq) rows. Row i holds sequence i shifted: inputs `s[..n-1]`, targets
/// `s[1..]`; padding has `pad_id` inputs, `IGNORE_INDEX` targets and mask 0. Right padding keeps
/// causal attention correct for the real tokens without an attention mask.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PaddedBatch {
    pub inputs: Vec<u32>,
    pub targets: Vec<u32>,
    /// 1 where the input is a real token.
    pub mask: Vec<u8>,
    pub batch: usize,
    pub seq: usize,
}

impl PaddedBatch {
    /// Loss on every next token of every sequence.
    pub fn from_sequences(seqs: &[Vec<u32>], pad_id: u32) -> Result<Self> {
        let pairs: Vec<(&[u32], &[u32])> = seqs.iter().map(|s| (&s[..s.len().min(1)], &s[s.len().min(1)..])).collect();
        Self::build(&pairs, pad_id)
    }

    /// Loss only on the completion tokens: each row is `prompt ++ completion`, and positions
    /// predicting prompt tokens get `IGNORE_INDEX`.
    pub fn from_prompt_completions(pairs: &[(Vec<u32>, Vec<u32>)], pad_id: u32) -> Result<Self> {
        let pairs: Vec<(&[u32], &[u32])> = pairs.iter().map(|(p, c)| (p.as_slice(), c.as_slice())).collect();
        Self::build(&pairs, pad_id)
    }

    fn build(pairs: &[(&[u32], &[u32])], pad_id: u32) -> Result<Self> {
        if pairs.is_empty() {
            bail!("a padded batch needs at least one sequence");
        }
        for (i, (p, c)) in pairs.iter().enumerate() {
            if p.is_empty() || c.is_empty() {
                bail!("sequence {i} needs at least one context token and one target token (got {} + {})", p.len(), c.len());
            }
        }
        let seq = pairs.iter().map(|(p, c)| p.len() + c.len() - 1).max().unwrap();
        let batch = pairs.len();
        let (mut inputs, mut targets, mut mask) = (vec![pad_id; batch * seq], vec![IGNORE_INDEX; batch * seq], vec![0u8; batch * seq]);
        for (r, (p, c)) in pairs.iter().enumerate() {
            let full: Vec<u32> = p.iter().chain(c.iter()).copied().collect();
            let n = full.len() - 1;
            let row = r * seq;
            inputs[row..row + n].copy_from_slice(&full[..n]);
            mask[row..row + n].fill(1);
            // Position j predicts full[j + 1]; only completion tokens (index ≥ p.len()) count.
            let first = p.len() - 1;
            targets[row + first..row + n].copy_from_slice(&full[first + 1..]);
        }
        Ok(Self { inputs, targets, mask, batch, seq })
    }

    /// (inputs u32, targets u32, mask f32), each (batch, seq).
    pub fn to_tensors(&self, device: &Device) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        let shape = (self.batch, self.seq);
        let mask: Vec<f32> = self.mask.iter().map(|&m| m as f32).collect();
        Ok((
            Tensor::from_vec(self.inputs.clone(), shape, device)?,
            Tensor::from_vec(self.targets.clone(), shape, device)?,
            Tensor::from_vec(mask, shape, device)?,
        ))
    }

    /// Targets that carry loss.
    pub fn n_target_tokens(&self) -> usize {
        self.targets.iter().filter(|&&t| t != IGNORE_INDEX).count()
    }

    /// As a training [`Batch`] whose mask marks the real tokens.
    pub fn to_batch(&self) -> Batch {
        Batch {
            inputs: self.inputs.clone(),
            targets: self.targets.clone(),
            batch: self.batch,
            seq: self.seq,
            mask: Some(self.mask.iter().map(|&m| m != 0).collect()),
        }
    }
}

/// A fixed list of batches, each served `repeat` times in a row, then the next; an error after
/// the last. `position` reports how many batches were drawn (kind "list").
pub struct BatchList {
    batches: Vec<Batch>,
    repeat: usize,
    drawn: u64,
}

impl BatchList {
    pub fn new(batches: Vec<Batch>, repeat: usize) -> Result<Self> {
        if repeat == 0 {
            bail!("a batch list needs repeat ≥ 1");
        }
        Ok(Self { batches, repeat, drawn: 0 })
    }

    /// Batches it will serve in all.
    pub fn len(&self) -> usize {
        self.batches.len() * self.repeat
    }

    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }
}

impl BatchSource for BatchList {
    fn next_batch(&mut self) -> Result<Batch> {
        let i = self.drawn as usize / self.repeat;
        let b = self.batches.get(i).ok_or_else(|| anyhow::anyhow!("the batch list is used up after {} batches", self.len()))?.clone();
        self.drawn += 1;
        Ok(b)
    }

    fn position(&self) -> DataPosition {
        DataPosition { kind: "list".into(), fingerprint: String::new(), seed: 0, next_doc: self.drawn, doc_offset: 0, batches: self.drawn }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::synthetic::WorldConfig;
    use crate::data::tokenizer::train_bpe;

    fn world_and_tok() -> (Arc<World>, Tokenizer) {
        let w = World::generate(&WorldConfig { seed: 2, n_qa_people: 20, n_bio_only_people: 20, n_new_people: 5, n_seal_people: 5 });
        let tok = train_bpe(w.corpus_sample(100, 0), 320).unwrap();
        (Arc::new(w), tok)
    }

    fn take(s: &mut dyn BatchSource, n: usize) -> Vec<Batch> {
        (0..n).map(|_| s.next_batch().unwrap()).collect()
    }

    /// Documents of varying length, some longer than a batch, some empty.
    fn counting(k: u64) -> Result<Vec<u32>> {
        Ok((0..(k * 7 % 23) as u32).map(|i| 1000 + k as u32 * 100 + i).collect())
    }

    #[test]
    fn packing_shifts_by_one_and_covers_the_stream() {
        let mut s = PackedStream::new(counting, 0, 3, 5, "test", 0, 0).unwrap();
        let batches = take(&mut s, 6);
        let mut stream: Vec<u32> = (0..40).flat_map(|k| counting(k).unwrap().into_iter().chain([0])).collect();
        stream.truncate(6 * 15 + 1);
        let mut seen = vec![];
        for b in &batches {
            assert_eq!((b.inputs.len(), b.targets.len()), (15, 15));
            for r in 0..3 {
                assert_eq!(b.inputs[r * 5 + 1..r * 5 + 5], b.targets[r * 5..r * 5 + 4]);
            }
            seen.extend_from_slice(&b.inputs);
        }
        assert_eq!(seen, stream[..90]);
        assert_eq!(batches.last().unwrap().targets[14], stream[90]);
        for w in batches.windows(2) {
            assert_eq!(w[0].targets[14], w[1].inputs[0]);
        }
    }

    #[test]
    fn synthetic_stream_is_deterministic_and_resumable() {
        let (w, tok) = world_and_tok();
        let mut a = SyntheticStream::new(w.clone(), tok.clone(), 5, 0.3, 2, 16).unwrap();
        let all = take(&mut a, 5);
        let mut b = SyntheticStream::new(w.clone(), tok.clone(), 5, 0.3, 2, 16).unwrap();
        let first = take(&mut b, 2);
        assert_eq!(first, all[..2]);
        let pos = b.position();
        assert_eq!(pos.batches, 2);
        // Through JSON, as a checkpoint would store it.
        let pos: DataPosition = serde_json::from_str(&serde_json::to_string(&pos).unwrap()).unwrap();
        let c = SyntheticStream::new(w.clone(), tok.clone(), 5, 0.3, 2, 16).unwrap();
        let mut c = c.from_position(&pos).unwrap();
        assert_eq!(take(&mut c, 3), all[2..]);
        // A different seed gives a different stream; different data refuses to resume.
        let mut d = SyntheticStream::new(w.clone(), tok.clone(), 6, 0.3, 2, 16).unwrap();
        assert_ne!(d.next_batch().unwrap(), all[0]);
        assert!(SyntheticStream::new(w.clone(), tok.clone(), 5, 0.5, 2, 16).unwrap().from_position(&pos).is_err());
        assert!(SyntheticStream::new(w, tok.clone(), 6, 0.3, 2, 16).unwrap().from_position(&pos).is_err());
        // Text decodes back to world documents separated by EOS.
        let text = tok.decode(&all[0].inputs).unwrap();
        assert!(text.contains(crate::data::tokenizer::ENDOFTEXT), "{text}");
    }

    #[test]
    fn text_stream_resumes_across_epochs() {
        let (_, tok) = world_and_tok();
        let docs: Vec<String> = (0..7).map(|i| format!("document {i} says hello")).collect();
        let mut a = TextCorpusStream::from_documents(docs.clone(), tok.clone(), 1, 2, 8).unwrap();
        let all = take(&mut a, 20);
        let mut b = TextCorpusStream::from_documents(docs.clone(), tok.clone(), 1, 2, 8).unwrap();
        take(&mut b, 10);
        let pos = b.position();
        assert!(pos.next_doc >= 7, "past the first epoch: {pos:?}");
        let mut c = TextCorpusStream::from_documents(docs, tok.clone(), 1, 2, 8).unwrap().from_position(&pos).unwrap();
        assert_eq!(take(&mut c, 10), all[10..]);
        // Every document appears once per epoch.
        let first: String = tok.decode(&all.iter().flat_map(|b| b.inputs.clone()).collect::<Vec<_>>()).unwrap();
        let epoch = first.split(crate::data::tokenizer::ENDOFTEXT).take(7).collect::<Vec<_>>();
        let mut ids: Vec<&str> = epoch.iter().map(|d| d.split(' ').nth(1).unwrap()).collect();
        ids.sort();
        assert_eq!(ids, ["0", "1", "2", "3", "4", "5", "6"]);
        assert!(TextCorpusStream::from_documents(vec![], tok, 1, 2, 8).is_err());
    }

    #[test]
    fn padded_batches() {
        let pb = PaddedBatch::from_sequences(&[vec![1, 2, 3, 4], vec![5, 6]], 9).unwrap();
        assert_eq!((pb.batch, pb.seq), (2, 3));
        assert_eq!(pb.inputs, [1, 2, 3, 5, 9, 9]);
        assert_eq!(pb.targets, [2, 3, 4, 6, IGNORE_INDEX, IGNORE_INDEX]);
        assert_eq!(pb.mask, [1, 1, 1, 1, 0, 0]);
        assert_eq!(pb.n_target_tokens(), 4);
        let pc = PaddedBatch::from_prompt_completions(&[(vec![1, 2, 3], vec![7, 8])], 0).unwrap();
        assert_eq!(pc.inputs, [1, 2, 3, 7]);
        assert_eq!(pc.targets, [IGNORE_INDEX, IGNORE_INDEX, 7, 8]);
        let (i, t, m) = pc.to_tensors(&Device::Cpu).unwrap();
        assert_eq!((i.dims(), t.dims(), m.dims()), (&[1, 4][..], &[1, 4][..], &[1, 4][..]));
        assert!(PaddedBatch::from_sequences(&[vec![1]], 0).is_err());
        assert!(PaddedBatch::from_sequences(&[], 0).is_err());
        let b = pb.to_batch();
        assert_eq!(b.mask, Some(vec![true, true, true, true, false, false]));
        assert_eq!((b.inputs, b.targets), (pb.inputs.clone(), pb.targets.clone()));
        let mut list = BatchList::new(vec![pb.to_batch(), pc.to_batch()], 2).unwrap();
        let got: Vec<usize> = (0..4).map(|_| list.next_batch().unwrap().seq).collect();
        assert_eq!(got, [3, 3, 4, 4]);
        assert!(list.next_batch().is_err());
    }
}
