"""Class labels, one spelling per class: numbers written one way (1 == 1.0), a column mixing numbers and words
refused, and a column of many distinct fractions refused as what it looks like, a regression target."""

from __future__ import annotations

import logging
import re
from decimal import Decimal

import pandas as pd

from transferlab.errors import UserError

logger = logging.getLogger("transferlab")

_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
# More distinct non-integer values than this reads as a measured quantity, not a set of classes.
MAX_FRACTIONAL_CLASSES = 20
_SHOWN = 5
REGRESSION_HINT = ("for a score, transferlab has regression only for text pairs (--task pairs, whose default "
                   "pairs.objective is regression, reading pairs.score_column); its tasks are classification, tokens, "
                   "qa, pairs and text2text, none of which regresses a single text")


def is_number(label: str) -> bool:
    """Whether a label is written as a decimal number (1, -2, 1.0, .5, 1e3), the way class ids are."""
    return _NUMBER.fullmatch(label) is not None


def class_labels(labels: pd.Series, source: str, column: str, regression_hint: str = REGRESSION_HINT) -> pd.Series:
    """The labels stripped (missing ones stay missing), numbers written one way per value ('1.0' -> '1').

    A column that mixes numbers and words, or holds more than MAX_FRACTIONAL_CLASSES distinct non-integer
    numbers, is a UserError naming the data rows (row 1 = the first data row; `labels` keeps the file's index).
    """
    labels = labels.str.strip()
    given = labels[labels.notna() & (labels != "")]
    kinds = {label: is_number(label) for label in given.unique()}  # per distinct label: columns may be long
    numeric = given.map(kinds).astype(bool)
    if not numeric.any():
        return labels
    if not numeric.all():
        raise UserError(f"{source}: column {column!r} mixes numbers and words as labels: numbers such as "
                        f"{_examples(given[numeric])} and words such as {_examples(given[~numeric])}; row 1 is "
                        "the first data row. One class could then be spelled two ways and become two classes.",
                        "Write every label the same way, all words or all numbers (e.g. map 0/1 to "
                        "negative/positive), or pick the right label column.")
    canonical = given.map({label: _canonical_number(label) for label in kinds})
    fractional = sorted({value for value in canonical.unique() if "." in value}, key=Decimal)
    if len(fractional) > MAX_FRACTIONAL_CLASSES:
        raise UserError(f"{source}: column {column!r} holds {len(fractional)} distinct non-integer numbers "
                        f"(e.g. {', '.join(fractional[:_SHOWN])}): that looks like a regression target, not a "
                        "set of classes.",
                        f"If these are classes, bin them into a few labels first; {regression_hint}.")
    if fractional:
        logger.warning("%s: column %r holds non-integer numbers as labels (%s); each distinct value is read as "
                       "one class.", source, column, ", ".join(fractional[:_SHOWN]))
    labels[canonical.index] = canonical
    return labels


def _canonical_number(label: str) -> str:
    """One spelling per value: integers without a decimal point ('1.0', '+1', '1e0' -> '1'), others shortest."""
    value = Decimal(label)
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def _examples(labels: pd.Series) -> str:
    """A few distinct labels and the data rows where they occur, e.g. "'0', '1' (data rows 1, 3)"."""
    shown = ", ".join(repr(label) for label in labels.unique()[:_SHOWN])
    rows = (labels.index[:_SHOWN] + 1).tolist()
    more = ", ..." if len(labels) > _SHOWN else ""
    return f"{shown} (data row{'s' if len(labels) > 1 else ''} {', '.join(map(str, rows))}{more})"
