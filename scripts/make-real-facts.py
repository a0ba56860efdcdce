#!/usr/bin/env python3
"""Build a facts file of real facts from SQuAD v1.1 dev (written by scripts/get-squad.sh).

    python3 scripts/make-real-facts.py [--squad data/squad/dev-v1.1.json] [--out data/real-facts.jsonl]
                                       [--facts 400] [--seed 0] [--question-forms]

One fact per SQuAD question: the passage sentence that holds the answer, restated 8 ways (the
sentence alone, with its article's title, with the sentence before or after it, framed as a note,
and as fill-in-the-blank Q/A pairs with the answer blanked out of the sentence), and the SQuAD
question itself as the test question. The question's wording is an annotator's, written after
reading the passage: it appears in no training statement (checked below, and again by memtune).
Facts are spread over passages (at most one per passage), their answers are short (1-4 words) and
their sentences fit a 128-token row. Whether the base model already knows a fact is not decided
here: `memtune bench forgetting` asks the model every fact's question closed-book before training
and drops the ones it answers, and reports how many it dropped.

--question-forms keeps the first four statements and replaces the other four by question forms of
them (`Q: <statement with the answer replaced by "what">? A: <answer>`): training text worded as
questions, still not the test question's wording (docs/design.md, "Sparse memory finetuning on a
retrofit").

Deterministic: the same input and seed give the same file. The output is the JSONL format
`memtune finetune` and `memtune bench forgetting --facts` read (README, "Facts files").
"""
import argparse
import json
import os
import random
import re

SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")


def sentences(text):
    """(start, end) character spans of the passage's sentences."""
    spans, start = [], 0
    for m in SENTENCE_END.finditer(text):
        spans.append((start, m.start()))
        start = m.end()
    spans.append((start, len(text)))
    return spans


def normalise(s):
    return " ".join(re.sub(r"[^\w\s]", " ", s.lower()).split())


def question_form(statement, answer):
    return "Q: " + statement.replace(answer, "what", 1).rstrip(" .") + "? A: " + answer


def fact_for(title, context, qa, question_forms=False):
    ans = qa["answers"][0]
    answer, a0 = ans["text"].strip(), ans["answer_start"]
    if not answer or not 1 <= len(answer.split()) <= 4:
        return None
    spans = sentences(context)
    idx = next((i for i, (s, e) in enumerate(spans) if s <= a0 < e), None)
    if idx is None:
        return None
    s, e = spans[idx]
    sent = context[s:e].strip()
    if a0 + len(answer) > e or not 6 <= len(sent.split()) <= 45 or answer not in sent:
        return None
    prev = context[spans[idx - 1][0]:spans[idx - 1][1]].strip() if idx > 0 else None
    nxt = context[spans[idx + 1][0]:spans[idx + 1][1]].strip() if idx + 1 < len(spans) else None
    topic = title.replace("_", " ")
    blank = sent.replace(answer, "___", 1)
    statements = [
        sent,
        f"{topic}: {sent}",
        f"{prev} {sent}" if prev and len((prev + sent).split()) <= 70 else f"From the article on {topic}: {sent}",
        f"{sent} {nxt}" if nxt and len((sent + nxt).split()) <= 70 else f"Note about {topic}. {sent}",
        f"Fact: {sent}",
        f"Here is something true about {topic}. {sent}",
        f"Fill in the blank: {blank} Answer: {answer}",
        f"Q: What goes in the blank? {blank} A: {answer}",
    ]
    if question_forms:
        statements = statements[:4] + [question_form(st, answer) for st in statements[:4]]
    question = qa["question"].strip()
    # Held-out wording: the question must not appear inside any training statement.
    if any(normalise(question) in normalise(st) for st in statements):
        return None
    answers = []
    for a in qa["answers"]:
        t = a["text"].strip()
        if t and t not in answers:
            answers.append(t)
    return {"subject": topic, "statements": statements, "questions": [{"question": question, "answers": answers}]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--squad", default="data/squad/dev-v1.1.json")
    ap.add_argument("--out", default="data/real-facts.jsonl")
    ap.add_argument("--facts", type=int, default=400, help="candidate facts to write (the benchmark keeps those the base model does not know)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--question-forms", action="store_true", help="replace four statements by question forms of the other four")
    args = ap.parse_args()
    if not os.path.exists(args.squad):
        raise SystemExit(f"{args.squad} not found: run scripts/get-squad.sh first")
    data = json.load(open(args.squad))["data"]
    passages = [(a["title"], p) for a in data for p in a["paragraphs"]]
    rng = random.Random(args.seed)
    rng.shuffle(passages)
    facts, seen_answers = [], set()
    for title, p in passages:
        qas = list(p["qas"])
        rng.shuffle(qas)
        for qa in qas:
            f = fact_for(title, p["context"], qa, args.question_forms)
            if f and normalise(f["questions"][0]["answers"][0]) not in seen_answers:
                seen_answers.add(normalise(f["questions"][0]["answers"][0]))
                facts.append(f)
                break
        if len(facts) == args.facts:
            break
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out + ".tmp", "w") as out:
        for f in facts:
            out.write(json.dumps(f, ensure_ascii=False) + "\n")
    os.replace(args.out + ".tmp", args.out)
    print(f"{args.out}: {len(facts)} facts from {len(passages)} passages, 8 statements and 1 held-out question each")


if __name__ == "__main__":
    main()
