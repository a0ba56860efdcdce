#!/usr/bin/env bash
# Real QA data for memtune, from the PyPI sdist of BIG-bench (bigbench 1.0.0, which ships both
# files; nothing else of it is kept):
#   data/squad/dev-v1.1.json   SQuAD v1.1 dev (48 articles, 2,067 passages, 10,565 questions;
#                              CC BY-SA 4.0), from bigbench/benchmark_tasks/squad_shifts/
#   data/nq-closed-book.jsonl  Natural Questions questions with their original answers, one
#                              {"question", "answers"} per line (a closed-book retention probe),
#                              from bigbench/benchmark_tasks/contextual_parametric_knowledge_conflicts/
#                              task.json. There each example's context was edited to support a
#                              substitute answer (target_scores 1); the original answer is the
#                              one scored 0. Questions asked twice are merged.
#   data/squad/contexts.jsonl  the SQuAD passages as a text corpus, one {"text"} per line
#   data/text/nyt-train.jsonl, data/text/nyt-heldout.jsonl
#                              New York Times passages of SQuAD-shifts (Miller et al. 2020), one
#                              {"text"} per line, split 90/10 by article: real English text for
#                              continued pretraining (the memory retrofit) and a held-out slice
#   data/text/new-wiki.jsonl   SQuAD-shifts' new Wikipedia passages: held-out real text (perplexity)
#   data/qa-wikidata.jsonl     BIG-bench's qa_wikidata (20,442 cloze prompts from Wikidata triples,
#                              "The country of 1755 Lisbon earthquake is" -> "Portugal"), one
#                              {"question": prompt, "answers"} per line: the known-facts probe of a
#                              small model, asked as completions (forgetting.probes.known_facts_prompt)
#   data/bigbench/social_iqa.json, data/bigbench/discourse_marker_prediction.json
#                              BIG-bench multiple-choice tasks (1,954 three-way social questions;
#                              857 ten-way choices of a sentence's discourse marker), retention
#                              probes scored by log-likelihood
#
#   scripts/get-squad.sh [OUT_DIR]     (default: data; git-ignored)
#   BIGBENCH_SDIST=path/to/bigbench-1.0.0.tar.gz scripts/get-squad.sh   (no download)
# Needs python3 with pip, or curl. Downloads ~360 MB once (the whole sdist); keeps ~22 MB.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-data}
version=1.0.0
tasks=bigbench-$version/bigbench/benchmark_tasks
squad_member=$tasks/squad_shifts/squaddev_v1.1.json
nq_member=$tasks/contextual_parametric_knowledge_conflicts/task.json
nyt_member=$tasks/squad_shifts/nyt_v1.0.json
wiki_member=$tasks/squad_shifts/new_wiki_v1.0.json
siqa_member=$tasks/social_iqa/task.json
dmp_member=$tasks/discourse_marker_prediction/task.json
wikidata_member=$tasks/qa_wikidata/task.json

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
sdist=$tmp/bigbench-$version.tar.gz
if [ -n "${BIGBENCH_SDIST:-}" ]; then  # an sdist already downloaded
  cp "$BIGBENCH_SDIST" "$sdist"
elif ! python3 -m pip download "bigbench==$version" --no-deps --no-binary :all: -d "$tmp" >"$tmp/pip.log" 2>&1 \
    || [ ! -f "$sdist" ]; then
  echo "pip download failed (see below); fetching the sdist URL from PyPI's JSON API" >&2
  tail -5 "$tmp/pip.log" >&2
  url=$(curl -fsSL "https://pypi.org/pypi/bigbench/$version/json" | python3 -c '
import json, sys
urls = [u["url"] for u in json.load(sys.stdin)["urls"] if u["packagetype"] == "sdist"]
print(urls[0])')
  curl -fL --retry 3 -o "$sdist" "$url"
fi

tar -xzf "$sdist" -C "$tmp" "$squad_member" "$nq_member" "$nyt_member" "$wiki_member" "$siqa_member" "$dmp_member" "$wikidata_member"
mkdir -p "$out/squad" "$out/text" "$out/bigbench"
cp "$tmp/$siqa_member" "$out/bigbench/social_iqa.json.tmp"
mv "$out/bigbench/social_iqa.json.tmp" "$out/bigbench/social_iqa.json"
cp "$tmp/$dmp_member" "$out/bigbench/discourse_marker_prediction.json.tmp"
mv "$out/bigbench/discourse_marker_prediction.json.tmp" "$out/bigbench/discourse_marker_prediction.json"
python3 - "$tmp/$wikidata_member" "$out/qa-wikidata.jsonl" <<'PY'
import json, os, sys
src, dst = sys.argv[1:]
n = 0
with open(dst + ".tmp", "w") as f:
    for ex in json.load(open(src))["examples"]:
        answers = ex["target"] if isinstance(ex["target"], list) else [ex["target"]]
        if ex["input"].strip() and answers:
            f.write(json.dumps({"question": ex["input"].strip(), "answers": answers}, ensure_ascii=False) + "\n")
            n += 1
os.replace(dst + ".tmp", dst)
print(f"{dst}: {n} cloze prompts")
PY
python3 - "$tmp/$nyt_member" "$tmp/$wiki_member" "$out/text" <<'PY'
import json, os, sys
nyt_path, wiki_path, out_dir = sys.argv[1:]
def write(path, articles):
    with open(path + ".tmp", "w") as f:
        for a in articles:
            for p in a["paragraphs"]:
                f.write(json.dumps({"text": p["context"]}, ensure_ascii=False) + "\n")
    os.replace(path + ".tmp", path)
    print(f"{path}: {sum(len(a['paragraphs']) for a in articles)} passages")
nyt = json.load(open(nyt_path))["data"]
# Every tenth article is held out (articles, not passages: no passage of a held-out article is trained on).
write(os.path.join(out_dir, "nyt-train.jsonl"), [a for i, a in enumerate(nyt) if i % 10 != 9])
write(os.path.join(out_dir, "nyt-heldout.jsonl"), [a for i, a in enumerate(nyt) if i % 10 == 9])
write(os.path.join(out_dir, "new-wiki.jsonl"), json.load(open(wiki_path))["data"])
PY
cp "$tmp/$squad_member" "$out/squad/dev-v1.1.json.tmp"
mv "$out/squad/dev-v1.1.json.tmp" "$out/squad/dev-v1.1.json"

python3 - "$tmp/$nq_member" "$out/nq-closed-book.jsonl" "$out/squad/dev-v1.1.json" <<'PY'
import json, os, sys
task_path, out_path, squad_path = sys.argv[1:]
QUESTION, CONTEXT = "\nQuestion: ", "\nContext: "
answers = {}  # question -> original answers, in first-seen order
for i, ex in enumerate(json.load(open(task_path))["examples"]):
    head = ex["input"].split(CONTEXT)[0]
    if not head.startswith(QUESTION):
        sys.exit(f"{task_path}: examples[{i}].input does not start with {QUESTION!r}")
    question = head[len(QUESTION):].strip()
    original = [a for a, score in ex["target_scores"].items() if score == 0]
    if not original:
        sys.exit(f"{task_path}: examples[{i}].target_scores has no original (score 0) answer")
    seen = answers.setdefault(question, [])
    seen.extend(a for a in original if a not in seen)
tmp = out_path + ".tmp"
with open(tmp, "w") as f:
    for q, a in answers.items():
        f.write(json.dumps({"question": q, "answers": a}, ensure_ascii=False) + "\n")
os.replace(tmp, out_path)
squad = json.load(open(squad_path))["data"]
# The passages as a plain corpus (one {"text"} per line) for continued pretraining
# (configs/smollm2-retrofit.toml).
contexts_path = os.path.join(os.path.dirname(squad_path), "contexts.jsonl")
with open(contexts_path + ".tmp", "w") as f:
    for a in squad:
        for p in a["paragraphs"]:
            f.write(json.dumps({"text": a["title"].replace("_", " ") + "\n" + p["context"]}, ensure_ascii=False) + "\n")
os.replace(contexts_path + ".tmp", contexts_path)
print(f"{contexts_path}: {sum(len(a['paragraphs']) for a in squad)} passages as text")
passages = sum(len(a["paragraphs"]) for a in squad)
questions = sum(len(p["qas"]) for a in squad for p in a["paragraphs"])
print(f"{squad_path}: {len(squad)} articles, {passages} passages, {questions} questions")
print(f"{out_path}: {len(answers)} questions")
PY
