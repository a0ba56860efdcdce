//! `memtune seal`: the whole experiment (docs/design.md, "SEAL", issue 6).
//!
//! 1. The student (the model self-edits update): `seal.model`, or the experiment's own model
//!    pretrained on the synthetic world (reused by config hash, as `bench forgetting` does). The
//!    generator: a copy of the student, or `seal.teacher`. ReST-EM trains only the generator, so
//!    every condition updates the same student and differs only in its training sequences.
//! 2. Passages (synthetic SEAL split or SQuAD), cut into eval passages and one fresh set per round.
//! 3. Conditions on the eval passages, for every inner method: `no-update`, `passage-only`,
//!    `base-self-edits` (k self-edits of the untrained generator, each + the passage) and, after
//!    each ReST-EM round N, `round-N`. A condition's score per question is the mean over its
//!    candidates and repeats.
//! 4. Continual SEAL on the first `continual_passages` eval passages (passage + the first base
//!    self-edit, in sequence, merged), per `continual_methods`.
//!
//! Writes `self_edits.jsonl`, `summary.jsonl`, `diagnostics.json`, `results.md`, `config.toml`
//! and, with continual SEAL, `retention.json` and `retention.png` into `seal.out`.

use super::continual::{continual, Retention};
use super::diagnostics::{edit_diagnostics, open_book, EditDiagnostics};
use super::inner::{closed_book, model_over, reward, InnerSettings, QaScores, Repeats, Student};
use super::passages::{split_passages, Passage};
use super::rest_em::{select, sft_batches, sft_generator, sft_pair, SftStep};
use super::self_edit::{sample_self_edits, training_sequences, SampleOptions, SelfEdit};
use super::templates::{ChatFormat, QaFormat, Template};
use crate::config::{AnswerMetric, ContinualEdits, ExperimentConfig, SealConfig};
use crate::data::synthetic::Split;
use crate::data::tokenizer::Tokenizer;
use crate::eval::metrics::mean_stderr;
use crate::model::{Llama, LlamaConfig, ParamStore};
use crate::train::base_model::{load_base, pretrained_base, Base};
use crate::util::stable_hash;
use anyhow::{Context, Result};
use candle_core::Device;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// One line of `summary.jsonl`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SummaryLine {
    /// `no-update`, `passage-only`, `base-self-edits` or `round-N`.
    pub condition: String,
    /// The inner-loop method (`lora`, `full`, `sparse-memory`; `none` for no-update).
    pub inner_method: String,
    pub seed: u64,
    pub n_passages: usize,
    pub n_questions: usize,
    /// Closed-book exact match on the eval passages' questions after the update, its standard
    /// error over questions; token F1; the fraction of answers that contain a gold answer.
    pub em: f64,
    pub em_stderr: f64,
    pub f1: f64,
    pub f1_stderr: f64,
    pub contains: f64,
    pub contains_stderr: f64,
}

/// One line of `self_edits.jsonl`: a self-edit and what training on it did.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SelfEditRecord {
    /// `base-self-edits`, `round-N` (eval passages) or `train-round-N` (ReST-EM's own passages).
    pub condition: String,
    pub inner_method: String,
    pub passage_id: String,
    pub title: String,
    /// Which of the k samples.
    pub sample: usize,
    pub self_edit: String,
    pub n_tokens: usize,
    /// Training sequences it gave (passage included).
    pub sequences: usize,
    pub em_before: f64,
    pub em_after: f64,
    pub f1_before: f64,
    pub f1_after: f64,
    pub contains_before: f64,
    pub contains_after: f64,
    /// after − before per metric (averaged over `repeats`); `seal.metric` picks the reward.
    pub reward_em: f64,
    pub reward_f1: f64,
    pub reward_contains: f64,
    /// ReST-EM rounds only: whether the filter kept it for SFT.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub kept: Option<bool>,
}

/// What one ReST-EM round did.
#[derive(Clone, Debug, Serialize)]
pub struct RoundReport {
    pub round: usize,
    pub passages: usize,
    pub kept: usize,
    pub mean_best_reward: f64,
    pub mean_passage_only_reward: f64,
    pub sft_first_loss: f32,
    pub sft_last_loss: f32,
}

#[derive(Clone, Debug, Serialize)]
pub struct Diagnostics {
    pub open_book_em: f64,
    pub open_book_em_stderr: f64,
    pub open_book_f1: f64,
    pub open_book_contains: f64,
    pub self_edits: Vec<EditDiagnostics>,
    pub rounds: Vec<RoundReport>,
    /// Mean wall seconds of one inner update with its closed-book QA, and of sampling k
    /// self-edits for one passage.
    pub inner_update_seconds: f64,
    pub sampling_seconds_per_passage: f64,
}

pub struct SealOutcome {
    pub out: PathBuf,
    pub summary: Vec<SummaryLine>,
    pub diagnostics: Diagnostics,
    pub retention: Vec<Retention>,
    pub table: String,
    pub seconds: f64,
}

/// Wall time of the two costly steps, reported with the diagnostics (what a bigger run will cost).
#[derive(Default)]
struct Timings {
    /// (inner updates + their QA, seconds)
    inner: std::cell::Cell<(usize, f64)>,
    /// (passages sampled k self-edits for, seconds)
    sampling: std::cell::Cell<(usize, f64)>,
}

impl Timings {
    fn time<T>(cell: &std::cell::Cell<(usize, f64)>, n: usize, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let t0 = std::time::Instant::now();
        let out = f()?;
        let (c, secs) = cell.get();
        cell.set((c + n, secs + t0.elapsed().as_secs_f64()));
        Ok(out)
    }

    fn mean(cell: &std::cell::Cell<(usize, f64)>) -> f64 {
        let (c, secs) = cell.get();
        if c == 0 {
            0.0
        } else {
            secs / c as f64
        }
    }
}

/// The generator of self-edits: its own weights (ReST-EM changes them, never the student's).
struct Generator {
    cfg: LlamaConfig,
    store: ParamStore,
    model: Llama,
    tok: Tokenizer,
    chat: ChatFormat,
}

impl Generator {
    fn end_token(&self) -> u32 {
        self.chat.end_token().and_then(|t| self.tok.token_to_id(t)).unwrap_or(self.tok.eos_id())
    }

    fn prompt(&self, t: &Template, p: &Passage) -> String {
        self.chat.wrap(&t.render(p))
    }

    fn sample(&self, t: &Template, p: &Passage, s: &SealConfig, purpose: &str, timings: &Timings) -> Result<Vec<SelfEdit>> {
        Timings::time(&timings.sampling, 1, || self.sample_untimed(t, p, s, purpose))
    }

    fn sample_untimed(&self, t: &Template, p: &Passage, s: &SealConfig, purpose: &str) -> Result<Vec<SelfEdit>> {
        let o = SampleOptions {
            k: s.k,
            temperature: s.temperature,
            top_p: s.top_p,
            max_new_tokens: s.max_new_tokens,
            seed: stable_hash(&[&s.seed.to_le_bytes(), p.id.as_bytes(), purpose.as_bytes()]),
        };
        sample_self_edits(&self.model, &self.tok, &self.prompt(t, p), &o)
    }
}

fn summary_line(condition: &str, method: &str, seed: u64, per_passage: &[QaScores]) -> SummaryLine {
    let mut all = QaScores::default();
    per_passage.iter().for_each(|s| all.extend(s.clone()));
    let (em, em_stderr) = mean_stderr(&all.em);
    let (f1, f1_stderr) = mean_stderr(&all.f1);
    let (contains, contains_stderr) = mean_stderr(&all.contains);
    SummaryLine {
        condition: condition.into(),
        inner_method: method.into(),
        seed,
        n_passages: per_passage.len(),
        n_questions: all.em.len(),
        em,
        em_stderr,
        f1,
        f1_stderr,
        contains,
        contains_stderr,
    }
}

/// A perfect self-edit: every question of the passage with its first answer, in the closed-book
/// prompt form followed by the answer, then the passage.
pub fn oracle_sequences(p: &Passage, qa: &QaFormat) -> Vec<String> {
    let mut seqs: Vec<String> =
        p.questions.iter().map(|q| format!("{} {}", super::templates::fill(&qa.closed_book, p, &q.question), q.answers[0])).collect();
    seqs.push(p.context.clone());
    seqs
}

/// The results folder of a config.
pub fn out_dir(cfg: &ExperimentConfig) -> PathBuf {
    if cfg.seal.out.is_empty() {
        Path::new(&cfg.run.dir).join("seal")
    } else {
        PathBuf::from(&cfg.seal.out)
    }
}

struct Writer {
    file: std::fs::File,
}

impl Writer {
    fn create(path: &Path) -> Result<Self> {
        Ok(Self { file: std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))? })
    }
    fn line<T: Serialize>(&mut self, v: &T) -> Result<()> {
        writeln!(self.file, "{}", serde_json::to_string(v)?)?;
        Ok(self.file.flush()?)
    }
}

/// Rewards of the self-edits of one passage with one inner method; written to `edits_out`.
#[allow(clippy::too_many_arguments)]
fn score_edits(
    st: &Student,
    s: &InnerSettings,
    qa: &QaFormat,
    t: &Template,
    p: &Passage,
    edits: &[SelfEdit],
    before: &QaScores,
    seal: &SealConfig,
    condition: &str,
    edits_out: &mut Writer,
    timings: &Timings,
) -> Result<(Vec<super::inner::Reward>, Vec<SelfEditRecord>)> {
    let mut rewards = vec![];
    let mut records = vec![];
    for (i, e) in edits.iter().enumerate() {
        let seqs = training_sequences(&e.text, t.split, &p.context);
        let r = Timings::time(&timings.inner, seal.repeats, || {
            reward(st, s, qa, p, &seqs, before, Repeats { n: seal.repeats, seed: seal.seed, candidate: i + 1 })
        })?;
        records.push(SelfEditRecord {
            condition: condition.into(),
            inner_method: s.ft.method.name().into(),
            passage_id: p.id.clone(),
            title: p.title.clone(),
            sample: i,
            self_edit: e.text.clone(),
            n_tokens: e.n_tokens,
            sequences: seqs.len(),
            em_before: r.before.em,
            em_after: r.after_mean.em,
            f1_before: r.before.f1,
            f1_after: r.after_mean.f1,
            contains_before: r.before.contains,
            contains_after: r.after_mean.contains,
            reward_em: r.gain.em,
            reward_f1: r.gain.f1,
            reward_contains: r.gain.contains,
            kept: None,
        });
        rewards.push(r);
    }
    if !condition.starts_with("train-") {
        for rec in &records {
            edits_out.line(rec)?;
        }
    }
    Ok((rewards, records))
}

/// Run the experiment of `cfg` (see the module doc).
pub fn run(cfg: &ExperimentConfig, device: &Device) -> Result<SealOutcome> {
    let t_start = std::time::Instant::now();
    let seal = &cfg.seal;

    // Enough synthetic passages? Checked before any pretraining.
    if seal.model.is_empty() && seal.data.is_empty() {
        let (have, need) = (cfg.data.world.n_seal_people, seal.eval_passages + seal.train_passages * seal.rounds);
        anyhow::ensure!(
            have >= need,
            "SEAL needs {need} passages (seal.eval_passages + seal.rounds × seal.train_passages) but data.world.n_seal_people = {have}"
        );
    }

    // 1. Student and generator.
    let base: Base = if seal.model.is_empty() { pretrained_base(cfg, device)? } else { load_base(Path::new(&seal.model), device)? };
    let student = Student {
        cfg: &base.model_cfg,
        store: &base.store,
        model: &base.model,
        tok: &base.tokenizer,
        background: base.background.as_ref(),
    };
    let qa = QaFormat::from_config(seal, ChatFormat::resolve(seal.chat, &base.dir)?);
    let mut generator = if seal.teacher.is_empty() {
        // Shares the student's storage: ReST-EM's SFT trains copies (`methods::prepare`).
        let store = base.store.copy_on_write(|_| false)?;
        let model = model_over(&base.model_cfg, &store, device)?;
        Generator { cfg: base.model_cfg.clone(), store, model, tok: base.tokenizer.clone(), chat: qa.chat.clone() }
    } else {
        let t = load_base(Path::new(&seal.teacher), device).with_context(|| format!("seal.teacher = {}", seal.teacher))?;
        let chat = ChatFormat::resolve(seal.chat, &t.dir)?;
        Generator { cfg: t.model_cfg, store: t.store, model: t.model, tok: t.tokenizer, chat }
    };
    let template = Template::from_config(seal)?;
    let settings = InnerSettings { ft: cfg.finetune.clone(), epochs: seal.inner_epochs, batch_size: seal.inner_batch_size };

    // 2. Passages.
    let all = if seal.data.is_empty() {
        let w = base.world.as_ref().context("seal.data is empty (the synthetic world's SEAL split) but the model was not trained on the synthetic world: set seal.data to a SQuAD file")?;
        Passage::from_world(w, Split::Seal)
    } else {
        Passage::from_squad(Path::new(&seal.data))?
    };
    let all: Vec<Passage> = all.into_iter().map(|p| p.limit_questions(seal.questions_per_passage)).collect();
    let split = split_passages(all, seal.eval_passages, seal.train_passages, seal.rounds, seal.seed)?;
    let eval = &split.eval;
    let out = out_dir(cfg);
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    crate::io::atomic::write_atomic(&out.join("config.toml"), cfg.to_toml().as_bytes())?;
    tracing::info!(
        "SEAL: {} eval passages ({} questions), {} round(s) of {} passages",
        eval.len(),
        eval.iter().map(|p| p.questions.len()).sum::<usize>(),
        seal.rounds,
        seal.train_passages
    );

    let mut summary_out = Writer::create(&out.join("summary.jsonl"))?;
    let mut edits_out = Writer::create(&out.join("self_edits.jsonl"))?;
    let mut summary = vec![];
    let mut push = |l: SummaryLine, w: &mut Writer| -> Result<()> {
        tracing::info!(
            "{} ({}): EM {:.3} ± {:.3}, F1 {:.3}, contains {:.3} ± {:.3} on {} questions",
            l.condition,
            l.inner_method,
            l.em,
            l.em_stderr,
            l.f1,
            l.contains,
            l.contains_stderr,
            l.n_questions
        );
        w.line(&l)?;
        summary.push(l);
        Ok(())
    };

    // 3. No update, and the diagnostics of the student itself.
    let before: Vec<QaScores> = eval.iter().map(|p| closed_book(&base.model, &base.tokenizer, &qa, p)).collect::<Result<_>>()?;
    push(summary_line("no-update", "none", seal.seed, &before), &mut summary_out)?;
    let ob = open_book(&base.model, &base.tokenizer, &qa, eval)?;
    let (ob_em, ob_se) = mean_stderr(&ob.em);
    tracing::info!(
        "open-book EM {:.3} ± {:.3}, F1 {:.3}, contains {:.3} (the ceiling of what self-edits carry)",
        ob_em,
        ob_se,
        ob.mean(AnswerMetric::F1),
        ob.mean(AnswerMetric::Contains)
    );
    let mut edit_diags = vec![];
    let timings = Timings::default();

    // Passage only, and base self-edits.
    let bar = crate::util::progress_bar("seal base", eval.len() * (1 + seal.inner_methods.len() * 2));
    let base_edits: Vec<Vec<SelfEdit>> = eval
        .iter()
        .map(|p| {
            bar.inc(1);
            generator.sample(&template, p, seal, "eval round 0", &timings)
        })
        .collect::<Result<_>>()?;
    edit_diags.push(edit_diagnostics("base-self-edits", &eval.iter().zip(&base_edits).map(|(p, e)| (p, e.as_slice())).collect::<Vec<_>>()));
    for &m in &seal.inner_methods {
        let s = settings.with_method(m);
        let mut po = vec![];
        let mut se = vec![];
        for (i, p) in eval.iter().enumerate() {
            bar.set_message(format!("{} passage {i}", m.name()));
            po.push(
                Timings::time(&timings.inner, seal.repeats, || {
                    reward(
                        &student,
                        &s,
                        &qa,
                        p,
                        std::slice::from_ref(&p.context),
                        &before[i],
                        Repeats { n: seal.repeats, seed: seal.seed, candidate: 0 },
                    )
                })?
                .after,
            );
            bar.inc(1);
            let (rs, _) = score_edits(
                &student,
                &s,
                &qa,
                &template,
                p,
                &base_edits[i],
                &before[i],
                seal,
                "base-self-edits",
                &mut edits_out,
                &timings,
            )?;
            se.push(QaScores::average(&rs.iter().map(|r| r.after.clone()).collect::<Vec<_>>()));
            bar.inc(1);
        }
        push(summary_line("passage-only", m.name(), seal.seed, &po), &mut summary_out)?;
        push(summary_line("base-self-edits", m.name(), seal.seed, &se), &mut summary_out)?;
    }
    bar.finish_and_clear();

    // ReST-EM rounds.
    let mut rounds = vec![];
    let reward_settings = settings.with_method(seal.inner_methods[0]);
    for (ri, passages) in split.rounds.iter().enumerate() {
        let round = ri + 1;
        let bar = crate::util::progress_bar(&format!("seal round {round}"), passages.len() + eval.len() * (1 + seal.inner_methods.len()));
        let mut pairs = vec![];
        let (mut best_sum, mut po_sum) = (0.0, 0.0);
        let train_condition = format!("train-round-{round}");
        for p in passages {
            let before_p = closed_book(&base.model, &base.tokenizer, &qa, p)?;
            let edits = generator.sample(&template, p, seal, &format!("train round {round}"), &timings)?;
            let po = Timings::time(&timings.inner, seal.repeats, || {
                reward(
                    &student,
                    &reward_settings,
                    &qa,
                    p,
                    std::slice::from_ref(&p.context),
                    &before_p,
                    Repeats { n: seal.repeats, seed: seal.seed, candidate: 0 },
                )
            })?
            .gain
            .of(seal.metric);
            let (rs, mut recs) = score_edits(
                &student,
                &reward_settings,
                &qa,
                &template,
                p,
                &edits,
                &before_p,
                seal,
                &train_condition,
                &mut edits_out,
                &timings,
            )?;
            let gains: Vec<f64> = rs.iter().map(|r| r.gain.of(seal.metric)).collect();
            let kept = select(&gains, po, seal.filter);
            for (i, rec) in recs.iter_mut().enumerate() {
                rec.kept = Some(kept.contains(&i));
                edits_out.line(rec)?;
            }
            best_sum += gains.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            po_sum += po;
            for &i in &kept {
                pairs.push(sft_pair(
                    &generator.tok,
                    &generator.prompt(&template, p),
                    &edits[i].text,
                    generator.end_token(),
                    generator.cfg.max_position_embeddings,
                )?);
            }
            bar.inc(1);
        }
        let (mut first, mut last) = (f32::NAN, f32::NAN);
        if !pairs.is_empty() {
            let batches = sft_batches(&pairs, generator.tok.eos_id(), seal.sft_batch_size, seal.sft_epochs, seal.seed + round as u64)?;
            let (store, f, l) = sft_generator(
                &generator.cfg,
                &generator.store,
                &generator.model,
                &cfg.finetune,
                SftStep { method: seal.sft_method, lr: seal.sft_lr, seed: seal.seed + round as u64 },
                batches,
            )?;
            generator.model = model_over(&generator.cfg, &store, device)?;
            generator.store = store;
            (first, last) = (f, l);
        }
        let n = passages.len().max(1) as f64;
        let rep = RoundReport {
            round,
            passages: passages.len(),
            kept: pairs.len(),
            mean_best_reward: best_sum / n,
            mean_passage_only_reward: po_sum / n,
            sft_first_loss: first,
            sft_last_loss: last,
        };
        tracing::info!(
            "ReST-EM round {round}: kept {} self-edits of {} passages (mean best reward {:.3}, passage-only {:.3}); {}",
            rep.kept,
            rep.passages,
            rep.mean_best_reward,
            rep.mean_passage_only_reward,
            sft_losses(first, last)
        );
        if pairs.is_empty() {
            tracing::warn!("ReST-EM round {round}: the filter `{:?}` kept no self-edit, so the generator is unchanged", seal.filter);
        }
        rounds.push(rep);

        let condition = format!("round-{round}");
        let edits: Vec<Vec<SelfEdit>> = eval
            .iter()
            .map(|p| {
                bar.inc(1);
                generator.sample(&template, p, seal, &format!("eval round {round}"), &timings)
            })
            .collect::<Result<_>>()?;
        edit_diags.push(edit_diagnostics(&condition, &eval.iter().zip(&edits).map(|(p, e)| (p, e.as_slice())).collect::<Vec<_>>()));
        for &m in &seal.inner_methods {
            let s = settings.with_method(m);
            let mut se = vec![];
            for (i, p) in eval.iter().enumerate() {
                let (rs, _) =
                    score_edits(&student, &s, &qa, &template, p, &edits[i], &before[i], seal, &condition, &mut edits_out, &timings)?;
                se.push(QaScores::average(&rs.iter().map(|r| r.after.clone()).collect::<Vec<_>>()));
                bar.inc(1);
            }
            push(summary_line(&condition, m.name(), seal.seed, &se), &mut summary_out)?;
        }
        bar.finish_and_clear();
    }

    // 4. Continual SEAL.
    let mut retention = vec![];
    if seal.continual_passages > 0 {
        let n = seal.continual_passages.min(eval.len());
        let seqs: Vec<Vec<String>> = (0..n)
            .map(|i| match seal.continual_edits {
                ContinualEdits::Generated => {
                    training_sequences(&base_edits[i].first().map(|e| e.text.clone()).unwrap_or_default(), template.split, &eval[i].context)
                }
                ContinualEdits::Oracle => oracle_sequences(&eval[i], &qa),
            })
            .collect();
        for &m in &seal.continual_methods {
            let bar = crate::util::progress_bar(&format!("continual {}", m.name()), n);
            let r = continual(&student, &settings.with_method(m), &qa, seal.metric, &eval[..n], &seqs, seal.seed, |_| bar.inc(1))?;
            bar.finish_and_clear();
            tracing::info!(
                "continual {}: newest passage {:.3}, earlier passages after the last update {:.3}",
                m.name(),
                r.newest(),
                r.earlier_after_last()
            );
            retention.push(r);
        }
        crate::io::atomic::write_atomic(&out.join("retention.json"), serde_json::to_string_pretty(&retention)?.as_bytes())?;
        super::continual::plot(&out.join("retention"), &retention)?;
    }

    let diagnostics = Diagnostics {
        open_book_em: ob_em,
        open_book_em_stderr: ob_se,
        open_book_f1: ob.mean(AnswerMetric::F1),
        open_book_contains: ob.mean(AnswerMetric::Contains),
        self_edits: edit_diags,
        rounds,
        inner_update_seconds: Timings::mean(&timings.inner),
        sampling_seconds_per_passage: Timings::mean(&timings.sampling),
    };
    crate::io::atomic::write_atomic(&out.join("diagnostics.json"), serde_json::to_string_pretty(&diagnostics)?.as_bytes())?;
    let seconds = t_start.elapsed().as_secs_f64();
    let table = render_markdown(cfg, &summary, &diagnostics, &retention, seconds);
    crate::io::atomic::write_atomic(&out.join("results.md"), table.as_bytes())?;
    Ok(SealOutcome { out, summary, diagnostics, retention, table, seconds })
}

fn render_markdown(cfg: &ExperimentConfig, summary: &[SummaryLine], d: &Diagnostics, retention: &[Retention], seconds: f64) -> String {
    let s = &cfg.seal;
    let source = if s.data.is_empty() { "the synthetic world's SEAL split".to_string() } else { s.data.clone() };
    let mut md = format!(
        "# SEAL\n\nPassages: {source}; template `{}`; k = {}, temperature {}, top-p {}, {} repeat(s); filter `{}`, {} round(s) of {} passages; wall time {:.0} s.\n\n",
        s.template,
        s.k,
        s.temperature,
        s.top_p,
        s.repeats,
        serde_json::to_value(s.filter).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default(),
        s.rounds,
        s.train_passages,
        seconds
    );
    md.push_str(&format!(
        "Rewards, ReST-EM's filter and the retention matrix use {}; \"contains\" = a gold answer occurs as whole words in the answer.\n\n",
        s.metric.name()
    ));
    md.push_str("| condition | inner method | passages | questions | EM | ± stderr | F1 | ± stderr | contains | ± stderr |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for l in summary {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} |\n",
            l.condition, l.inner_method, l.n_passages, l.n_questions, l.em, l.em_stderr, l.f1, l.f1_stderr, l.contains, l.contains_stderr
        ));
    }
    md.push_str(&format!(
        "\n## Diagnostics\n\nOpen-book (the passage in the prompt): EM {:.3} ± {:.3}, F1 {:.3}, contains {:.3}.\n\n",
        d.open_book_em, d.open_book_em_stderr, d.open_book_f1, d.open_book_contains
    ));
    md.push_str(&format!(
        "One inner update with its QA: {:.2} s; sampling k self-edits for a passage: {:.2} s.\n\n",
        d.inner_update_seconds, d.sampling_seconds_per_passage
    ));
    md.push_str("| self-edits | n | gold answer in self-edit | mean length (tokens) |\n|---|---:|---:|---:|\n");
    for e in &d.self_edits {
        md.push_str(&format!(
            "| {} | {} | {:.3} | {:.1} ± {:.1} |\n",
            e.condition, e.n_self_edits, e.gold_answer_in_self_edit, e.mean_self_edit_tokens, e.self_edit_tokens_stderr
        ));
    }
    if !d.rounds.is_empty() {
        md.push_str("\n## ReST-EM rounds\n\n| round | passages | kept | mean best reward | mean passage-only reward | generator SFT |\n|---:|---:|---:|---:|---:|---|\n");
        for r in &d.rounds {
            md.push_str(&format!(
                "| {} | {} | {} | {:.3} | {:.3} | {} |\n",
                r.round,
                r.passages,
                r.kept,
                r.mean_best_reward,
                r.mean_passage_only_reward,
                sft_losses(r.sft_first_loss, r.sft_last_loss)
            ));
        }
    }
    if !retention.is_empty() {
        md.push('\n');
        md.push_str(&super::continual::render_markdown(retention));
        md.push_str(&format!(
            "\nTrained on: each passage plus {}.\n",
            match s.continual_edits {
                ContinualEdits::Generated => "its first base self-edit",
                ContinualEdits::Oracle => "its own questions and answers as Q/A lines (oracle self-edits)",
            }
        ));
    }
    md
}

/// The generator's SFT loss, first → last step, or why there was none.
fn sft_losses(first: f32, last: f32) -> String {
    if first.is_nan() {
        "no SFT (nothing kept)".into()
    } else {
        format!("SFT loss {first:.3} → {last:.3}")
    }
}
