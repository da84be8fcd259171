"""Examples as named columns of a data file (sentence pairs, text-to-text): read, check, split, subsample."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from pathlib import Path

import pandas as pd
from sklearn.model_selection import train_test_split

from transferlab.config import RunConfig, build_config, load_yaml
from transferlab.data.sources import load_table
from transferlab.data.splits import stratified_split, subsample
from transferlab.deploy.artifacts import run_dir_of
from transferlab.errors import UserError

_SHOWN_ROWS = 5


def data_rows(mask: pd.Series) -> str:
    """The 1-based data rows where `mask` is true, the first few of them (row 1 = first data row)."""
    rows = (mask[mask].index + 1).tolist()
    return ", ".join(map(str, rows[:_SHOWN_ROWS])) + (f" (and {len(rows) - _SHOWN_ROWS} more)"
                                                     if len(rows) > _SHOWN_ROWS else "")


def read_columns(source: str, columns: dict[str, tuple[str, str]]) -> pd.DataFrame:
    """The columns of a data file as {role: (column, config option)} asks, renamed to their roles.

    A missing column, or an empty cell in one, is a UserError naming the option or the data rows.
    """
    table = load_table(source)
    found = [str(name) for name in table.columns]
    for role, (column, option) in columns.items():
        if column not in table.columns:
            close = difflib.get_close_matches(column, found, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UserError(f"{source} has no {role} column {column!r}{hint}; its columns are: {', '.join(found)}.",
                            f"Name the right one with --set {option}=COLUMN.")
    frame = table[[column for column, _ in columns.values()]].set_axis(list(columns), axis=1).reset_index(drop=True)
    for role, (column, _) in columns.items():
        empty = frame[role].isna() | (frame[role].astype(str).str.strip() == "")
        if empty.any():
            raise UserError(f"{source}: data row {data_rows(empty)} has an empty {role} (column {column!r}; "
                            "row 1 is the first data row).",
                            "Fill in those cells or delete those rows.")
    return frame


def random_split(frame: pd.DataFrame, eval_fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, eval): a seeded random held-out fraction, for examples without classes to stratify on."""
    if len(frame) < 2:
        raise UserError(f"Cannot split {len(frame)} example into train and eval.",
                        "Add examples, or give a separate eval file (--eval-data).")
    train, evaluation = train_test_split(frame, test_size=eval_fraction, random_state=seed)
    return train.reset_index(drop=True), evaluation.reset_index(drop=True)


def train_and_eval(cfg: RunConfig, load: Callable[[str], pd.DataFrame],
                   stratify: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The eval file or a held-out fraction of train (stratified on `label` if asked), then the asked subsets."""
    d = cfg.data
    train = load(d.train)
    if d.eval:
        evaluation = load(d.eval)
    elif stratify:
        train, evaluation = stratified_split(train, d.eval_fraction, cfg.seed)
    else:
        train, evaluation = random_split(train, d.eval_fraction, cfg.seed)
    return _subset(train, d.max_train_examples, cfg.seed, stratify), \
        _subset(evaluation, d.max_eval_examples, cfg.seed, stratify)


def _subset(frame: pd.DataFrame, n: int | None, seed: int, stratify: bool) -> pd.DataFrame:
    if not n or n >= len(frame):
        return frame
    if stratify:
        return subsample(frame, n, seed)
    return frame.sample(n=n, random_state=seed).reset_index(drop=True)


def saved_run_config(model_dir: Path) -> RunConfig:
    """The config of the run a saved model belongs to (its config.yaml), or the defaults for a bare model dir."""
    run_dir = run_dir_of(model_dir)
    if run_dir is None:
        return build_config({})
    return build_config(load_yaml(run_dir / "config.yaml"), str(run_dir / "config.yaml"))
