//! Continual SEAL (docs/design.md, "SEAL"): passages learned one after another, each update merged into
//! the weights the next one starts from, and a retention matrix acc[i][j] = closed-book accuracy
//! on passage i after update j. Compared across inner-loop methods (LoRA vs sparse memory): SEAL's
//! known weakness is forgetting under sequential self-edits.

use super::inner::{closed_book, merged, model_over, update, InnerSettings, Student};
use super::passages::Passage;
use super::templates::QaFormat;
use crate::config::{AnswerMetric, MethodKind};
use anyhow::{ensure, Result};
use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct Retention {
    pub method: MethodKind,
    /// The accuracy measured (`seal.metric`).
    pub metric: AnswerMetric,
    /// Closed-book accuracy on passage i before any update.
    pub before: Vec<f64>,
    /// acc[i][j]: closed-book accuracy on passage i after update j (updates 0..=j applied).
    pub acc: Vec<Vec<f64>>,
    pub seconds: f64,
}

impl Retention {
    /// Mean of the diagonal: accuracy on each passage right after learning it.
    pub fn newest(&self) -> f64 {
        let n = self.acc.len();
        (0..n).map(|i| self.acc[i][i]).sum::<f64>() / n.max(1) as f64
    }

    /// Mean accuracy on passages 0..n-1 after the last update (what is kept of earlier passages).
    pub fn earlier_after_last(&self) -> f64 {
        let n = self.acc.len();
        if n < 2 {
            return f64::NAN;
        }
        (0..n - 1).map(|i| self.acc[i][n - 1]).sum::<f64>() / (n - 1) as f64
    }

    /// Mean over earlier passages of (right after learning − after the last update).
    pub fn mean_drop(&self) -> f64 {
        let n = self.acc.len();
        if n < 2 {
            return f64::NAN;
        }
        (0..n - 1).map(|i| self.acc[i][i] - self.acc[i][n - 1]).sum::<f64>() / (n - 1) as f64
    }
}

/// Learn `seqs[j]` (passage j's training sequences) for j in order with method `s.ft.method`,
/// merging each update; `on_update(j)` after each.
#[allow(clippy::too_many_arguments)]
pub fn continual(
    st: &Student,
    s: &InnerSettings,
    qa: &QaFormat,
    metric: AnswerMetric,
    passages: &[Passage],
    seqs: &[Vec<String>],
    seed: u64,
    mut on_update: impl FnMut(usize),
) -> Result<Retention> {
    ensure!(passages.len() == seqs.len() && !passages.is_empty(), "continual SEAL needs one set of training sequences per passage");
    let t0 = std::time::Instant::now();
    let n = passages.len();
    let before = passages.iter().map(|p| Ok(closed_book(st.model, st.tok, qa, p)?.mean(metric))).collect::<Result<Vec<f64>>>()?;
    let mut acc = vec![vec![0.0; n]; n];
    let mut store = st.store.copy_on_write(|_| false)?;
    let mut model = model_over(st.cfg, &store, st.model.device())?;
    for j in 0..n {
        let cur = Student { cfg: st.cfg, store: &store, model: &model, tok: st.tok, background: st.background };
        let t = update(&cur, s, &seqs[j], super::inner::candidate_seed(seed, &passages[j].id, 0, j))?;
        store = merged(t, &s.ft)?;
        model = model_over(st.cfg, &store, st.model.device())?;
        for (i, p) in passages.iter().enumerate() {
            acc[i][j] = closed_book(&model, st.tok, qa, p)?.mean(metric);
        }
        on_update(j);
    }
    Ok(Retention { method: s.ft.method, metric, before, acc, seconds: t0.elapsed().as_secs_f64() })
}

/// A markdown table per method, then a comparison line each.
pub fn render_markdown(rs: &[Retention]) -> String {
    let metric = rs.first().map(|r| r.metric.name()).unwrap_or("EM");
    let mut md = format!("## Continual SEAL: retention matrix\n\nacc[i][j] = closed-book {metric} on passage i after update j (each update merged before the next).\n\n");
    md.push_str("| method | newest passage (mean diagonal) | earlier passages after the last update | mean drop from right-after |\n|---|---:|---:|---:|\n");
    for r in rs {
        md.push_str(&format!("| {} | {:.3} | {:.3} | {:.3} |\n", r.method.name(), r.newest(), r.earlier_after_last(), r.mean_drop()));
    }
    for r in rs {
        let n = r.acc.len();
        md.push_str(&format!("\n### {}\n\n| passage | before |", r.method.name()));
        for j in 0..n {
            md.push_str(&format!(" after {j} |"));
        }
        md.push_str(&format!("\n|---|---:|{}\n", "---:|".repeat(n)));
        for i in 0..n {
            md.push_str(&format!("| {i} | {:.2} |", r.before[i]));
            for j in 0..n {
                md.push_str(&format!(" {:.2} |", r.acc[i][j]));
            }
            md.push('\n');
        }
    }
    md
}

/// `retention.png`: one heatmap per method.
pub fn plot(stem: &std::path::Path, rs: &[Retention]) -> Result<()> {
    let panels: Vec<crate::plot::Heatmap> = rs
        .iter()
        .map(|r| crate::plot::Heatmap {
            title: format!("{} inner loop", r.method.name()),
            x_label: "after update j".into(),
            y_label: "passage i".into(),
            col_labels: (0..r.acc.len()).map(|j| j.to_string()).collect(),
            values: r.acc.clone(),
        })
        .collect();
    crate::plot::heatmaps_png(stem, &panels)
}
