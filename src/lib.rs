//! memtune: a continual-learning engine on candle.
//!
//! Layers, bottom to top; a module imports only modules on floors below its own (`tests/layers.rs`
//! checks it):
//! `error`, `util`, `plot`, `device` → `io` → `ops` → `data` → `model` → `config` → `train` →
//! `eval` → `bench`, `seal` → `commands` → the CLI (`main.rs`), which alone opens the device.
//! docs/design.md ("Architecture") says what each owns.

pub mod bench;
pub mod commands;
pub mod config;
pub mod data;
pub mod device;
pub mod error;
pub mod eval;
pub mod io;
pub mod model;
pub mod ops;
pub mod plot;
pub mod seal;
pub mod train;
pub mod util;

pub use error::MemtuneError;
