//! Progress bars for long work: step / total, loss, tokens/s, ETA. Hidden when stderr is not a
//! terminal (CI logs get the tracing lines instead).

use super::trainer::StepStats;
use indicatif::ProgressBar;
use std::time::Instant;

pub struct Progress {
    bar: ProgressBar,
    start: Instant,
    tokens: usize,
    label: String,
}

impl Progress {
    pub fn new(label: &str, done: usize, total: usize) -> Self {
        let bar = crate::util::progress_bar(label, total);
        bar.set_position(done as u64);
        Self { bar, start: Instant::now(), tokens: 0, label: label.to_string() }
    }

    pub fn update(&mut self, s: &StepStats) {
        self.tokens += s.tokens;
        let tps = self.tokens as f64 / self.start.elapsed().as_secs_f64().max(1e-9);
        self.bar.set_position(s.step as u64);
        self.bar.set_message(format!("loss {:.4} lr {:.2e} {:.0} tok/s", s.loss, s.lr, tps));
        if self.bar.is_hidden() && s.step.is_multiple_of(50) {
            tracing::info!("{} step {} loss {:.4} lr {:.2e} {:.0} tok/s", self.label, s.step, s.loss, s.lr, tps);
        }
    }

    pub fn tokens_per_s(&self) -> f64 {
        self.tokens as f64 / self.start.elapsed().as_secs_f64().max(1e-9)
    }

    pub fn finish(&self, s: &StepStats) {
        self.bar.finish_and_clear();
        tracing::info!("{} done: step {} loss {:.4} ({:.0} tok/s)", self.label, s.step, s.loss, self.tokens_per_s());
    }
}
