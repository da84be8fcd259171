"""Hugging Face `datasets` directories (written by Dataset.save_to_disk or DatasetDict.save_to_disk) as data
sources: `DIR` names a Dataset or a DatasetDict, `DIR:SPLIT` one split of a DatasetDict. Class-label ids are
read as their names, so labels and tags mean the same as in a CSV file."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from transferlab.errors import UserError

logger = logging.getLogger("transferlab")

# What save_to_disk writes at the top of a Dataset directory / a DatasetDict directory.
_DATASET_MARKERS = ("state.json", "dataset_dict.json")
TRAIN_SPLIT = "train"
EVAL_SPLITS = ("validation", "test")  # in order of preference: the test split is the last resort


@dataclass(frozen=True)
class DatasetSource:
    """A directory given as data, and the split asked for after a colon (None: no split named)."""

    directory: Path
    split: str | None = None

    def __str__(self) -> str:
        return f"{self.directory}:{self.split}" if self.split else str(self.directory)


def dataset_source(source: str | Path) -> DatasetSource | None:
    """The directory (and split) that `source` names, or None when it names no directory.

    A path that exists as written is never cut at a colon, so directory names may contain one.
    """
    path = Path(source)
    if path.is_dir():
        return DatasetSource(path)
    directory, colon, split = str(source).rpartition(":")
    if colon and split and directory and not path.exists() and Path(directory).is_dir():
        return DatasetSource(Path(directory), split)
    return None


def load_dataset_frame(source: DatasetSource) -> pd.DataFrame:
    """The rows of a saved Dataset (or of one split of a saved DatasetDict) with class-label ids as names."""
    loaded = _load(source.directory)
    from datasets import DatasetDict

    if isinstance(loaded, DatasetDict):
        dataset = loaded[_split_of(loaded, source)]
    elif source.split is not None:
        raise UserError(f"{source.directory} holds a single Dataset, which has no splits, so ':{source.split}' "
                        "names nothing.", f"Give the directory alone: {source.directory}.")
    else:
        dataset = loaded
    return _with_label_names(dataset)


def default_splits(train: str, evaluation: str | None) -> tuple[str, str | None]:
    """The train and eval sources with a DatasetDict's own splits filled in: a DatasetDict `DIR` with a train
    split trains on DIR:train and, unless `evaluation` is given, evaluates on DIR:validation (else DIR:test)."""
    source = dataset_source(train)
    if source is None or source.split is not None or not (source.directory / "dataset_dict.json").is_file():
        return train, evaluation
    splits = list(_load(source.directory))
    if TRAIN_SPLIT not in splits:
        return train, evaluation  # loading it asks the user to name a split
    if evaluation is None:
        evaluation = next((f"{train}:{split}" for split in EVAL_SPLITS if split in splits), None)
    logger.info("%s is a DatasetDict (splits %s): training on split %r, evaluating on %s.", train,
                ", ".join(splits), TRAIN_SPLIT, evaluation or "a held-out part of it")
    return f"{train}:{TRAIN_SPLIT}", evaluation


def _load(directory: Path):
    """datasets.load_from_disk, with a UserError for a directory it cannot read."""
    if not any((directory / marker).is_file() for marker in _DATASET_MARKERS):
        raise UserError(f"Data path {directory} is a directory, but not one written by Hugging Face datasets' "
                        f"save_to_disk (it has no {' or '.join(_DATASET_MARKERS)}).",
                        "Point to one data file inside it (for example train.csv), or to a directory saved with "
                        "Dataset.save_to_disk or DatasetDict.save_to_disk.")
    from datasets import load_from_disk  # a heavy import, paid only by datasets directories

    try:
        return load_from_disk(str(directory))
    except Exception as error:  # missing shards, broken JSON or Arrow files: all mean "cannot read it"
        reason = " ".join(str(error).split())
        raise UserError(f"Could not load the datasets directory {directory}: {reason}.",
                        "Save it again with save_to_disk (copy the whole directory, with its .arrow files and "
                        "its .json files).") from error


def _split_of(dataset_dict, source: DatasetSource) -> str:
    """The split of a DatasetDict to read: the one named, else its only split; else a UserError listing them."""
    splits = list(dataset_dict)
    if source.split is None:
        if len(splits) == 1:
            return splits[0]
        raise UserError(f"{source.directory} is a DatasetDict with the splits {', '.join(splits)}, and it is not "
                        "clear which one to read here.",
                        f"Name the split after a colon, e.g. {source.directory}:{splits[0]}.")
    if source.split not in splits:
        raise UserError(f"{source.directory} has no split {source.split!r}; its splits are: {', '.join(splits)}.",
                        f"Write {source.directory}:SPLIT with one of them.")
    return source.split


def _with_label_names(dataset) -> pd.DataFrame:
    """The dataset as a frame where ClassLabel columns (and lists of them, e.g. NER tags) hold the class names;
    the id -1 (datasets' "no label", e.g. in test splits) becomes a missing label."""
    from datasets import ClassLabel

    frame = dataset.to_pandas()
    for column, feature in dataset.features.items():
        if isinstance(feature, ClassLabel):
            frame[column] = frame[column].map(_namer(feature.names), na_action="ignore")
        elif isinstance(getattr(feature, "feature", None), ClassLabel):  # List / Sequence of class labels
            name = _namer(feature.feature.names)
            frame[column] = frame[column].map(lambda ids, name=name: [name(i) for i in ids], na_action="ignore")
    return frame


def _namer(names: list[str]):
    return lambda label_id: names[int(label_id)] if label_id >= 0 else None
