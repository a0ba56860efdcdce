#!/usr/bin/env python3
"""PyTorch eager anchor for a Hugging Face model folder (Llama family), to compare with memtune
on the same shapes in one run (scripts/real-model-vs-pytorch.sh).

  python3 scripts/pytorch_hf.py step     --model DIR [--batch 1] [--seq 256] [--steps 5] [--lora-rank R]
  python3 scripts/pytorch_hf.py generate --model DIR [--prompt-tokens 128] [--new-tokens 64]

`step`: AdamW training steps of the whole model (f32, random tokens), like `memtune bench step`;
with --lora-rank R, of PEFT LoRA adapters instead (alpha --lora-alpha, every q/k/v/o/gate/up/down
projection, no dropout: memtune's `[finetune.lora]` defaults), like `bench step --method lora`.
`generate`: greedy prefill + decode with the KV cache (random prompt), like `memtune bench
generate`. Prints one JSON line with the same keys as memtune. Needs torch and transformers.
"""
import argparse, json, statistics, time

import torch
from transformers import AutoConfig, AutoModelForCausalLM

p = argparse.ArgumentParser()
p.add_argument("mode", choices=["step", "generate"])
p.add_argument("--model", required=True)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--batch", type=int, default=1)
p.add_argument("--seq", type=int, default=256)
p.add_argument("--steps", type=int, default=5)
p.add_argument("--warmup", type=int, default=1)
p.add_argument("--prompt-tokens", type=int, default=128)
p.add_argument("--new-tokens", type=int, default=64)
p.add_argument("--runs", type=int, default=3)
p.add_argument("--lora-rank", type=int, default=0)
p.add_argument("--lora-alpha", type=float, default=32.0)
a = p.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(0)

cfg = AutoConfig.from_pretrained(a.model)
if a.mode == "step":
    # Random weights of the same architecture: the step's cost does not depend on their values.
    model = AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.float32, attn_implementation="eager")
    if a.lora_rank > 0:
        from peft import LoraConfig, get_peft_model
        targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        model = get_peft_model(model, LoraConfig(r=a.lora_rank, lora_alpha=a.lora_alpha, lora_dropout=0.0, target_modules=targets))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    x = torch.randint(0, cfg.vocab_size, (a.batch, a.seq))

    def step():
        opt.zero_grad(set_to_none=True)
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()

    for _ in range(a.warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step()
    dt = (time.perf_counter() - t0) / a.steps
    print(json.dumps({"impl": "pytorch-eager", "torch": torch.__version__, "threads": a.threads, "mode": "lora-step" if a.lora_rank else "step",
                      "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
                      "params": sum(p.numel() for p in model.parameters()), "batch_size": a.batch, "seq_len": a.seq,
                      "step_ms": dt * 1e3, "tokens_per_s": a.batch * a.seq / dt}))
else:
    model = AutoModelForCausalLM.from_pretrained(a.model, torch_dtype=torch.float32, attn_implementation="eager")
    model.eval()
    x = torch.randint(0, cfg.vocab_size, (a.batch, a.prompt_tokens))

    @torch.no_grad()
    def one_run():
        t0 = time.perf_counter()
        out = model(input_ids=x, use_cache=True, logits_to_keep=1)  # as generate() and memtune: the last position's logits
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        past = out.past_key_values
        t1 = time.perf_counter()
        for _ in range(a.new_tokens - 1):
            out = model(input_ids=nxt, past_key_values=past, use_cache=True)
            past = out.past_key_values
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        return t1 - t0, (time.perf_counter() - t1) / (a.new_tokens - 1)

    one_run()
    runs = [one_run() for _ in range(a.runs)]
    pre = statistics.median(r[0] for r in runs)
    dec = statistics.median(r[1] for r in runs)
    print(json.dumps({"impl": "pytorch-eager", "torch": torch.__version__, "threads": a.threads, "mode": "generate",
                      "batch": a.batch, "prompt_tokens": a.prompt_tokens, "new_tokens": a.new_tokens,
                      "prefill_ms": pre * 1e3, "prefill_tokens_per_s": a.batch * a.prompt_tokens / pre,
                      "decode_ms_per_token": dec * 1e3, "decode_tokens_per_s": a.batch / dec}))
