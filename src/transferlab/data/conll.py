"""Token/tag data: CoNLL files (a token and its tag per line, a blank line between sentences) and JSONL / JSON /
Parquet records holding a token list and a tag list. Tags are checked to be BIO (IOB2)."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from transferlab.data.sources import load_table
from transferlab.errors import UserError

logger = logging.getLogger("transferlab")

CONLL_EXTENSIONS = (".conll", ".conll03", ".iob", ".iob2", ".bio", ".txt")
_BIO_TAG = re.compile(r"^(?:O|[BI]-\S+)$")
_OTHER_SCHEMES = {"S-": "BIOES", "E-": "BIOES", "L-": "BILOU", "U-": "BILOU"}
_DOCSTART = "-DOCSTART-"


def load_tagged(path: str | Path, tokens_column: str = "tokens", tags_column: str = "tags") -> pd.DataFrame:
    """Sentences as a frame with list columns `tokens` and `tags`, BIO-checked (IOB1 entity starts repaired)."""
    path = Path(path)
    if path.suffix.lower() in CONLL_EXTENSIONS:
        sentences = list(_read_conll(path))
    else:
        sentences = list(_read_records(path, tokens_column, tags_column))
    if not sentences:
        raise UserError(f"{path} holds no sentences.", "Write one token and its tag per line, with a blank line "
                        "between sentences (CoNLL), or one JSON object with token and tag lists per line.")
    repaired = sum(_check_bio(tags, where) for _, tags, where in sentences)
    if repaired:
        logger.warning("%s: %d entities started with I- (IOB1 style); read as B- (IOB2).", path, repaired)
    return pd.DataFrame({"tokens": [s[0] for s in sentences], "tags": [to_iob2(s[1]) for s in sentences]})


def bio_labels(tag_lists: Iterable[list[str]]) -> list[str]:
    """The label set of BIO data: O, then B- and I- of every entity type, types sorted."""
    types = sorted({tag[2:] for tags in tag_lists for tag in tags if tag != "O"})
    return ["O"] + [f"{prefix}-{kind}" for kind in types for prefix in ("B", "I")]


def to_iob2(tags: list[str]) -> list[str]:
    """Turn an I-X that does not continue an X entity into B-X (IOB1 -> IOB2); IOB2 stays as it is."""
    out = []
    for tag in tags:
        if tag.startswith("I-") and (not out or out[-1][2:] != tag[2:]):
            tag = "B-" + tag[2:]
        out.append(tag)
    return out


def _read_conll(path: Path) -> Iterable[tuple[list[str], list[str], str]]:
    """(tokens, tags, where) per sentence: the token is the first column of a line, the tag the last."""
    if not path.is_file():
        load_table(path)  # the same "does not exist" / "is a directory" errors as every other data file
    tokens: list[str] = []
    tags: list[str] = []
    start = 0
    sentence = 0
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as error:
        raise UserError(f"{path} is not UTF-8 text ({error}).", "Re-encode it as UTF-8 (e.g. with iconv).") from error
    for number, line in enumerate([*lines, ""], start=1):
        columns = line.split()
        if columns and columns[0] == _DOCSTART:
            continue
        if not columns:
            if tokens:
                sentence += 1
                yield tokens, tags, f"{path}, sentence {sentence} (line {start})"
            tokens, tags = [], []
            continue
        if len(columns) < 2:
            raise UserError(f"{path}, line {number}: the token {columns[0]!r} has no tag (one column), so the "
                            f"sentence's tokens and tags differ in length.",
                            "Write the token and its tag separated by a space or tab (e.g. 'Paris B-LOC'), "
                            "with a blank line between sentences.")
        if not tokens:
            start = number
        tokens.append(columns[0])
        tags.append(columns[-1])


def _read_records(path: Path, tokens_column: str, tags_column: str) -> Iterable[tuple[list[str], list[str], str]]:
    """(tokens, tags, where) per record of a JSONL / JSON / Parquet file with list columns."""
    table = load_table(path)
    for column, option in ((tokens_column, "ner.tokens_column"), (tags_column, "ner.tags_column")):
        if column not in table.columns:
            raise UserError(f"{path} has no column {column!r}; its columns are: "
                            f"{', '.join(map(str, table.columns))}.",
                            f"Name the right one with --set {option}=COLUMN, or use a CoNLL file "
                            f"({', '.join(CONLL_EXTENSIONS)}).")
    for number, (tokens, tags) in enumerate(zip(table[tokens_column], table[tags_column], strict=True), start=1):
        where = f"{path}, record {number}"
        tokens, tags = _as_list(tokens, where, tokens_column), _as_list(tags, where, tags_column)
        if len(tokens) != len(tags):
            raise UserError(f"{where}: {len(tokens)} tokens but {len(tags)} tags.",
                            "Give exactly one tag per token (O outside entities).")
        if tokens:
            yield tokens, tags, where


def _as_list(value, where: str, column: str) -> list[str]:
    if hasattr(value, "tolist"):
        value = value.tolist()  # Parquet list cells come back as arrays
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise UserError(f"{where}: column {column!r} holds {type(value).__name__} {str(value)[:60]!r}, "
                        "not a list of strings.", f'Write it as a JSON list, e.g. "{column}": ["Paris", "is"].')
    return value


def _check_bio(tags: list[str], where: str) -> int:
    """Refuse tags outside BIO (naming the sentence); return how many entities start with I- (IOB1)."""
    for tag in tags:
        if _BIO_TAG.match(tag):
            continue
        scheme = _OTHER_SCHEMES.get(tag[:2])
        if scheme:
            raise UserError(f"{where}: tag {tag!r} belongs to the {scheme} scheme; transferlab reads BIO (IOB2).",
                            "Convert the tags to BIO: S-X -> B-X, E-X and L-X -> I-X, U-X -> B-X.")
        raise UserError(f"{where}: tag {tag!r} is not BIO (IOB2): tags must be O, B-TYPE or I-TYPE.",
                        "Prefix every entity tag with B- (first token of an entity) or I- (following tokens), "
                        "and tag tokens outside entities O.")
    return sum(1 for a, b in zip(["O", *tags], tags, strict=False) if b.startswith("I-") and a[2:] != b[2:])
