"""Training-only text augmentation: WordNet synonyms, word dropout, word swap, sentence shuffle."""

from __future__ import annotations

import functools
import io
import re
import warnings
from pathlib import Path
from random import Random

import nltk
from nltk.corpus.reader.wordnet import WordNetCorpusReader
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

from transferlab.config import AugmentConfig
from transferlab.errors import UserError

#: Where Debian's `wordnet-base` package puts the WordNet 3.0 database.
WORDNET_DIR = Path("/usr/share/wordnet")

# The 45 lexicographer file names of WordNet 3.0, in file-number order (man 5 lexnames). nltk's reader
# needs them as a `lexnames` file, which Debian's wordnet-base does not ship (see its README.Debian);
# symlinking the Debian files into a temp dir would not help, as nltk refuses links leaving a corpus root.
_LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body "
    "noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location "
    "noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process "
    "noun.quantity noun.relation noun.shape noun.state noun.substance noun.time verb.body verb.change "
    "verb.cognition verb.communication verb.competition verb.consumption verb.contact verb.creation "
    "verb.emotion verb.motion verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl"
).split()
_LEX_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}
_LEXNAMES_FILE = "".join(
    f"{i:02d}\t{name}\t{_LEX_CATEGORY[name.split('.')[0]]}\n" for i, name in enumerate(_LEXNAMES)
)
_REQUIRED = [f"{kind}.{pos}" for kind in ("index", "data") for pos in ("noun", "verb", "adj", "adv")]

# Whole alphabetic words only: "abc123" or "3rd" are never candidates for a synonym.
_WORD = re.compile(r"\b[A-Za-z]+\b")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


class _WordNetReader(WordNetCorpusReader):
    """nltk's WordNet reader, made to work on Debian's layout with no nltk_data download."""

    def open(self, file: str):
        if file == "lexnames" and not (Path(self.root) / file).is_file():
            return io.StringIO(_LEXNAMES_FILE)
        return super().open(file)

    def map_wn(self, version: str = "wordnet") -> None:
        # nltk maps this database's synsets onto its downloadable "wordnet" corpus (absent here, and
        # Debian ships no index.sense). The map only serves multilingual (OMW) lookups, which we never make.
        return None


@functools.cache
def _wordnet(root: Path) -> WordNetCorpusReader:
    """Open the WordNet database under `root` with nltk's reader (a second or two, hence cached)."""
    missing = [name for name in _REQUIRED if not (root / name).is_file()]
    if missing:
        raise UserError(
            f"Synonym augmentation needs the WordNet database in {root}, but these files are missing "
            f"there: {', '.join(missing)}.",
            "Install it with `apt-get install wordnet-base`, or set the synonym rate to 0.",
        )
    # nltk (3.10 here) refuses to read corpora outside its data path; registering the directory is its
    # documented way to authorise one.
    if str(root) not in nltk.data.path:
        nltk.data.path.append(str(root))
    with warnings.catch_warnings():
        # Without an Open Multilingual WordNet reader nltk warns; English synonyms do not need it.
        warnings.simplefilter("ignore", UserWarning)
        return _WordNetReader(str(root), None)


_POS = ("n", "v", "a", "r")  # noun, verb, adjective, adverb (WordNet's adjective satellites count as adjectives)
DOMINANT_READING = 0.9  # share of a word's tagged uses its usual reading must have for the word to be replaced


def _readings(wordnet: WordNetCorpusReader, word: str) -> list[tuple[int, str, str]]:
    """(uses, part of speech, lemma) of every reading of a word form ("men": the noun men, the noun man), uses
    counted in WordNet's sense-tagged corpus."""
    found = []
    for pos in _POS:
        for lemma in wordnet._morphy(word, pos):  # every base form, not only the first that morphy() returns
            uses = sum(own.count() for sense in wordnet.synsets(lemma, pos) for own in sense.lemmas()
                       if own.name().lower() == lemma)
            found.append((uses, pos, lemma))
    return found


def _inflect(replacement: str, word: str, lemma: str) -> str | None:
    """The replacement in the word's form: as is for a base form, plural for a regular plural noun (movies ->
    films); None for other inflections (loved, acting), which a lemma would break."""
    if word == lemma:
        return replacement
    if word in (lemma + "s", lemma + "es"):
        return replacement + ("es" if replacement.endswith(("s", "x", "ch", "sh")) else "s")
    return None


def synonyms(word: str) -> tuple[str, ...]:
    """Synonyms that keep the word's meaning, without a part-of-speech tagger: only for a word with one clearly usual
    reading (part of speech and lemma, at least DOMINANT_READING of its uses in WordNet's sense-tagged corpus), only
    from that reading's most common sense (WordNet's first), only single words that are themselves in use (tagged at
    least once), inflected like the word; in WordNet order, without the word itself. "story" gives narrative, tale
    (never tarradiddle); "loved" gives nothing (never "be intimate"); "spare" (verb or adjective) nothing."""
    return _synonyms(word.lower(), WORDNET_DIR)


@functools.cache
def _synonyms(lowered: str, root: Path) -> tuple[str, ...]:
    wordnet = _wordnet(root)
    readings = _readings(wordnet, lowered)
    total = sum(uses for uses, _, _ in readings)
    if not total:
        return ()
    uses, pos, lemma = max(readings)
    if uses < DOMINANT_READING * total:  # "spare" (verb 17, adjective 4): without a tagger, leave it alone
        return ()
    sense = wordnet.synsets(lemma, pos)[0]
    found = []
    for candidate in sense.lemmas():
        name = candidate.name()
        if candidate.count() > 0 and name.isalpha() and name.lower() != lemma:
            inflected = _inflect(name.lower() if name.islower() else name, lowered, lemma)
            if inflected is not None and inflected != lowered:
                found.append(inflected)
    return tuple(dict.fromkeys(found))  # dedupe in a stable order: the rng's choice must not depend on hashing


def _count(rate: float, n: int) -> int:
    """At least one operation whenever the rate is positive, so short texts are augmented too."""
    return max(1, round(rate * n)) if rate > 0 else 0


def _in_compound(text: str, start: int, end: int) -> bool:
    """A word joined to its neighbour by a hyphen or an apostrophe (self-expression, Scott's): a part, not a word
    whose synonym would keep the whole's meaning."""
    return (start > 0 and text[start - 1] in "-'") or (end < len(text) and text[end] in "-'")


def replace_synonyms(text: str, rate: float, rng: Random) -> str:
    """Replace up to rate × words non-stopwords with a synonym that keeps their meaning (`synonyms`); spacing and
    punctuation are kept."""
    limit = _count(rate, len(text.split()))
    candidates = [m for m in _WORD.finditer(text) if m.group().lower() not in ENGLISH_STOP_WORDS
                  and not _in_compound(text, m.start(), m.end())]
    rng.shuffle(candidates)
    chosen = []
    for match in candidates:
        if len(chosen) == limit:
            break
        if options := synonyms(match.group()):
            replacement = rng.choice(options)
            if match.group()[0].isupper():
                replacement = replacement[0].upper() + replacement[1:]
            chosen.append((match.start(), match.end(), replacement))
    # Splice from the right so earlier offsets stay valid.
    for start, end, replacement in sorted(chosen, reverse=True):
        text = text[:start] + replacement + text[end:]
    return text


def drop_words(text: str, rate: float, rng: Random) -> str:
    """Delete each word with probability `rate`, keeping one random word if all would go."""
    words = text.split()
    kept = [word for word in words if rng.random() >= rate]
    if not kept and words:
        kept = [rng.choice(words)]
    return " ".join(kept)


def swap_words(text: str, rate: float, rng: Random) -> str:
    """Swap rate × n random pairs of words."""
    words = text.split()
    if len(words) < 2:
        return text
    for _ in range(_count(rate, len(words))):
        i, j = rng.sample(range(len(words)), 2)
        words[i], words[j] = words[j], words[i]
    return " ".join(words)


def shuffle_sentences(text: str, rng: Random) -> str:
    """Shuffle the sentences (split after . ! ?) when there are at least two."""
    sentences = _SENTENCE_END.split(text.strip())
    if len(sentences) < 2:
        return text
    rng.shuffle(sentences)
    return " ".join(sentences)


def augment_text(text: str, config: AugmentConfig, rng: Random) -> str:
    """One augmented variant of `text`; the text itself when every rate is 0."""
    # Sentences first, while their end punctuation is still where it belongs.
    if config.shuffle and rng.random() < config.shuffle:
        text = shuffle_sentences(text, rng)
    if config.synonym:
        text = replace_synonyms(text, config.synonym, rng)
    if config.swap:
        text = swap_words(text, config.swap, rng)
    if config.dropout:
        text = drop_words(text, config.dropout, rng)
    return text


def augment_texts(texts: list[str], labels: list, config: AugmentConfig, seed: int) -> tuple[list[str], list]:
    """The originals followed by `copies` augmented variants of each, deterministic for a given seed."""
    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
    out_texts, out_labels = list(texts), list(labels)
    if not config.enabled:
        return out_texts, out_labels
    rng = Random(seed)
    for text, label in zip(texts, labels, strict=True):
        for _ in range(config.copies):
            out_texts.append(augment_text(text, config, rng))
            out_labels.append(label)
    return out_texts, out_labels
