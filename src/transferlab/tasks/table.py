"""Examples as named columns of a data file: read and check them for training, evaluation and prediction."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from transferlab.config import RunConfig
from transferlab.data.sources import load_table
from transferlab.data.splits import random_split, sample_rows, stratified_split
from transferlab.errors import UserError

_SHOWN_ROWS = 5


def data_rows(mask: pd.Series) -> str:
    """The 1-based data rows where `mask` is true, the first few of them (row 1 = first data row)."""
    rows = (mask[mask].index + 1).tolist()
    return ", ".join(map(str, rows[:_SHOWN_ROWS])) + (f" (and {len(rows) - _SHOWN_ROWS} more)"
                                                     if len(rows) > _SHOWN_ROWS else "")


def _require(table: pd.DataFrame, source: str | Path, role: str, column: str, fix: str) -> None:
    if column not in table.columns:
        found = [str(name) for name in table.columns]
        close = difflib.get_close_matches(column, found, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UserError(f"{source} has no {role} column {column!r}{hint}; its columns are: {', '.join(found)}.",
                        f"Name the right one with {fix}.")


def read_columns(source: str, columns: dict[str, tuple[str, str]]) -> pd.DataFrame:
    """The columns of a data file as {role: (column, config option)} asks, renamed to their roles.

    A missing column, or an empty cell in one, is a UserError naming the option or the data rows.
    """
    table = load_table(source)
    for role, (column, option) in columns.items():
        _require(table, source, role, column, f"--set {option}=COLUMN")
    frame = table[[column for column, _ in columns.values()]].set_axis(list(columns), axis=1).reset_index(drop=True)
    for role, (column, _) in columns.items():
        empty = frame[role].isna() | (frame[role].astype(str).str.strip() == "")
        if empty.any():
            raise UserError(f"{source}: data row {data_rows(empty)} has an empty {role} (column {column!r}; "
                            "row 1 is the first data row).",
                            "Fill in those cells or delete those rows.")
    return frame


def input_columns(source: Path, roles: dict[str, tuple[str, str]], reader: str) -> pd.DataFrame:
    """A prediction input file with every one of its columns, plus its text columns under their roles
    ({role: (column, option)}); missing cells are "". `attrs["input_columns"]` lists the file's own columns."""
    table = load_table(source)
    for role, (column, option) in roles.items():
        if column not in table.columns:
            raise UserError(f"{source}: no column {column!r} for the {role} (columns: "
                            f"{', '.join(map(str, table.columns))}).",
                            f"{reader} reads its inputs from the column(s) {', '.join(c for c, _ in roles.values())}; "
                            f"name the right one with {option}.")
    frame = table.copy()
    frame.attrs["input_columns"] = [str(c) for c in table.columns]
    frame.attrs["role_columns"] = {role: column for role, (column, _) in roles.items()}
    for role, (column, _) in roles.items():
        frame[role] = table[column].fillna("").astype(str)
    return frame


def text_inputs(values: list[str], per_example: int, roles: tuple[str, ...],
                names: tuple[str, ...] | None = None) -> pd.DataFrame:
    """Texts from the command line as examples of `per_example` texts each (a pair takes two); `names` are the
    columns the texts get in written predictions (default: their roles)."""
    if not values or len(values) % per_example:
        raise UserError(f"predict: this model takes its texts {per_example} at a time "
                        f"({' '.join((names or roles)[:per_example])} ...), got {len(values)}.",
                        "Pass texts as arguments, or a file with --input.")
    frame = pd.DataFrame({role: values[i::per_example] for i, role in enumerate(roles[:per_example])})
    shown = list((names or roles)[:per_example])
    for role, name in zip(roles, shown, strict=False):
        frame[name] = frame[role]
    frame.attrs["input_columns"] = shown
    return frame


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
        train, evaluation = random_split(train, d.eval_fraction, cfg.seed, d.train)
    return sample_rows(train, d.max_train_examples, cfg.seed, stratify), \
        sample_rows(evaluation, d.max_eval_examples, cfg.seed, stratify)
