//! Small shared helpers: seeded RNG streams and stable hashing.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// FNV-1a: a stable hash (unlike std's, it does not change between runs or versions).
pub fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for p in parts {
        for b in *p {
            h ^= *b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// An RNG for one named purpose, derived from the run seed, so that adding a consumer elsewhere
/// does not shift anyone else's random stream.
pub fn rng_for(seed: u64, purpose: &str) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(stable_hash(&[&seed.to_le_bytes(), purpose.as_bytes()]))
}

/// A progress bar for long work (`label [=====>   ] pos/len eta`), drawn on stderr and hidden
/// when stderr is not a terminal.
pub fn progress_bar(label: &str, total: usize) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(label.to_string());
    bar
}
