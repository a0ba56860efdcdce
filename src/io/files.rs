//! The file names of a model folder and a run directory, in one place (docs/design.md, "File
//! formats").

/// All parameters, Hugging Face names (and the background index, `memory.background_df`).
pub const MODEL_FILE: &str = "model.safetensors";
/// A sharded model's index (`weight_map`: tensor → shard file).
pub const WEIGHT_INDEX_FILE: &str = "model.safetensors.index.json";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// The model config, Hugging Face style.
pub const CONFIG_FILE: &str = "config.json";
/// The resolved experiment config of a memtune run.
pub const EXPERIMENT_FILE: &str = "experiment.toml";
/// Step, data position and the manifest of a checkpoint.
pub const TRAINER_STATE_FILE: &str = "trainer_state.json";
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// The chat template and special tokens, Hugging Face style.
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";
/// A training run's metrics, one JSON object per logged step.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// LoRA adapters in PEFT's layout.
pub const ADAPTER_MODEL_FILE: &str = "adapter_model.safetensors";
pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
