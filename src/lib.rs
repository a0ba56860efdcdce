//! memtune: a continual-learning engine on candle.
//!
//! Layers (imports run one way): `ops` ← `model` ← `train`, `eval` ← `bench`, `seal` ← CLI.
//! `data`, `io` and `config` sit at the ground floor.

pub mod bench;
pub mod config;
pub mod data;
pub mod device;
pub mod error;
pub mod eval;
pub mod io;
pub mod model;
pub mod ops;
pub mod seal;
pub mod train;
pub mod util;

pub use error::MemtuneError;
