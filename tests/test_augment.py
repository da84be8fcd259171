"""Training-time text augmentation: determinism, identity at rate 0, each operation's contract."""

import re
from collections import Counter
from pathlib import Path
from random import Random

import pandas as pd
import pydantic
import pytest

from transferlab.data import augment
from transferlab.data.augment import AugmentConfig, augment_text, augment_texts
from transferlab.errors import UserError

TEXTS = [
    "This movie was great, truly a wonderful film! I loved the actors. The plot was weak though.",
    "A dull and boring story. The music saved it? Not really.",
    "Terrible.",
]
LABELS = [1, 0, 0]
# Every operation at once, so determinism covers the WordNet lookups too.
ALL = AugmentConfig(synonym=0.3, dropout=0.2, swap=0.2, shuffle=0.5, copies=2)


def test_same_seed_same_output_and_different_seeds_differ():
    first = augment_texts(TEXTS, LABELS, ALL, seed=0)
    assert first == augment_texts(TEXTS, LABELS, ALL, seed=0)
    assert first[0] != augment_texts(TEXTS, LABELS, ALL, seed=1)[0]


def test_zero_rates_are_identity():
    rng = Random(0)
    zero = AugmentConfig(copies=3)
    assert all(augment_text(text, zero, rng) == text for text in TEXTS)
    assert augment_texts(TEXTS, LABELS, zero, seed=0) == (TEXTS, LABELS)


def test_copies_keep_originals_first_and_repeat_labels():
    config = AugmentConfig(dropout=0.3, copies=3)
    texts, labels = augment_texts(TEXTS, LABELS, config, seed=0)
    assert len(texts) == len(labels) == len(TEXTS) * 4
    assert texts[: len(TEXTS)] == TEXTS
    assert Counter(labels) == Counter({label: 4 * LABELS.count(label) for label in LABELS})
    assert augment_texts(TEXTS, LABELS, config.model_copy(update={"copies": 0}), seed=0) == (TEXTS, LABELS)


def test_dropout_never_empties_a_text():
    rng = Random(0)
    config = AugmentConfig(dropout=1.0)
    for text in [*TEXTS, "one", "two words"]:
        for _ in range(20):
            out = augment_text(text, config, rng)
            assert out and set(out.split()) <= set(text.split())


def test_swap_permutes_the_words():
    text = "one two three four five six seven eight"
    out = augment_text(text, AugmentConfig(swap=0.5), Random(3))
    assert out != text and sorted(out.split()) == sorted(text.split())


def test_shuffle_keeps_the_same_sentences():
    text = "First one. Second one! Third one? Fourth one."
    outs = {augment_text(text, AugmentConfig(shuffle=1.0), Random(seed)) for seed in range(10)}
    assert len(outs) > 1  # it does reorder
    for out in outs:
        assert sorted(re.split(r"(?<=[.!?]) ", out)) == sorted(re.split(r"(?<=[.!?]) ", text))
    assert augment_text("Only one sentence here.", AugmentConfig(shuffle=1.0), Random(0)) == (
        "Only one sentence here."
    )


def test_synonym_replacement_uses_a_wordnet_lemma():
    lemmas = {
        lemma.replace("_", " ")
        for synset in augment._wordnet(augment.WORDNET_DIR).synsets("movie")
        for lemma in synset.lemma_names()
    } - {"movie"}
    assert "film" in lemmas
    # "the" is a stopword and "42" is not alphabetic: only "Movie" may change, with its capital kept.
    out = augment_text("the Movie 42", AugmentConfig(synonym=1.0), Random(0))
    prefix, replacement, suffix = out[:4], out[4:-3], out[-3:]
    assert (prefix, suffix) == ("the ", " 42")
    assert replacement[0].isupper() and replacement[0].lower() + replacement[1:] in lemmas


def test_missing_wordnet_is_a_user_error_naming_the_package(monkeypatch, tmp_path: Path):
    monkeypatch.setattr(augment, "WORDNET_DIR", tmp_path)
    # Without synonyms WordNet is never needed, so its absence is no error.
    assert augment_text("a fine movie", AugmentConfig(dropout=0.5), Random(0))
    with pytest.raises(UserError, match="apt-get install wordnet-base"):
        augment_text("a fine movie", AugmentConfig(synonym=0.5), Random(0))


@pytest.mark.parametrize("bad", [{"synonym": 1.5}, {"dropout": -0.1}, {"copies": -1}, {"swop": 0.1}])
def test_config_rejects_bad_values(bad):
    with pytest.raises(pydantic.ValidationError):
        AugmentConfig(**bad)


def test_synonyms_keep_the_meaning():
    """Only the word's usual part of speech and most common sense, only words in use, inflected like the word."""
    assert set(augment.synonyms("story")) == {"narrative", "tale"}  # never "tarradiddle" (a fib)
    assert augment.synonyms("loved") == ()  # an inflected verb: never "be intimate"
    assert set(augment.synonyms("movies")) == {"films", "pictures"}  # plural kept
    assert augment.synonyms("spare") == ()  # verb or adjective: no tagger to tell, so left alone
    assert augment.synonyms("men") == ()  # an irregular plural of "man"


def test_training_log_shows_augmented_examples(caplog):
    from transferlab.config import DEFAULT_AUGMENT, build_config
    from transferlab.pipeline import augment_train
    from transferlab.tasks.classification import ClassificationTask

    cfg = build_config({"augment": DEFAULT_AUGMENT.model_dump()})
    frame = pd.DataFrame({"text": TEXTS, "label": ["pos", "neg", "neg"]})
    with caplog.at_level("INFO", logger="transferlab"):
        out = augment_train(cfg, ClassificationTask, frame)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "augmentation: 3 training examples -> 6, e.g.:"
    assert lines[1:] == [f"  {a!r} -> {b!r}" for a, b in zip(TEXTS, out["text"][3:], strict=True)]


def test_parts_of_compounds_are_never_replaced():
    text = "A self-expression of Scott's story."
    outs = {augment_text(text, AugmentConfig(synonym=1.0), Random(seed)) for seed in range(5)}
    assert all(out.startswith("A self-expression of Scott's ") for out in outs)
    assert {out.removeprefix("A self-expression of Scott's ") for out in outs} <= {"narrative.", "tale."}
