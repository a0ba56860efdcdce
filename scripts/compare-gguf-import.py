#!/usr/bin/env python3
"""Check a `memtune import` folder against Hugging Face transformers' own GGUF loader.

    python3 scripts/compare-gguf-import.py FILE.gguf IMPORTED_DIR [TEXT]

transformers dequantises the GGUF file and undoes llama.cpp's q/k permutation with its own code;
this compares every imported tensor with its (max |difference|), the tokenization of a few
texts, and prints the reference per-token log-probabilities of TEXT after "<|endoftext|>"
(tests/smollm2.rs holds those of its default TEXT).
Needs: python3 -m pip install torch transformers gguf accelerate
"""
import json
import sys

import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer

TEXTS = [
    "The capital of France is",
    "In 1987, 12345 people ate 3.14 pies!",
    "naïve café — ünïcödé ☃\n\n  spaces\ttab",
    "<|im_start|>user\nHi there<|im_end|>\n",
    "def f(x):\n    return x**2  # comment",
]
DEFAULT_TEXT = ("The capital of France is Paris. It is known for the Eiffel Tower, which was completed in 1889 "
                "for the World's Fair.")
BOS_CONTEXT_ID = 0  # "<|endoftext|>": memtune scores the first token after it


def main():
    gguf_path, folder = sys.argv[1], sys.argv[2]
    text = sys.argv[3] if len(sys.argv) > 3 else DEFAULT_TEXT
    d, f = gguf_path.rsplit("/", 1) if "/" in gguf_path else (".", gguf_path)
    ref = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    ref_tok = AutoTokenizer.from_pretrained(d, gguf_file=f)

    ours = load_file(f"{folder}/model.safetensors")
    sd = ref.state_dict()
    worst = max((sd[k].float() - v.float()).abs().max().item() for k, v in ours.items())
    missing = [k for k in sd if k not in ours and not (k == "lm_head.weight" and ref.config.tie_word_embeddings)]
    print(f"tensors: {len(ours)}, max |weight difference| {worst}, missing from the import: {missing}")

    tok = Tokenizer.from_file(f"{folder}/tokenizer.json")
    for t in TEXTS:
        a, b = ref_tok.encode(t, add_special_tokens=False), tok.encode(t, add_special_tokens=False).ids
        print("same     " if a == b else "DIFFERENT", repr(t), "" if a == b else f"{a} vs {b}")

    ids = [BOS_CONTEXT_ID] + ref_tok.encode(text, add_special_tokens=False)
    with torch.no_grad():
        lp = torch.log_softmax(ref(torch.tensor([ids])).logits[0], -1)
    print(json.dumps({"text": text, "ids": ids, "logprobs": [round(float(lp[i, ids[i + 1]]), 5) for i in range(len(ids) - 1)]}))


if __name__ == "__main__":
    main()
