//! Tokenizers: load tokenizer.json, train BPE.
