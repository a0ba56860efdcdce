#!/usr/bin/env python3
"""Build the tiny Hugging Face fixtures memtune's exactness tests load (tests/hf_exactness.rs).

Writes, into tests/fixtures/:
  hf-tiny-llama/   a random LlamaForCausalLM (grouped-query attention, untied lm_head)
  hf-tiny-llama3/  a random Llama 3.1-style model: "llama3" RoPE scaling, tied embeddings
  hf-tiny-qwen2/   a random Qwen2ForCausalLM (q/k/v bias, tied embeddings, an embedding table
                   padded past the tokenizer as real Qwen2 checkpoints have)
each with config.json, model.safetensors (f32), tokenizer.json and expected_logits.json =
{"input_ids": [...], "logits": [[...], ...]}: the logits transformers computes for input_ids, in
f32 with eager attention. memtune must reproduce them to 1e-4.

The weights are drawn larger than transformers' own init (and norms and biases are randomised
too) so that every parameter moves the logits well above the tolerance: a bug in any of them
(a bias left out, a norm not applied, the wrong RoPE theta) fails the test.

Run once, from the repository root, and commit the output:
    python3 -m pip install transformers tokenizers   # torch must already be installed
    python3 scripts/make-hf-fixtures.py
"""

import argparse
import json
import os

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

SEED = 0
# Target tokenizer size; a small corpus may give fewer tokens (the models use what it gives).
VOCAB = 300
# Embedding rows of the Qwen2 fixture are rounded up to a multiple of this (as Qwen2 pads).
QWEN_VOCAB_MULTIPLE = 64
# Std of the random matrices (transformers' default initializer_range is 0.02, which makes the
# logits of a tiny model nearly constant).
WEIGHT_STD = 0.15
NORM_STD = 0.2  # norm weights are 1 + NORM_STD * N(0, 1)
BIAS_STD = 0.3
PROMPT = "The capital of France is Paris."

CORPUS = [
    "The capital of France is Paris.",
    "Paris is a city on the river Seine.",
    "memtune is a Rust engine for language models that keep learning.",
    "Hugging Face transformers computes the reference logits.",
    "A tiny random model is enough to test that every weight is loaded exactly.",
    "Grouped-query attention shares each key and value head between query heads.",
    "Rotary position embeddings rotate queries and keys by position.",
    "Qwen2 adds a bias to the query, key and value projections.",
    "It loads it, and it loads it exactly, and then it learns.",
] * 4

COMMON = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    hidden_act="silu",
    bos_token_id=None,
    eos_token_id=0,
    attn_implementation="eager",
)


def train_tokenizer():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        min_frequency=1,
        show_progress=False,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer)
    return tok


def randomise(model, gen):
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if name.endswith("norm.weight"):
                p.copy_(1.0 + NORM_STD * noise)
            elif name.endswith(".bias"):
                p.copy_(BIAS_STD * noise)
            else:
                p.copy_(WEIGHT_STD * noise)


def write(out_dir, model, tok, input_ids):
    os.makedirs(out_dir, exist_ok=True)
    model.eval()
    with torch.no_grad():
        logits = model(torch.tensor([input_ids])).logits[0].float()
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    with open(os.path.join(out_dir, "expected_logits.json"), "w") as f:
        json.dump({"input_ids": input_ids, "logits": logits.tolist()}, f)
    for name in sorted(os.listdir(out_dir)):
        print(f"  {out_dir}/{name}: {os.path.getsize(os.path.join(out_dir, name)) / 1024:.0f} KiB")
    print(f"  logits {tuple(logits.shape)}, max |logit| {logits.abs().max().item():.2f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="tests/fixtures", help="folder that gets hf-tiny-llama/, hf-tiny-llama3/ and hf-tiny-qwen2/")
    args = ap.parse_args()
    torch.manual_seed(SEED)
    tok = train_tokenizer()
    vocab = tok.get_vocab_size()
    input_ids = tok.encode(PROMPT).ids
    print(f"tokenizer: {vocab} tokens; input: {len(input_ids)} tokens")

    gen = torch.Generator().manual_seed(SEED)
    llama = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=vocab,
            rms_norm_eps=1e-6,
            rope_theta=50000.0,
            tie_word_embeddings=False,
            attention_bias=False,
            **COMMON,
        )
    ).float()
    randomise(llama, gen)
    write(os.path.join(args.out, "hf-tiny-llama"), llama, tok, input_ids)

    padded = -(-vocab // QWEN_VOCAB_MULTIPLE) * QWEN_VOCAB_MULTIPLE
    qwen = Qwen2ForCausalLM(
        Qwen2Config(
            vocab_size=padded,
            rms_norm_eps=1e-5,
            rope_theta=1000000.0,
            tie_word_embeddings=True,
            use_sliding_window=False,
            **COMMON,
        )
    ).float()
    randomise(qwen, gen)
    write(os.path.join(args.out, "hf-tiny-qwen2"), qwen, tok, input_ids)

    # Llama 3.1+ RoPE scaling; the short original context puts the head's 8 frequencies in all
    # three bands (wavelength 6.3 < 32/4 kept, 21 blended, 71 and up > 32/1 divided by 8).
    llama3 = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=vocab,
            rms_norm_eps=1e-5,
            rope_parameters={
                "rope_type": "llama3",
                "rope_theta": 20000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 32,
            },
            tie_word_embeddings=True,
            attention_bias=False,
            **COMMON,
        )
    ).float()
    randomise(llama3, gen)
    write(os.path.join(args.out, "hf-tiny-llama3"), llama3, tok, input_ids)


if __name__ == "__main__":
    main()
