"""Stratified splits: train/eval, k folds, and subsets, all with the class proportions of the whole."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold, train_test_split

from transferlab.errors import UserError


def stratified_split(frame: pd.DataFrame, eval_fraction: float = 0.2, seed: int = 0,
                     label_column: str = "label") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split into (train, eval) with the same class proportions; the same seed gives the same split."""
    if not 0 < eval_fraction < 1:
        raise UserError(f"The eval fraction must lie strictly between 0 and 1, not {eval_fraction}.",
                        "Use a value such as 0.2 (20% of the examples held out for evaluation).")
    label, count = rarest_class(frame, label_column)
    if count < 2:
        raise UserError(f"Class {label!r} has only {count} example, so it cannot be in both train and eval.",
                        "Add at least one more example of it, or remove it from the data.")
    return _stratified_take(frame, label_column, seed, test_size=eval_fraction,
                            purpose=f"split off an eval fraction of {eval_fraction}")


def stratified_kfold(frame: pd.DataFrame, k: int, seed: int = 0,
                     label_column: str = "label") -> list[tuple[pd.DataFrame, pd.DataFrame]]:
    """k (train, eval) pairs; every row is in exactly one eval fold, each fold keeps the class proportions."""
    label, count = rarest_class(frame, label_column)
    if k < 2 or k > count:
        fix = f"Choose k between 2 and {count}, or add" if count >= 2 else "Add"
        raise UserError(f"Cannot make {k} stratified folds: k must be at least 2 and at most the size of the "
                        f"rarest class, {label!r}, which has {count} examples.",
                        f"{fix} examples of {label!r}.")
    folds = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return [(_rows(frame, train), _rows(frame, evaluation))
            for train, evaluation in folds.split(frame, frame[label_column])]


def subsample(frame: pd.DataFrame, n: int, seed: int = 0, label_column: str = "label") -> pd.DataFrame:
    """A stratified subset of n rows (for quick runs and learning curves); n equal to the size keeps all."""
    classes = frame[label_column].nunique()
    if n > len(frame):
        raise UserError(f"Cannot take {n} examples from data that has only {len(frame)}.",
                        f"Ask for at most {len(frame)} examples.")
    if n < classes:
        raise UserError(f"Cannot take {n} examples that keep all {classes} classes.",
                        f"Ask for at least {classes} examples.")
    if n == len(frame):
        return frame.reset_index(drop=True)
    subset, _ = _stratified_take(frame, label_column, seed, train_size=n, purpose=f"draw {n} examples")
    return subset


def rarest_class(frame: pd.DataFrame, label_column: str = "label") -> tuple[str, int]:
    """The least frequent label of `frame` and its count (which bounds stratified splits and folds)."""
    counts = frame[label_column].value_counts()
    return counts.index[-1], int(counts.iloc[-1])


def _stratified_take(frame: pd.DataFrame, label_column: str, seed: int, purpose: str,
                     **sizes: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """sklearn's stratified train_test_split, with its size errors (too few rows per class) as UserErrors."""
    try:
        first, second = train_test_split(np.arange(len(frame)), stratify=frame[label_column],
                                         random_state=seed, **sizes)
    except ValueError as error:
        raise UserError(f"Cannot {purpose} from {len(frame)} examples of "
                        f"{frame[label_column].nunique()} classes while keeping every class: {error}",
                        "Use more data or a different size.") from error
    return _rows(frame, first), _rows(frame, second)


def _rows(frame: pd.DataFrame, positions: np.ndarray) -> pd.DataFrame:
    return frame.iloc[positions].reset_index(drop=True)


def random_split(frame: pd.DataFrame, eval_fraction: float, seed: int, source: str,
                 what: str = "example") -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, eval): a seeded random held-out fraction, for examples without classes to stratify on."""
    if len(frame) < 2:
        raise UserError(f"{source} has {len(frame)} {what}; an eval split needs at least 2.",
                        f"Add {what}s, or give a separate eval file with --eval-data.")
    train, evaluation = train_test_split(frame, test_size=eval_fraction, random_state=seed)
    return train.reset_index(drop=True), evaluation.reset_index(drop=True)


def sample_rows(frame: pd.DataFrame, n: int | None, seed: int, stratify: bool = False) -> pd.DataFrame:
    """A seeded subset of n rows (stratified on `label` if asked); all rows when n is None or not smaller."""
    if not n or n >= len(frame):
        return frame
    if stratify:
        return subsample(frame, n, seed)
    return frame.sample(n=n, random_state=seed).reset_index(drop=True)
