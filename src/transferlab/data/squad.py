"""SQuAD-format question answering data (v1.1, and v2 with unanswerable questions): read and check."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from transferlab.data.sources import load_table
from transferlab.errors import UserError

logger = logging.getLogger("transferlab")

_SHAPE = ('SQuAD JSON is {"data": [{"title": ..., "paragraphs": [{"context": "...", "qas": [{"id": "...", '
          '"question": "...", "answers": [{"text": "...", "answer_start": 0}]}]}]}]}.')


def load_squad(path: str | Path, with_negative: bool = False) -> pd.DataFrame:
    """Questions as rows: id, question, context, answers (list of {"text", "answer_start"}; empty = no answer).

    An answer whose `answer_start` does not point at its text is moved to the nearest occurrence of the text.
    """
    path = Path(path)
    if not path.is_file():
        load_table(path)  # the shared "does not exist" / "is a directory" errors
    if path.suffix.lower() != ".json":
        raise UserError(f"{path} is not a .json file; question answering reads SQuAD JSON.", _SHAPE)
    try:
        doc = json.loads(path.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"Could not parse {path} as UTF-8 JSON: {error}.", "Fix the file at the place named.") \
            from error
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise UserError(f"{path} has no top-level \"data\" list.", _SHAPE)
    rows, moved = [], 0
    for a, article in enumerate(doc["data"]):
        for p, paragraph in enumerate(_field(article, "paragraphs", list, f"{path}: data[{a}]")):
            where = f"{path}: data[{a}].paragraphs[{p}]"
            context = _field(paragraph, "context", str, where)
            for q, qa in enumerate(_field(paragraph, "qas", list, where)):
                qid = str(_field(qa, "id", (str, int), f"{where}.qas[{q}]"))
                question = _field(qa, "question", str, f"{path}: question {qid!r}")
                answers, fixed = _answers(qa, context, qid, path, with_negative)
                moved += fixed
                rows.append({"id": qid, "question": question, "context": context, "answers": answers})
    if not rows:
        raise UserError(f"{path} holds no questions.", _SHAPE)
    frame = pd.DataFrame(rows)
    duplicates = frame["id"][frame["id"].duplicated()].unique().tolist()
    if duplicates:
        raise UserError(f"{path}: question ids must be unique; {len(duplicates)} repeat (e.g. {duplicates[0]!r}).",
                        "Give every question its own id.")
    if moved:
        logger.warning("%s: %d answers had an answer_start that did not point at their text; moved to the "
                       "nearest occurrence.", path, moved)
    return frame


def _field(record, key: str, kind, where: str):
    if not isinstance(record, dict) or key not in record:
        raise UserError(f"{where} has no {key!r}.", _SHAPE)
    value = record[key]
    if not isinstance(value, kind):
        raise UserError(f"{where}: {key!r} is a {type(value).__name__}, not the expected kind.", _SHAPE)
    return value


def _answers(qa: dict, context: str, qid: str, path: Path, with_negative: bool) -> tuple[list[dict], int]:
    """The question's answers, each checked against the context; and how many were moved to their text."""
    answers = qa.get("answers") or []
    if qa.get("is_impossible") or not answers:
        if not with_negative:
            raise UserError(f"{path}: question {qid!r} has no answer (SQuAD v2 style), but unanswerable "
                            "questions are off.",
                            "Set qa.version_2_with_negative=true (--set qa.version_2_with_negative=true), or "
                            "give the question an answer.")
        return [], 0
    checked, moved = [], 0
    for answer in answers:
        text = _field(answer, "text", str, f"{path}: question {qid!r} answer")
        start = answer.get("answer_start")
        located = locate_answer(context, text, start if isinstance(start, int) else None)
        if located is None:
            raise UserError(f"{path}: the answer {text!r} of question {qid!r} is not in its context.",
                            "Answers must be copied from the context (extractive QA): fix the text, or the "
                            "context.")
        moved += located != start
        checked.append({"text": text, "answer_start": located})
    return checked, moved


def locate_answer(context: str, text: str, start: int | None) -> int | None:
    """`start` if the text is found there, else the occurrence of the text nearest to it; None if absent."""
    if not text:
        return None
    if start is not None and context[start:start + len(text)] == text:
        return start
    found, at = [], context.find(text)
    while at != -1:
        found.append(at)
        at = context.find(text, at + 1)
    if not found:
        return None
    return min(found, key=lambda i: abs(i - (start or 0)))
