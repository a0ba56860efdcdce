//! What the CLI's commands run that is more than one library call: `memtune finetune` and
//! `memtune demo`. The CLI parses arguments and opens the device; these do the work.

pub mod demo;
pub mod finetune;
