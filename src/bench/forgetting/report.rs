//! The benchmark's report: the summary at matched learning, `results.md` with its claims, and
//! the Pareto plot.

use super::{out_dir, ForgettingOutcome, Measures, Pretrained, RunResult, PRETRAINED_FILE};
use crate::config::ExperimentConfig;
use crate::plot::{scatter_with_fronts, PlotSpec, Series};
use anyhow::{Context, Result};
use serde::Serialize;
use std::path::Path;

/// Relative drop in percent (the absolute drop × 100 when `before` is 0).
pub fn relative_drop(before: f64, after: f64) -> f64 {
    if before > 0.0 {
        100.0 * (before - after) / before
    } else {
        100.0 * (before - after)
    }
}

/// Write `results.md` and `pareto.png` / `.svg` into `out`.
pub fn write_report(
    out: &Path,
    results: &[RunResult],
    pre: &Pretrained,
    tolerance: f64,
    seconds: Option<f64>,
) -> Result<(Summary, String)> {
    let summary = summarize(results, tolerance);
    let table = render_markdown(results, pre, &summary, seconds);
    crate::io::atomic::write_atomic(&out.join("results.md"), table.as_bytes())?;
    plot(&out.join("pareto"), results, pre.facts)?;
    Ok((summary, table))
}

/// `bench forgetting --report`: redo the table and plot of a finished benchmark from its
/// `results.jsonl` and `pretrained.json` (nothing is trained).
pub fn report_only(cfg: &ExperimentConfig, quick: bool) -> Result<ForgettingOutcome> {
    let out = out_dir(cfg, quick);
    let read = |f: &str| std::fs::read_to_string(out.join(f)).with_context(|| format!("cannot read {}", out.join(f).display()));
    let pre: Pretrained =
        serde_json::from_str(&read(PRETRAINED_FILE)?).with_context(|| format!("{}: not valid", out.join(PRETRAINED_FILE).display()))?;
    let results: Vec<RunResult> = read("results.jsonl")?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| serde_json::from_str(l).with_context(|| format!("results.jsonl:{}: not a result line", i + 1)))
        .collect::<Result<_>>()?;
    let (summary, table) = write_report(&out, &results, &pre, cfg.forgetting.match_tolerance, None)?;
    Ok(ForgettingOutcome { out, results, before: pre.measures, summary, table })
}

pub(super) fn point_label(p: &std::collections::BTreeMap<String, toml::Value>) -> String {
    p.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
}

/// The best run of each series at matched learning, and what the claims of the benchmark say.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// The matched learning level: the highest new-fact EM that every main method (sparse-memory,
    /// lora, full, those present) reaches in some run.
    pub matched_em: f64,
    pub tolerance: f64,
    /// Per series: the index in the results of its run with the least retention drop among
    /// those within `tolerance` of `matched_em` (None: it never got there).
    pub best: Vec<(String, Option<usize>)>,
    /// Per series: its highest new-fact EM.
    pub max_em: Vec<(String, f64)>,
}

const MAIN: [&str; 3] = ["sparse-memory", "lora", "full"];

pub fn summarize(results: &[RunResult], tolerance: f64) -> Summary {
    let mut series: Vec<String> = vec![];
    for r in results {
        if !series.contains(&r.variant) {
            series.push(r.variant.clone());
        }
    }
    let max_em: Vec<(String, f64)> = series
        .iter()
        .map(|s| (s.clone(), results.iter().filter(|r| &r.variant == s).map(|r| r.new_fact_em).fold(f64::NEG_INFINITY, f64::max)))
        .collect();
    let main: Vec<f64> = max_em.iter().filter(|(s, _)| MAIN.contains(&s.as_str())).map(|x| x.1).collect();
    let pool = if main.is_empty() { max_em.iter().map(|x| x.1).collect() } else { main };
    let matched_em = pool.iter().copied().fold(f64::INFINITY, f64::min).max(0.0);
    let best = series
        .iter()
        .map(|s| {
            let pick = results
                .iter()
                .enumerate()
                .filter(|(_, r)| &r.variant == s && r.new_fact_em >= matched_em - tolerance - 1e-12)
                .min_by(|a, b| a.1.retention_drop.total_cmp(&b.1.retention_drop).then(b.1.new_fact_em.total_cmp(&a.1.new_fact_em)))
                .map(|(i, _)| i);
            (s.clone(), pick)
        })
        .collect();
    Summary { matched_em, tolerance, best, max_em }
}

fn compact(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Object(m) => m.iter().map(|(k, v)| format!("{k}={}", compact(v))).collect::<Vec<_>>().join(", "),
        serde_json::Value::Array(a) => a.iter().map(compact).collect::<Vec<_>>().join("+"),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The markdown report: the pretrained model, the best run per series at matched learning, each
/// baseline's best run against sparse memory finetuning at that learning level, the claims checked,
/// and every run.
pub fn render_markdown(results: &[RunResult], pre: &Pretrained, s: &Summary, seconds: Option<f64>) -> String {
    let before = &pre.measures;
    let mut md = String::new();
    let probe = if pre.notes.is_empty() {
        "exact match on held-out pretraining-world facts (bio-only people"
    } else {
        "`contains` on the base model's known facts (closed-book questions it answered"
    };
    md += &format!(
        "## Learning vs forgetting: {} new facts\n\nBase model: closed-book QA {probe}, {} questions) **{:.1}%** ± {:.1}; held-out loss {:.4}; new-fact QA before learning {:.1}% ({} questions).\n\n",
        pre.facts,
        pre.retention_questions,
        100.0 * before.retention_em,
        100.0 * before.retention_em_stderr,
        before.heldout_loss,
        100.0 * before.new_fact_em,
        pre.new_fact_questions
    );
    if let (Some(p), Some(se)) = (before.heldout_perplexity, before.heldout_perplexity_stderr) {
        md += &format!("Held-out text perplexity: {p:.3} ± {se:.3}.\n");
    }
    if let (Some(a), Some(se), Some(c)) = (before.choice_acc, before.choice_acc_stderr, before.choice_chance) {
        md += &format!("Multiple choice (log-likelihood): {:.1}% ± {:.1} (chance {:.1}%).\n", 100.0 * a, 100.0 * se, 100.0 * c);
    }
    for n in &pre.notes {
        md += &format!("- {n}\n");
    }
    md += "\n";
    md += &format!(
        "Best run per method at matched learning (new-fact EM ≥ {:.1}% − {:.0} points: the highest level every method reaches), the least retention drop among those:\n\n",
        100.0 * s.matched_em,
        100.0 * s.tolerance
    );
    md += "| method | hyperparameters | new-fact QA EM | statement EM | retention EM before → after | retention drop | held-out loss before → after | steps | seconds |\n|---|---|---:|---:|---:|---:|---:|---:|---:|\n";
    for (series, pick) in &s.best {
        match pick {
            Some(i) => {
                let r = &results[*i];
                md += &format!(
                    "| {} | {} | {:.1}% | {:.1}% | {:.1}% → {:.1}% | {:.1}% | {:.4} → {:.4} | {} | {:.1} |\n",
                    series,
                    compact(&r.hparams),
                    100.0 * r.new_fact_em,
                    100.0 * r.new_fact_statement_em,
                    100.0 * r.retention_em_before,
                    100.0 * r.retention_em_after,
                    r.retention_drop,
                    r.heldout_loss_before,
                    r.heldout_loss_after,
                    r.steps,
                    r.seconds
                );
            }
            None => {
                let m = s.max_em.iter().find(|x| &x.0 == series).map(|x| x.1).unwrap_or(0.0);
                md += &format!("| {series} | (no run reached the level; best new-fact EM {:.1}%) | | | | | | | |\n", 100.0 * m);
            }
        }
    }
    md += "\n";
    md += &probe_table(results, s);
    let pairs = baseline_pairs(results, s.tolerance);
    if !pairs.is_empty() {
        md += &format!(
            "Each baseline's best-learning run against the sparse-memory run with the least retention drop among those that learned at least as much (− {:.0} points):\n\n",
            100.0 * s.tolerance
        );
        md += "| baseline | its hyperparameters | its new-fact EM | its retention drop | sparse-memory hyperparameters | sparse-memory new-fact EM | sparse-memory retention drop |\n|---|---|---:|---:|---|---:|---:|\n";
        for p in &pairs {
            let b = &results[p.baseline];
            let smf = p.smf.map(|i| &results[i]);
            md += &format!(
                "| {} | {} | {:.1}% | {:.1}% | {} | {} | {} |\n",
                b.variant,
                compact(&b.grid),
                100.0 * b.new_fact_em,
                b.retention_drop,
                smf.map(|r| compact(&r.grid)).unwrap_or_else(|| "(none learned as much)".into()),
                smf.map(|r| format!("{:.1}%", 100.0 * r.new_fact_em)).unwrap_or_default(),
                smf.map(|r| format!("{:.1}%", r.retention_drop)).unwrap_or_default(),
            );
        }
        md += "\n";
    }
    md += &claims(results, s, before, &pairs);
    md += "\nAll runs:\n\n| method | grid | new-fact QA EM | right after each fact | statement EM | retention after | retention drop | held-out loss after | steps | seconds |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    for r in results {
        md += &format!(
            "| {} | {} | {:.1}% ± {:.1} | {:.1}% | {:.1}% | {:.1}% | {:.1}% | {:.4} | {} | {:.1} |\n",
            r.variant,
            compact(&r.grid),
            100.0 * r.new_fact_em,
            100.0 * r.new_fact_em_stderr,
            100.0 * r.plasticity_em,
            100.0 * r.new_fact_statement_em,
            100.0 * r.retention_em_after,
            r.retention_drop,
            r.heldout_loss_after,
            r.steps,
            r.seconds
        );
    }
    if let Some(t) = seconds {
        md += &format!("\nBenchmark wall time: {t:.0} s.\n");
    }
    md
}

/// Learning and every retention probe of each series' best run at matched learning.
fn probe_table(results: &[RunResult], s: &Summary) -> String {
    let pct = |x: Option<f64>| x.map(|v| format!("{:.1}%", 100.0 * v)).unwrap_or_else(|| "–".into());
    let mut md = String::from("Learning and retention of those runs (new facts: at the end of the stream and right after each fact; retention: every probe, relative drop):\n\n| method | new-fact EM | F1 | contains | right after each fact EM / contains | known-fact or held-out QA drop | held-out perplexity before → after | multiple choice before → after (drop) |\n|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for (series, pick) in &s.best {
        let Some(r) = pick.map(|i| &results[i]) else { continue };
        let ppl = match (r.perplexity_before, r.perplexity_after) {
            (Some(b), Some(a)) => format!("{b:.3} → {a:.3} ({:+.1}%)", 100.0 * (a - b) / b),
            _ => format!("loss {:.4} → {:.4}", r.heldout_loss_before, r.heldout_loss_after),
        };
        md += &format!(
            "| {series} | {:.1}% | {:.1}% | {:.1}% | {:.1}% / {:.1}% | {:.1}% | {ppl} | {} → {} ({}) |\n",
            100.0 * r.new_fact_em,
            100.0 * r.new_fact_f1,
            100.0 * r.new_fact_contains,
            100.0 * r.plasticity_em,
            100.0 * r.plasticity_contains,
            r.retention_drop,
            pct(r.choice_acc_before),
            pct(r.choice_acc_after),
            r.choice_drop.map(|d| format!("{d:.1}%")).unwrap_or_else(|| "–".into()),
        );
    }
    md + "\n"
}

/// A baseline's (full, lora) best-learning run and the sparse-memory run it is compared with.
pub struct BaselinePair {
    pub baseline: usize,
    pub smf: Option<usize>,
}

/// For each baseline method (full, then lora): its run with the highest new-fact EM (ties: least
/// retention drop), and the `sparse-memory` run with the least retention drop among those whose
/// new-fact EM is at least that minus `tolerance`.
pub fn baseline_pairs(results: &[RunResult], tolerance: f64) -> Vec<BaselinePair> {
    let mut out = vec![];
    for m in ["full", "lora"] {
        let Some((bi, b)) = results
            .iter()
            .enumerate()
            .filter(|(_, r)| r.variant == m)
            .max_by(|a, b| a.1.new_fact_em.total_cmp(&b.1.new_fact_em).then(b.1.retention_drop.total_cmp(&a.1.retention_drop)))
        else {
            continue;
        };
        let smf = results
            .iter()
            .enumerate()
            .filter(|(_, r)| r.variant == "sparse-memory" && r.new_fact_em >= b.new_fact_em - tolerance - 1e-12)
            .min_by(|a, b| a.1.retention_drop.total_cmp(&b.1.retention_drop).then(b.1.new_fact_em.total_cmp(&a.1.new_fact_em)))
            .map(|(i, _)| i);
        out.push(BaselinePair { baseline: bi, smf });
    }
    out
}

/// The claims, checked on these results (printed, never enforced).
fn claims(results: &[RunResult], s: &Summary, before: &Measures, pairs: &[BaselinePair]) -> String {
    let mut out = String::from("Claims:\n\n");
    let yes = |b: bool| if b { "yes" } else { "**no**" };
    out += &format!(
        "- the base model answers its retention questions with ≥ 50% EM: {} ({:.1}%)\n",
        yes(before.retention_em >= 0.5),
        100.0 * before.retention_em
    );
    let max = |v: &str| s.max_em.iter().find(|x| x.0 == v).map(|x| x.1);
    let Some(smf) = max("sparse-memory") else {
        return out;
    };
    for p in pairs {
        let b = &results[p.baseline];
        out += &format!(
            "- sparse-memory's best new-fact EM within 10 points of {}'s best: {} ({:.1}% vs {:.1}%)\n",
            b.variant,
            yes(smf >= b.new_fact_em - 0.10 - 1e-12),
            100.0 * smf,
            100.0 * b.new_fact_em
        );
        match p.smf.map(|i| &results[i]) {
            Some(a) => {
                out += &format!(
                    "- at the learning level of {}'s best run, sparse-memory's retention drop at most one third of its: {} ({:.1}% at {:.1}% new-fact EM vs {:.1}% at {:.1}%)\n",
                    b.variant,
                    yes(a.retention_drop <= b.retention_drop / 3.0 + 1e-9),
                    a.retention_drop,
                    100.0 * a.new_fact_em,
                    b.retention_drop,
                    100.0 * b.new_fact_em
                );
            }
            None => out += &format!("- at the learning level of {}'s best run: no sparse-memory run learned as much\n", b.variant),
        }
    }
    if let Some(r) = s.best.iter().find(|(v, _)| v == "sparse-memory").and_then(|(_, i)| i.map(|i| &results[i])) {
        let kept = if r.retention_em_before > 0.0 { r.retention_em_after / r.retention_em_before } else { 1.0 };
        out += &format!(
            "- sparse-memory at matched learning keeps ≥ 95% of the base model's retention QA: {} ({:.1}%)\n",
            yes(kept >= 0.95),
            100.0 * kept
        );
    }
    out
}

/// `pareto.png` / `pareto.svg`: new-fact QA EM (x, %) against retention drop (y, %), one series
/// per method variant.
pub fn plot(stem: &Path, results: &[RunResult], k: usize) -> Result<()> {
    let mut series: Vec<Series> = vec![];
    for r in results {
        let p = (100.0 * r.new_fact_em, r.retention_drop);
        match series.iter_mut().find(|s| s.name == r.variant) {
            Some(s) => s.points.push(p),
            None => series.push(Series { name: r.variant.clone(), points: vec![p] }),
        }
    }
    let title = format!("Learning vs forgetting ({k} new facts)");
    scatter_with_fronts(
        stem,
        &PlotSpec {
            title: &title,
            x_label: "new-fact QA exact match (%)",
            y_label: "retention drop on held-out QA (%, lower is better)",
            series: &series,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(variant: &str, em: f64, drop: f64) -> RunResult {
        RunResult {
            method: variant.split(' ').next().unwrap().into(),
            variant: variant.into(),
            hparams: serde_json::json!({"lr": 1.0}),
            grid: serde_json::json!({}),
            facts: 10,
            paraphrases: 8,
            new_fact_em: em,
            new_fact_em_stderr: 0.0,
            new_fact_statement_em: em,
            retention_em_before: 0.8,
            retention_em_after: 0.8 * (1.0 - drop / 100.0),
            retention_drop: drop,
            heldout_loss_before: 1.0,
            heldout_loss_after: 1.1,
            steps: 10,
            seconds: 1.0,
            eval_seconds: 1.0,
            new_fact_f1: em,
            new_fact_contains: em,
            plasticity_em: em,
            plasticity_contains: em,
            perplexity_before: None,
            perplexity_after: None,
            choice_acc_before: None,
            choice_acc_after: None,
            choice_drop: None,
        }
    }

    #[test]
    fn matched_learning_picks_least_drop_among_runs_that_learned_enough() {
        let rs = vec![
            r("sparse-memory", 0.30, 5.0),
            r("sparse-memory", 0.10, 1.0),
            r("lora", 0.40, 60.0),
            r("lora", 0.28, 30.0),
            r("lora", 0.05, 2.0),
            r("full", 0.35, 40.0),
            r("sparse-memory (tf)", 0.5, 50.0),
        ];
        let s = summarize(&rs, 0.05);
        assert!((s.matched_em - 0.30).abs() < 1e-12, "min over main methods of their max");
        assert_eq!(
            s.best,
            vec![
                ("sparse-memory".into(), Some(0)),
                ("lora".into(), Some(3)),
                ("full".into(), Some(5)),
                ("sparse-memory (tf)".into(), Some(6))
            ]
        );
        let before: Measures = serde_json::from_value(serde_json::json!({"retention_em": 0.8, "retention_em_stderr": 0.0, "heldout_loss": 1.0, "new_fact_em": 0.0, "new_fact_em_stderr": 0.0, "new_fact_statement_em": 0.0})).unwrap();
        let pre = Pretrained { measures: before, retention_questions: 10, new_fact_questions: 40, facts: 10, notes: vec![] };
        let md = render_markdown(&rs, &pre, &s, Some(1.0));
        assert!(md.contains("| sparse-memory | lr=1.0 | 30.0% |"), "{md}");
        // full's best (35%) vs the least-drop sparse-memory run with EM ≥ 30%: 5% vs 40%.
        assert!(
            md.contains("sparse-memory's retention drop at most one third of its: yes (5.0% at 30.0% new-fact EM vs 40.0% at 35.0%)"),
            "{md}"
        );
        // lora's best (40%): no sparse-memory run reached 35%.
        assert!(md.contains("learning level of lora's best run: no sparse-memory run learned as much"), "{md}");
        assert!(md.contains("within 10 points of lora's best: yes (30.0% vs 40.0%)"), "{md}");
        assert_eq!(relative_drop(0.5, 0.25), 50.0);
    }
}
