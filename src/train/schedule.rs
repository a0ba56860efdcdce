//! Learning-rate schedule: linear warmup, then cosine, linear or no decay.
//!
//! `step` is the 0-based index of the optimiser step about to be taken. Warmup rises linearly
//! as lr·(step+1)/(warmup+1) (nanoGPT's form: never exactly 0, so the first step already
//! learns, and reaches lr at step = warmup). After warmup the rate decays from lr to
//! lr·min_lr_ratio, reaching it at step = cfg.steps and staying there for any later step
//! (e.g. when a run is extended past its planned length).

use crate::config::{ScheduleKind, TrainConfig};

/// Learning rate for optimiser step `step` (0-based).
pub fn lr_at(step: usize, cfg: &TrainConfig) -> f64 {
    let lr = cfg.lr;
    let warmup = cfg.warmup_steps;
    if step < warmup {
        return lr * (step + 1) as f64 / (warmup + 1) as f64;
    }
    let min_lr = lr * cfg.min_lr_ratio;
    let span = cfg.steps.saturating_sub(warmup);
    // With no room left for decay (steps ≤ warmup) the schedule sits at its end value.
    let progress = if span == 0 { 1.0 } else { ((step - warmup) as f64 / span as f64).min(1.0) };
    match cfg.schedule {
        ScheduleKind::Constant => lr,
        ScheduleKind::Linear => lr - (lr - min_lr) * progress,
        ScheduleKind::Cosine => min_lr + (lr - min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
    }
}

/// The schedule's factor at `step`: lr_at(step) for a base lr of 1. Other learning rates that
/// follow the same schedule (the memory values' `value_lr`) are multiplied by it.
pub fn lr_multiplier(step: usize, cfg: &TrainConfig) -> f64 {
    lr_at(step, &TrainConfig { lr: 1.0, ..cfg.clone() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(schedule: ScheduleKind, warmup: usize, steps: usize) -> TrainConfig {
        TrainConfig { lr: 1.0, min_lr_ratio: 0.1, warmup_steps: warmup, steps, schedule, ..Default::default() }
    }

    fn near(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    }

    #[test]
    fn warmup_rises_linearly_to_lr() {
        for kind in [ScheduleKind::Cosine, ScheduleKind::Linear, ScheduleKind::Constant] {
            let c = cfg(kind, 10, 110);
            near(lr_at(0, &c), 1.0 / 11.0);
            for s in 0..10 {
                assert!(lr_at(s + 1, &c) > lr_at(s, &c));
                near(lr_at(s + 1, &c) - lr_at(s, &c), 1.0 / 11.0);
            }
            near(lr_at(10, &c), 1.0);
        }
    }

    #[test]
    fn cosine_shape() {
        let c = cfg(ScheduleKind::Cosine, 10, 110);
        near(lr_at(60, &c), 0.55); // halfway: mean of lr and min
        near(lr_at(110, &c), 0.1);
        near(lr_at(500, &c), 0.1);
        // Symmetric about the midpoint and monotone.
        near(lr_at(35, &c) - 0.55, 0.55 - lr_at(85, &c));
        for s in 10..110 {
            assert!(lr_at(s + 1, &c) < lr_at(s, &c));
        }
    }

    #[test]
    fn linear_shape() {
        let c = cfg(ScheduleKind::Linear, 0, 100);
        near(lr_at(0, &c), 1.0);
        near(lr_at(25, &c), 1.0 - 0.9 * 0.25);
        near(lr_at(50, &c), 0.55);
        near(lr_at(100, &c), 0.1);
        near(lr_at(1000, &c), 0.1);
    }

    #[test]
    fn constant_after_warmup() {
        let c = cfg(ScheduleKind::Constant, 5, 100);
        for s in [5, 50, 99, 100, 1000] {
            near(lr_at(s, &c), 1.0);
        }
    }

    #[test]
    fn multiplier_is_the_schedule_at_lr_one() {
        let c = TrainConfig { lr: 3e-3, ..cfg(ScheduleKind::Cosine, 10, 110) };
        for s in [0, 5, 10, 60, 200] {
            assert!((lr_multiplier(s, &c) * 3e-3 - lr_at(s, &c)).abs() < 1e-15);
        }
    }

    #[test]
    fn degenerate_lengths() {
        // Warmup longer than the run: never leaves warmup within the run; after it, the end value.
        let c = cfg(ScheduleKind::Cosine, 10, 5);
        near(lr_at(4, &c), 5.0 / 11.0);
        near(lr_at(10, &c), 0.1);
        let c = cfg(ScheduleKind::Cosine, 0, 0);
        near(lr_at(0, &c), 0.1);
    }
}
