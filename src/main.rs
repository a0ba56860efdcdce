//! The `memtune` command line: parses arguments, loads configs, calls the library.

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use memtune::config::ExperimentConfig;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "memtune",
    version,
    about = "Continual learning on a trainable transformer: sparse memory finetuning, SEAL, LoRA, full finetuning"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// `--config FILE`, repeated `--set key=value` and `--device`, shared by every command that runs
/// an experiment.
#[derive(Args, Clone)]
struct ConfigArgs {
    /// Experiment config (TOML); built-in defaults when omitted.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override any config key, e.g. `--set train.lr=1e-3` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    #[command(flatten)]
    device: DeviceArg,
}

/// `--device`: where tensors live (overrides `run.device`).
#[derive(Args, Clone, Default)]
struct DeviceArg {
    /// cpu, cuda (= cuda:0) or cuda:N; needs the CUDA build for a GPU (default: the config's
    /// run.device, cpu).
    #[arg(long)]
    device: Option<String>,
}

impl DeviceArg {
    /// The device asked for (cpu when none is).
    fn open(&self) -> Result<candle_core::Device> {
        memtune::device::open(self.device.as_deref().unwrap_or("cpu"))
    }

    /// `run.device=...` for `--set`, when given.
    fn set(&self) -> Option<String> {
        self.device.as_ref().map(|d| format!("run.device={}", toml::Value::String(d.clone())))
    }
}

impl ConfigArgs {
    /// `--set` with `--device` last (it wins).
    fn sets(&self) -> Vec<String> {
        self.set.iter().cloned().chain(self.device.set()).collect()
    }

    /// `finetune.method=M` first among the overrides, when a command's `--method` is given.
    fn with_method(mut self, method: Option<&str>) -> Self {
        if let Some(m) = method {
            self.set.insert(0, format!("finetune.method=\"{m}\""));
        }
        self
    }

    fn load(&self) -> Result<ExperimentConfig> {
        ExperimentConfig::load(self.config.as_deref(), &self.sets())
    }

    /// The config and its opened device.
    fn load_with_device(&self) -> Result<(ExperimentConfig, candle_core::Device)> {
        let cfg = self.load()?;
        let device = memtune::device::open(&cfg.run.device)?;
        Ok((cfg, device))
    }
}

#[derive(Subcommand)]
enum Command {
    /// End to end on built-in defaults: the quick learning-vs-forgetting benchmark (synthetic
    /// world, tokenizer, a small memory model pretrained or reused, sparse memory finetuning vs
    /// LoRA vs full finetuning); prints the table and where the plot is.
    Demo {
        #[command(flatten)]
        cfg: ConfigArgs,
    },
    /// Pretrain a model from scratch (config's [model], [train], [data]); writes a run directory.
    Pretrain {
        #[command(flatten)]
        cfg: ConfigArgs,
        /// Continue from the checkpoint in the run directory.
        #[arg(long)]
        resume: bool,
        /// Stop after this many steps (a checkpoint is written); resume later with --resume.
        #[arg(long)]
        stop_after: Option<usize>,
    },
    /// Generate a continuation of a prompt.
    Generate {
        #[command(flatten)]
        cfg: ConfigArgs,
        /// Run directory or model folder (config.json, model.safetensors, tokenizer.json).
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        prompt: String,
        #[arg(long, default_value_t = 64)]
        max_new_tokens: usize,
        /// 0 = greedy.
        #[arg(long, default_value_t = 0.0)]
        temperature: f64,
        #[arg(long, default_value_t = 1.0)]
        top_p: f64,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Per-token log-likelihood of texts, one JSON line per text.
    Score {
        #[command(flatten)]
        cfg: ConfigArgs,
        #[arg(long)]
        model: PathBuf,
        /// A text to score (repeatable).
        #[arg(long)]
        text: Vec<String>,
        /// A file with one text per line.
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Closed-book QA: exact match and token F1 (SQuAD normalisation).
    Eval {
        #[command(flatten)]
        cfg: ConfigArgs,
        #[arg(long)]
        model: PathBuf,
        /// JSONL of {"question", "answers": [..]} (or "answer"); default: the synthetic world of the
        /// model's run config.
        #[arg(long)]
        qa: Option<PathBuf>,
        /// Synthetic-world split to ask about: qa, bio-only, new, seal.
        #[arg(long, default_value = "bio-only")]
        split: String,
        /// At most this many questions, a seeded sample (default: the config's eval.max_questions; 0 = all).
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Memory-slot usage of a checkpoint on a corpus: fraction of slots used, access entropy,
    /// most-used slots (per memory layer and pooled).
    Inspect {
        #[command(flatten)]
        cfg: ConfigArgs,
        #[arg(long)]
        model: PathBuf,
        /// Text files to run (default: the run's own training distribution, other documents).
        #[arg(long = "text")]
        texts: Vec<PathBuf>,
        /// Batches to run.
        #[arg(long, default_value_t = 64)]
        batches: usize,
        /// How many most-used slots to list.
        #[arg(long, default_value_t = 10)]
        top: usize,
    },
    /// Build the TF-IDF background index of a memory model's checkpoint (`[background]`: B
    /// batches of its pretraining distribution) and store it there (`memory.background_df`).
    Background {
        #[command(flatten)]
        cfg: ConfigArgs,
        /// Run directory or checkpoint folder (rewritten in place).
        #[arg(long)]
        model: PathBuf,
    },
    /// Learn new facts with one method (`[finetune]`: sparse-memory, lora or full); prints a JSON
    /// line with QA on the new facts before and after.
    Finetune {
        #[command(flatten)]
        cfg: ConfigArgs,
        /// Run directory or model folder to start from.
        #[arg(long)]
        model: PathBuf,
        /// Method (overrides finetune.method).
        #[arg(long)]
        method: Option<String>,
        /// Output folder (default: <run dir>/finetune-<method>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// LoRA: also write the adapters merged into the base as a model folder.
        #[arg(long)]
        merge: bool,
    },
    /// Import a llama.cpp GGUF file (llama, qwen2; any quantisation candle reads) as a Hugging
    /// Face-style model folder: dequantised safetensors, config.json, tokenizer.json.
    Import {
        /// The .gguf file.
        #[arg(long)]
        gguf: PathBuf,
        /// Output folder (must not exist, or be empty); written whole or not at all.
        #[arg(long)]
        out: PathBuf,
        /// Weight dtype: f32 or bf16.
        #[arg(long, default_value = "f32")]
        dtype: memtune::io::gguf::WeightDtype,
    },
    /// SEAL (`[seal]`): self-edits, inner-loop rewards, ReST-EM rounds, continual SEAL; writes
    /// self_edits.jsonl, summary.jsonl, diagnostics.json, results.md (and retention.png) and prints
    /// the table.
    Seal {
        #[command(flatten)]
        cfg: ConfigArgs,
    },
    /// Data utilities.
    Data {
        #[command(subcommand)]
        command: DataCommand,
    },
    /// Tokenizer utilities.
    Tokenizer {
        #[command(subcommand)]
        command: TokenizerCommand,
    },
    /// Speed benchmarks.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
}

#[derive(Subcommand)]
enum DataCommand {
    /// Write the synthetic world (people, bios, QA, splits) as JSONL.
    Synth {
        #[command(flatten)]
        cfg: ConfigArgs,
        #[arg(long, default_value = "data/synthetic")]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum TokenizerCommand {
    /// Train a byte-level BPE tokenizer on text files (or the synthetic world when none given).
    Train {
        #[command(flatten)]
        cfg: ConfigArgs,
        /// Text files (whole file = one document; .jsonl lines with a "text" field).
        #[arg(long = "input")]
        inputs: Vec<PathBuf>,
        /// Vocabulary size (default: the config's model.vocab_size).
        #[arg(long)]
        vocab_size: Option<usize>,
        #[arg(long, default_value = "tokenizer.json")]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Learning vs forgetting: pretrain (or reuse) a small memory model, build its background
    /// index, learn the same new facts with each method and grid point, measure new-fact QA and
    /// retention; writes results.jsonl, results.md and pareto.png/.svg.
    Forgetting {
        /// Config (default: configs/forgetting.toml, built in).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Override any config key (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        #[command(flatten)]
        device: DeviceArg,
        /// The small preset (the config's `forgetting.quick` overrides): for tests and the demo.
        #[arg(long)]
        quick: bool,
        /// Only redo results.md and the plot from the results folder's results.jsonl and
        /// pretrained.json (nothing is trained).
        #[arg(long)]
        report: bool,
        /// Benchmark this model folder (a memory-retrofit run directory, for sparse memory
        /// finetuning) instead of pretraining one on the synthetic world (`forgetting.model`).
        /// Nothing is written into it.
        #[arg(long)]
        model: Option<PathBuf>,
        /// The facts to learn, a facts JSONL file (`finetune.facts_file`; README, "Facts files").
        #[arg(long)]
        facts: Option<PathBuf>,
        /// Only measure the base model's learning and retention probes (no finetuning runs).
        #[arg(long)]
        measure_only: bool,
    },
    /// Time training steps of a config; prints one JSON line (tokens_per_s, step_ms, peak_rss_mb).
    /// With --method, the steps of that finetuning method (`[finetune.<method>]`) instead of
    /// pretraining's.
    Step {
        #[command(flatten)]
        cfg: ConfigArgs,
        /// sparse-memory | lora | full (overrides finetune.method; default: a pretraining step).
        #[arg(long)]
        method: Option<String>,
        #[arg(long, default_value_t = 2)]
        warmup: usize,
        #[arg(long, default_value_t = 5)]
        steps: usize,
    },
    /// Forward+backward time per token of one memory layer alone, for several pool sizes
    /// (N = n_keys²); one JSON line each.
    Memory {
        /// Comma-separated n_keys values.
        #[arg(long, value_delimiter = ',', default_value = "256,1024,2048")]
        n_keys: Vec<usize>,
        #[arg(long, default_value_t = 1024)]
        tokens: usize,
        #[arg(long, default_value_t = 256)]
        d_model: usize,
        #[arg(long, default_value_t = 4)]
        heads: usize,
        #[arg(long, default_value_t = 32)]
        knn: usize,
        #[arg(long, default_value_t = 128)]
        k_dim: usize,
        #[arg(long, default_value_t = 256)]
        v_dim: usize,
        #[arg(long, default_value_t = 2)]
        warmup: usize,
        #[arg(long, default_value_t = 5)]
        reps: usize,
        #[command(flatten)]
        device: DeviceArg,
    },
    /// GFLOP/s of f32 matrix products x (M, K) · wᵀ (w stored (N, K), as a weight), the way the
    /// model takes them; one JSON line per shape (cpu, simd kernel family, ms, gflop_per_s).
    Matmul {
        /// Comma-separated MxKxN shapes (default: the forward and backward products of
        /// configs/bench-reference.toml: 1,024 tokens, d 256, d_ff 688, vocab 4,096).
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "1024x256x256,1024x256x688,1024x688x256,1024x256x4096,1024x4096x256,688x1024x256,4096x1024x256"
        )]
        shapes: Vec<memtune::bench::matmul::Shape>,
        #[arg(long, default_value_t = 3)]
        warmup: usize,
        #[arg(long, default_value_t = 20)]
        reps: usize,
        #[command(flatten)]
        device: DeviceArg,
    },
    /// Prefill and decode speed with the KV cache (greedy, random prompt tokens) of a model
    /// folder, or of a config's architecture with random weights; prints one JSON line.
    Generate {
        /// Model folder, run directory or cached hf-hub repo id (default: random weights of --config).
        #[arg(long)]
        model: Option<PathBuf>,
        #[command(flatten)]
        cfg: ConfigArgs,
        #[arg(long, default_value_t = 128)]
        prompt_tokens: usize,
        #[arg(long, default_value_t = 64)]
        new_tokens: usize,
        #[arg(long, default_value_t = 1)]
        batch: usize,
        #[arg(long, default_value_t = 1)]
        warmup: usize,
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
}

fn main() {
    single_threaded_candle_elementwise();
    keep_freed_memory();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).init();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// candle runs its element-wise CPU ops on a pool of its own whose workers spin between ops,
/// beside rayon's pool, which runs the GEMMs and memtune's ops: with both, the cores are
/// oversubscribed and a third of a training step went to spinning (docs/design.md, "CPU
/// threads"). memtune keeps candle's element-wise ops on the calling thread unless
/// `CANDLE_NUM_THREADS` is set. Called before any other thread exists.
fn single_threaded_candle_elementwise() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}

/// glibc serves large blocks (a step's gradients, logits, activations) with fresh mmaps and
/// returns them on free, so every step asked the kernel for zeroed pages again: a quarter of a
/// SmolLM2 training step went to page clearing (docs/design.md, "Memory reuse"). Serving every
/// block from the heap and never trimming it lets a step reuse the last one's memory.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

fn run(cli: Cli) -> Result<()> {
    use memtune::{bench, commands, data, eval, train};
    match cli.command {
        Command::Demo { cfg } => {
            let cfg = commands::demo::config(cfg.config.as_deref(), &cfg.sets())?;
            commands::demo::run(&cfg, &memtune::device::open(&cfg.run.device)?)?;
            Ok(())
        }
        Command::Pretrain { cfg, resume, stop_after } => {
            let (cfg, device) = cfg.load_with_device()?;
            let out = train::pretrain::run_until(&cfg, resume, stop_after, &device)?;
            println!("{}", serde_json::json!({"run_dir": out.dir, "steps": out.steps, "final_loss": out.final_loss}));
            Ok(())
        }
        Command::Generate { cfg, model, prompt, max_new_tokens, temperature, top_p, seed } => {
            let (_, device) = cfg.load_with_device()?;
            let opts = eval::GenerateOptions { max_new_tokens, temperature, top_p, seed, stop_tokens: vec![] };
            println!("{}", eval::generate::generate_text(&model, &prompt, &opts, &device)?);
            Ok(())
        }
        Command::Score { cfg, model, text, file } => {
            let (_, device) = cfg.load_with_device()?;
            let mut texts = text;
            if let Some(f) = file {
                let body = std::fs::read_to_string(&f).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", f.display()))?;
                texts.extend(body.lines().filter(|l| !l.trim().is_empty()).map(String::from));
            }
            anyhow::ensure!(!texts.is_empty(), "score needs --text or --file");
            for line in eval::score::score_texts(&model, &texts, &device)? {
                println!("{}", serde_json::to_string(&line)?);
            }
            Ok(())
        }
        Command::Eval { cfg, model, qa, split, limit } => {
            let (cfg, device) = cfg.load_with_device()?;
            let limit = limit.unwrap_or(cfg.eval.max_questions);
            let report = eval::qa::eval_command(&model, qa.as_deref(), &split, limit, cfg.train.seed, &device)?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        Command::Background { cfg, model } => {
            let (cfg, device) = cfg.load_with_device()?;
            let report = train::background::background_command(&model, &cfg.background, &device)?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        Command::Finetune { cfg, model, method, out, merge } => {
            let (cfg, device) = cfg.with_method(method.as_deref()).load_with_device()?;
            let report = commands::finetune::finetune_command(&model, &cfg, out.as_deref(), merge, &device)?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        Command::Seal { cfg } => {
            let (cfg, device) = cfg.load_with_device()?;
            let out = memtune::seal::run::run(&cfg, &device)?;
            println!("{}", out.table);
            println!("results: {} (summary.jsonl, self_edits.jsonl, diagnostics.json)", out.out.display());
            Ok(())
        }
        Command::Inspect { cfg, model, texts, batches, top } => {
            let (_, device) = cfg.load_with_device()?;
            let report = eval::inspect::inspect_command(&model, &texts, batches, top, &device)?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        Command::Bench { command: BenchCommand::Forgetting { config, set, device, quick, report, model, facts, measure_only } } => {
            let path_set = |key: &str, p: Option<PathBuf>| p.map(|p| format!("{key}={}", toml::Value::String(p.display().to_string())));
            let set: Vec<String> = path_set("forgetting.model", model)
                .into_iter()
                .chain(path_set("finetune.facts_file", facts))
                .chain(measure_only.then(|| "forgetting.measure_only=true".to_string()))
                .chain(set)
                .chain(device.set())
                .collect();
            let cfg = bench::forgetting::load_config(config.as_deref(), quick, &set)?;
            let out = if report {
                bench::forgetting::report_only(&cfg, quick)?
            } else {
                bench::forgetting::run(&cfg, quick, &memtune::device::open(&cfg.run.device)?)?
            };
            println!("{}", out.table);
            println!("results: {}\nplot: {} (and .svg)", out.out.join("results.jsonl").display(), out.out.join("pareto.png").display());
            Ok(())
        }
        Command::Bench { command: BenchCommand::Memory { n_keys, tokens, d_model, heads, knn, k_dim, v_dim, warmup, reps, device } } => {
            let device = device.open()?;
            let o = bench::memory::MemoryBenchOptions { n_keys, tokens, d_model, heads, knn, k_dim, v_dim, warmup, reps, device };
            bench::memory::run(&o, |line| println!("{}", serde_json::to_string(line).unwrap()))?;
            Ok(())
        }
        Command::Import { gguf, out, dtype } => {
            let report = memtune::io::gguf::import_gguf(&gguf, &out, dtype)?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        Command::Data { command: DataCommand::Synth { cfg, out } } => {
            let cfg = cfg.load()?;
            let world = data::synthetic::World::generate(&cfg.data.world);
            world.write_jsonl(&out)?;
            eprintln!("wrote the synthetic world to {}", out.display());
            Ok(())
        }
        Command::Tokenizer { command: TokenizerCommand::Train { cfg, inputs, vocab_size, out } } => {
            let vocab_size = vocab_size.unwrap_or(cfg.load()?.model.vocab_size);
            let tok = data::tokenizer::train_from_files(&inputs, vocab_size)?;
            tok.save(&out)?;
            eprintln!("wrote {} ({} tokens)", out.display(), tok.vocab_size());
            Ok(())
        }
        Command::Bench { command: BenchCommand::Generate { model, cfg, prompt_tokens, new_tokens, batch, warmup, runs } } => {
            let o = bench::generate::GenerateBenchOptions { prompt_tokens, new_tokens, batch, warmup, runs, seed: 0 };
            let (cfg, device) = cfg.load_with_device()?;
            let report = match model {
                Some(dir) => {
                    let m = train::model_dir::load_base(&dir, &device)?;
                    bench::generate::run(&m.model, m.store.num_elements(), &o)?
                }
                None => {
                    let b = bench::step::StepBench::new(&cfg, &device)?;
                    bench::generate::run(&b.model, b.store.num_elements(), &o)?
                }
            };
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        Command::Bench { command: BenchCommand::Matmul { shapes, warmup, reps, device } } => {
            for r in bench::matmul::run(&shapes, warmup, reps, &device.open()?)? {
                println!("{}", serde_json::to_string(&r)?);
            }
            Ok(())
        }
        Command::Bench { command: BenchCommand::Step { cfg, method, warmup, steps } } => {
            let (cfg, device) = cfg.with_method(method.as_deref()).load_with_device()?;
            let report = bench::step::run(&cfg, warmup, steps, method.is_some(), &device)?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
    }
}
