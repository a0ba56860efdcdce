//! `memtune seal`: the whole experiment (docs/design.md, "SEAL").
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
use super::inner::{closed_book, model_over, reward, InnerSettings, QaScores, Repeats, Reward, Student};
use super::passages::{split_passages, Passage};
use super::report::{render_markdown, sft_losses, summary_line};
pub use super::report::{Diagnostics, RoundReport, SummaryLine};
use super::rest_em::{select, sft_batches, sft_generator, sft_pair, SftStep};
use super::self_edit::{sample_self_edits, training_sequences, SampleOptions, SelfEdit};
use super::templates::{ChatFormat, QaFormat, Template};
use crate::config::{AnswerMetric, ContinualEdits, ExperimentConfig, MethodKind, SealConfig};
use crate::data::synthetic::Split;
use crate::data::tokenizer::Tokenizer;
use crate::eval::metrics::mean_stderr;
use crate::model::{Llama, LlamaConfig, ParamStore};
use crate::train::model_dir::{load_base, pretrained_base, Base};
use crate::train::tfidf::check_index;
use crate::util::stable_hash;
use anyhow::{Context, Result};
use candle_core::Device;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

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
    /// A copy of the student (sharing its storage: ReST-EM's SFT trains copies,
    /// `methods::prepare`), or `seal.teacher`.
    fn new(base: &Base, seal: &SealConfig, qa: &QaFormat, device: &Device) -> Result<Self> {
        if seal.teacher.is_empty() {
            let store = base.store.copy_on_write(|_| false)?;
            let model = model_over(&base.model_cfg, &store, device)?;
            return Ok(Generator { cfg: base.model_cfg.clone(), store, model, tok: base.tokenizer.clone(), chat: qa.chat.clone() });
        }
        let t = load_base(Path::new(&seal.teacher), device).with_context(|| format!("seal.teacher = {}", seal.teacher))?;
        // Self-edits travel as text, but ReST-EM's reward and the student's inner loop assume one
        // vocabulary: a teacher that splits text differently is a config mistake, refused here.
        if t.tokenizer.inner().get_vocab(true) != base.tokenizer.inner().get_vocab(true) {
            anyhow::bail!(
                "seal.teacher = {}: its tokenizer ({} tokens) differs from the student's ({} tokens); SEAL needs one vocabulary",
                seal.teacher,
                t.tokenizer.vocab_size(),
                base.tokenizer.vocab_size()
            );
        }
        let chat = ChatFormat::resolve(seal.chat, &t.dir)?;
        Ok(Generator { cfg: t.model_cfg, store: t.store, model: t.model, tok: t.tokenizer, chat })
    }

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

/// What every inner update of a run shares: the student, how questions are asked, the self-edit
/// template, the SEAL settings, and the clock of the costly steps.
struct Scorer<'a> {
    student: Student<'a>,
    qa: &'a QaFormat,
    template: &'a Template,
    seal: &'a SealConfig,
    timings: &'a Timings,
}

impl Scorer<'_> {
    /// The reward of training on `seqs` for passage `p` (`candidate` 0: the passage alone).
    fn reward(&self, s: &InnerSettings, p: &Passage, seqs: &[String], before: &QaScores, candidate: usize) -> Result<Reward> {
        let seal = self.seal;
        Timings::time(&self.timings.inner, seal.repeats, || {
            reward(&self.student, s, self.qa, p, seqs, before, Repeats { n: seal.repeats, seed: seal.seed, candidate })
        })
    }

    /// The reward of training on the passage alone.
    fn passage_only(&self, s: &InnerSettings, p: &Passage, before: &QaScores) -> Result<Reward> {
        self.reward(s, p, std::slice::from_ref(&p.context), before, 0)
    }

    /// Rewards of the self-edits of one passage with one inner method, and their records (written
    /// to `edits_out` unless the condition is one of ReST-EM's own `train-` passages).
    fn edits(
        &self,
        s: &InnerSettings,
        (p, edits, before): (&Passage, &[SelfEdit], &QaScores),
        condition: &str,
        edits_out: &mut Writer,
    ) -> Result<(Vec<Reward>, Vec<SelfEditRecord>)> {
        let mut rewards = vec![];
        let mut records = vec![];
        for (i, e) in edits.iter().enumerate() {
            let seqs = training_sequences(&e.text, self.template.split, &p.context);
            let r = self.reward(s, p, &seqs, before, i + 1)?;
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
}

/// The files a run appends to as it goes, and the summary so far.
struct Log {
    summary_out: Writer,
    edits_out: Writer,
    summary: Vec<SummaryLine>,
}

impl Log {
    fn push(&mut self, l: SummaryLine) -> Result<()> {
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
        self.summary_out.line(&l)?;
        self.summary.push(l);
        Ok(())
    }
}

/// A condition on the eval passages: its name, the ReST-EM round whose generator writes its
/// self-edits (0: the untrained one), and whether the passage alone is scored first (the base
/// condition's `passage-only`).
struct Condition<'a> {
    name: &'a str,
    round: usize,
    passage_only: bool,
}

/// One condition on the eval passages: the generator's self-edits for each (sampled once), scored
/// with every inner method. Returns the self-edits and their diagnostics.
fn eval_condition(
    sc: &Scorer,
    generator: &Generator,
    settings: &InnerSettings,
    c: Condition,
    (eval, before): (&[Passage], &[QaScores]),
    log: &mut Log,
    bar: &indicatif::ProgressBar,
) -> Result<(Vec<Vec<SelfEdit>>, EditDiagnostics)> {
    let seal = sc.seal;
    let edits: Vec<Vec<SelfEdit>> = eval
        .iter()
        .map(|p| {
            bar.inc(1);
            generator.sample(sc.template, p, seal, &format!("eval round {}", c.round), sc.timings)
        })
        .collect::<Result<_>>()?;
    let (condition, passage_only) = (c.name, c.passage_only);
    let diag = edit_diagnostics(condition, &eval.iter().zip(&edits).map(|(p, e)| (p, e.as_slice())).collect::<Vec<_>>());
    for &m in &seal.inner_methods {
        let s = settings.with_method(m);
        let mut po = vec![];
        let mut se = vec![];
        for (i, p) in eval.iter().enumerate() {
            if passage_only {
                bar.set_message(format!("{} passage {i}", m.name()));
                po.push(sc.passage_only(&s, p, &before[i])?.after);
                bar.inc(1);
            }
            let (rs, _) = sc.edits(&s, (p, &edits[i], &before[i]), condition, &mut log.edits_out)?;
            se.push(QaScores::average(&rs.iter().map(|r| r.after.clone()).collect::<Vec<_>>()));
            bar.inc(1);
        }
        if passage_only {
            log.push(summary_line("passage-only", m.name(), seal.seed, &po))?;
        }
        log.push(summary_line(condition, m.name(), seal.seed, &se))?;
    }
    Ok((edits, diag))
}

/// One ReST-EM round on its own passages: sample k self-edits each, reward them with the first
/// inner method, keep what the filter picks and finetune the generator on it.
fn rest_em_round(
    sc: &Scorer,
    generator: &mut Generator,
    reward_settings: &InnerSettings,
    (round, passages): (usize, &[Passage]),
    cfg: &ExperimentConfig,
    log: &mut Log,
    bar: &indicatif::ProgressBar,
) -> Result<RoundReport> {
    let seal = sc.seal;
    let st = &sc.student;
    let mut pairs = vec![];
    let (mut best_sum, mut po_sum) = (0.0, 0.0);
    let train_condition = format!("train-round-{round}");
    for p in passages {
        let before_p = closed_book(st.model, st.tok, sc.qa, p)?;
        let edits = generator.sample(sc.template, p, seal, &format!("train round {round}"), sc.timings)?;
        let po = sc.passage_only(reward_settings, p, &before_p)?.gain.of(seal.metric);
        let (rs, mut recs) = sc.edits(reward_settings, (p, &edits, &before_p), &train_condition, &mut log.edits_out)?;
        let gains: Vec<f64> = rs.iter().map(|r| r.gain.of(seal.metric)).collect();
        let kept = select(&gains, po, seal.filter);
        for (i, rec) in recs.iter_mut().enumerate() {
            rec.kept = Some(kept.contains(&i));
            log.edits_out.line(rec)?;
        }
        best_sum += gains.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        po_sum += po;
        for &i in &kept {
            pairs.push(sft_pair(
                &generator.tok,
                &generator.prompt(sc.template, p),
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
        generator.model = model_over(&generator.cfg, &store, generator.model.device())?;
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
    Ok(rep)
}

/// The passages of `seal.data` (a SQuAD file), or the synthetic world's SEAL split, each cut to
/// `seal.questions_per_passage` questions.
fn load_passages(seal: &SealConfig, base: &Base) -> Result<Vec<Passage>> {
    let all = if seal.data.is_empty() {
        let w = base.world.as_ref().context("seal.data is empty (the synthetic world's SEAL split) but the model was not trained on the synthetic world: set seal.data to a SQuAD file")?;
        Passage::from_world(w, Split::Seal)
    } else {
        Passage::from_squad(Path::new(&seal.data))?
    };
    Ok(all.into_iter().map(|p| p.limit_questions(seal.questions_per_passage)).collect())
}

/// Continual SEAL (step 4 of the module doc): the first `continual_passages` eval passages in
/// sequence, each with its training sequences, per `continual_methods`; the retention matrices
/// are written into `out`.
fn continual_seal(
    sc: &Scorer,
    settings: &InnerSettings,
    eval: &[Passage],
    base_edits: &[Vec<SelfEdit>],
    out: &Path,
) -> Result<Vec<Retention>> {
    let seal = sc.seal;
    let mut retention = vec![];
    if seal.continual_passages == 0 {
        return Ok(retention);
    }
    let n = seal.continual_passages.min(eval.len());
    let seqs: Vec<Vec<String>> = (0..n)
        .map(|i| match seal.continual_edits {
            ContinualEdits::Generated => {
                training_sequences(&base_edits[i].first().map(|e| e.text.clone()).unwrap_or_default(), sc.template.split, &eval[i].context)
            }
            ContinualEdits::Oracle => oracle_sequences(&eval[i], sc.qa),
        })
        .collect();
    for &m in &seal.continual_methods {
        let bar = crate::util::progress_bar(&format!("continual {}", m.name()), n);
        let r = continual(&sc.student, &settings.with_method(m), sc.qa, seal.metric, &eval[..n], &seqs, seal.seed, |_| bar.inc(1))?;
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
    Ok(retention)
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
    // The sparse-memory inner loop's row ranking, checked now rather than when its first
    // condition runs.
    let continual = if seal.continual_passages > 0 { seal.continual_methods.as_slice() } else { &[] };
    if seal.inner_methods.iter().chain(continual).any(|&m| m == MethodKind::SparseMemory) {
        check_index(cfg.finetune.sparse_memory.ranking, base.background.is_some())
            .with_context(|| format!("seal.model = {}: finetune.sparse_memory", seal.model))?;
    }
    let student = Student {
        cfg: &base.model_cfg,
        store: &base.store,
        model: &base.model,
        tok: &base.tokenizer,
        background: base.background.as_ref(),
    };
    let qa = QaFormat::from_config(seal, ChatFormat::resolve(seal.chat, &base.dir)?);
    let mut generator = Generator::new(&base, seal, &qa, device)?;
    let template = Template::from_config(seal)?;
    let settings = InnerSettings { ft: cfg.finetune.clone(), epochs: seal.inner_epochs, batch_size: seal.inner_batch_size };

    // 2. Passages.
    let all = load_passages(seal, &base)?;
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

    let mut log = Log {
        summary_out: Writer::create(&out.join("summary.jsonl"))?,
        edits_out: Writer::create(&out.join("self_edits.jsonl"))?,
        summary: vec![],
    };
    let timings = Timings::default();
    let sc = Scorer { student, qa: &qa, template: &template, seal, timings: &timings };

    // 3. No update, and the diagnostics of the student itself.
    let before: Vec<QaScores> = eval.iter().map(|p| closed_book(&base.model, &base.tokenizer, &qa, p)).collect::<Result<_>>()?;
    log.push(summary_line("no-update", "none", seal.seed, &before))?;
    let ob = open_book(&base.model, &base.tokenizer, &qa, eval)?;
    let (ob_em, ob_se) = mean_stderr(&ob.em);
    tracing::info!(
        "open-book EM {:.3} ± {:.3}, F1 {:.3}, contains {:.3} (the ceiling of what self-edits carry)",
        ob_em,
        ob_se,
        ob.mean(AnswerMetric::F1),
        ob.mean(AnswerMetric::Contains)
    );

    // Passage only, and base self-edits.
    let bar = crate::util::progress_bar("seal base", eval.len() * (1 + seal.inner_methods.len() * 2));
    let (base_edits, diag) = eval_condition(
        &sc,
        &generator,
        &settings,
        Condition { name: "base-self-edits", round: 0, passage_only: true },
        (eval, &before),
        &mut log,
        &bar,
    )?;
    let mut edit_diags = vec![diag];
    bar.finish_and_clear();

    // ReST-EM rounds, each followed by its condition on the eval passages.
    let mut rounds = vec![];
    let reward_settings = settings.with_method(seal.inner_methods[0]);
    for (ri, passages) in split.rounds.iter().enumerate() {
        let round = ri + 1;
        let bar = crate::util::progress_bar(&format!("seal round {round}"), passages.len() + eval.len() * (1 + seal.inner_methods.len()));
        rounds.push(rest_em_round(&sc, &mut generator, &reward_settings, (round, passages), cfg, &mut log, &bar)?);
        let condition = format!("round-{round}");
        let (_, diag) = eval_condition(
            &sc,
            &generator,
            &settings,
            Condition { name: &condition, round, passage_only: false },
            (eval, &before),
            &mut log,
            &bar,
        )?;
        edit_diags.push(diag);
        bar.finish_and_clear();
    }
    // 4. Continual SEAL.
    let retention = continual_seal(&sc, &settings, eval, &base_edits, &out)?;

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
    let table = render_markdown(cfg, &log.summary, &diagnostics, &retention, seconds);
    crate::io::atomic::write_atomic(&out.join("results.md"), table.as_bytes())?;
    Ok(SealOutcome { out, summary: log.summary, diagnostics, retention, table, seconds })
}
