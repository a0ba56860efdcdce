//! The synthetic world (DESIGN.md §4): people with attributes, biographies, QA pairs, splits.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WorldConfig {
    pub seed: u64,
    /// People in the pretraining world whose QA pairs are in the training stream.
    pub n_qa_people: usize,
    /// People in the pretraining world seen only through biographies (their QA is held out).
    pub n_bio_only_people: usize,
    /// New people, to be learned later by finetuning.
    pub n_new_people: usize,
    /// People whose passages are reserved for SEAL.
    pub n_seal_people: usize,
}

impl Default for WorldConfig {
    fn default() -> Self {
        Self { seed: 0, n_qa_people: 500, n_bio_only_people: 500, n_new_people: 100, n_seal_people: 50 }
    }
}
