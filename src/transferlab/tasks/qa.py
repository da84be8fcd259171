"""Extractive question answering (SQuAD v1.1 / v2): windows over long contexts, best span search, EM and F1."""

from __future__ import annotations

import collections
import re
import string
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from pydantic import Field
from sklearn.model_selection import GroupShuffleSplit

from transferlab.backbones.base import Backbone, Processor
from transferlab.config import ConfigSection, ModelConfig, RunConfig, register_section
from transferlab.data.splits import sample_rows
from transferlab.data.squad import load_squad
from transferlab.errors import UserError
from transferlab.evaluation.metrics import softmax
from transferlab.models.build import build_task_model
from transferlab.models.modeling_transferlab import TransferlabForQuestionAnswering
from transferlab.models.standard import load_task_model
from transferlab.tasks.base import RunData, Task
from transferlab.tasks.table import input_columns
from transferlab.tasks.tokens import pad_rows, require_offsets


class QaConfig(ConfigSection):
    """Extractive question answering (task: qa) on SQuAD-format JSON."""

    doc_stride: int = Field(64, ge=0, description="tokens shared by consecutive windows of a long context")
    max_answer_length: int = Field(30, ge=1, description="longest answer span, in tokens")
    version_2_with_negative: bool = Field(False, description="SQuAD v2: questions may have no answer")


register_section("qa", QaConfig)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's answer normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def answer_f1(prediction: str, truth: str) -> float:
    """Token-overlap F1 of two normalised answers (SQuAD); two empty answers agree."""
    pred, gold = normalize_answer(prediction).split(), normalize_answer(truth).split()
    if not pred or not gold:
        return float(pred == gold)
    common = sum((collections.Counter(pred) & collections.Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def squad_metrics(predictions: list[str], answers: list[list[str]]) -> dict:
    """Exact match and F1 (fractions), each the best over a question's gold answers; no answers = ""."""
    exact, f1 = [], []
    for pred, golds in zip(predictions, answers, strict=True):
        golds = golds or [""]
        exact.append(max(float(normalize_answer(pred) == normalize_answer(g)) for g in golds))
        f1.append(max(answer_f1(pred, g) for g in golds))
    result = {"exact_match": float(np.mean(exact)), "f1": float(np.mean(f1)), "questions": len(predictions)}
    has = [bool(g) for g in answers]
    if not all(has):
        result["has_answer_f1"] = float(np.mean([f for f, h in zip(f1, has, strict=True) if h] or [0.0]))
        result["no_answer_accuracy"] = float(np.mean([e for e, h in zip(exact, has, strict=True) if not h]))
    return result


def best_span(start_logits: np.ndarray, end_logits: np.ndarray, offsets: np.ndarray,
              max_answer_length: int) -> tuple[int, int, float, float]:
    """(char start, char end, probability, no-answer probability) of the best span of one window.

    Start and end probabilities are softmaxes over the context tokens and position 0 (no answer); the span
    maximises p(start) * p(end) with end >= start and at most `max_answer_length` tokens (exhaustive search).
    """
    context = np.flatnonzero(offsets[:, 0] >= 0)
    if not len(context):
        return -1, -1, 0.0, 1.0
    candidates = np.r_[0, context]
    p_start, p_end = softmax(start_logits[candidates]), softmax(end_logits[candidates])
    n = len(context)
    upper = np.ones((n, n), dtype=bool)
    band = np.triu(upper) & ~np.triu(upper, k=max_answer_length)
    scores = np.where(band, np.outer(p_start[1:], p_end[1:]), -1.0)
    i, j = divmod(int(scores.argmax()), n)
    return int(offsets[context[i], 0]), int(offsets[context[j], 1]), float(scores[i, j]), float(p_start[0] * p_end[0])


def answer_positions(offsets: list[tuple[int, int]], answers: list[dict]) -> tuple[int, int]:
    """Token start and end of the first answer in one window; (0, 0) when it has none or lies outside."""
    if not answers:
        return 0, 0
    begin = answers[0]["answer_start"]
    end = begin + len(answers[0]["text"])
    context = [i for i, (s, _) in enumerate(offsets) if s >= 0]
    if not context or offsets[context[0]][0] > begin or offsets[context[-1]][1] < end:
        return 0, 0
    first = next(i for i in context if offsets[i][1] > begin)
    last = next(i for i in reversed(context) if offsets[i][0] < end)
    return first, last


class QaTask(Task):
    """Question + context in windows of `max_length` tokens that overlap by `doc_stride`; the answer of a
    question is the best span over its windows. Each window carries its question's row number (`_example`), so
    `decode` and `metrics` find the context and gold answers in the frame of questions."""

    name = "qa"
    pipeline_tag = "question-answering"
    metric = "f1"
    per_position = True
    output_names = ("start_logits", "end_logits")

    def __init__(self, processor: Processor, doc_stride: int = 64, max_answer_length: int = 30,
                 with_negative: bool = False):
        super().__init__(processor)
        require_offsets(processor.tokenizer, self.name)
        self.doc_stride = doc_stride
        self.max_answer_length = max_answer_length
        self.with_negative = with_negative

    @classmethod
    def load_data(cls, cfg: RunConfig) -> RunData:
        d, qa = cfg.data, cfg.section("qa")
        frame = load_squad(d.train, qa.version_2_with_negative)
        if d.eval:
            train, evaluation = frame, load_squad(d.eval, qa.version_2_with_negative)
        else:
            train, evaluation = context_split(frame, d.eval_fraction, cfg.seed, d.train)
        return RunData(sample_rows(train, d.max_train_examples, cfg.seed),
                       sample_rows(evaluation, d.max_eval_examples, cfg.seed))

    @classmethod
    def for_data(cls, cfg: RunConfig, data: RunData, processor: Processor) -> QaTask:
        qa = cfg.section("qa")
        return cls(processor, qa.doc_stride, qa.max_answer_length, qa.version_2_with_negative)

    @classmethod
    def for_saved(cls, model_dir: Path, config: dict, run_cfg: RunConfig, processor: Processor) -> QaTask:
        return cls(processor, config["doc_stride"], config["max_answer_length"], config["version_2_with_negative"])

    def build_model(self, backbone: Backbone, model_cfg: ModelConfig) -> torch.nn.Module:
        return build_task_model(
            backbone, TransferlabForQuestionAnswering, task=self.name, head_dropout=model_cfg.head_dropout,
            backbone_dropout=model_cfg.backbone_dropout, doc_stride=self.doc_stride,
            max_answer_length=self.max_answer_length, version_2_with_negative=self.with_negative,
            train_max_length=model_cfg.max_length)

    def load_model(self, model_dir: Path) -> torch.nn.Module:
        return load_task_model(model_dir, TransferlabForQuestionAnswering)

    def encode(self, frame: pd.DataFrame) -> list[dict]:
        """One feature per window: model inputs, answer token positions, `_example` (the question's row) and
        the context `_offsets` of each token."""
        tokenizer, max_length = self.processor.tokenizer, self.processor.max_length
        self._check_room(frame)
        enc = tokenizer(frame["question"].tolist(), frame["context"].tolist(), truncation="only_second",
                        max_length=max_length, stride=self.doc_stride, return_overflowing_tokens=True,
                        return_offsets_mapping=True)
        keys = self.processor.input_names
        answers = frame["answers"].tolist() if "answers" in frame else [[] for _ in range(len(frame))]
        features = []
        for f, example in enumerate(enc["overflow_to_sample_mapping"]):
            offsets = [o if s == 1 else (-1, -1) for o, s in zip(enc["offset_mapping"][f], enc.sequence_ids(f),
                                                                 strict=True)]
            start, end = answer_positions(offsets, answers[example])
            features.append({**{k: enc[k][f] for k in keys}, "start_positions": start, "end_positions": end,
                             "_example": example, "_offsets": offsets})
        return features

    def _check_room(self, frame: pd.DataFrame) -> None:
        """Each window holds the whole question plus more context than the stride: refuse what cannot fit."""
        tokenizer, max_length = self.processor.tokenizer, self.processor.max_length
        lengths = [len(ids) for ids in tokenizer(frame["question"].tolist(), add_special_tokens=False)["input_ids"]]
        worst = int(np.argmax(lengths))
        room = max_length - tokenizer.num_special_tokens_to_add(pair=True) - lengths[worst]
        if room <= self.doc_stride:
            name = frame["id"].iloc[worst] if "id" in frame else worst + 1
            raise UserError(f"Question {name!r} has {lengths[worst]} tokens: with model.max_length "
                            f"{max_length} it leaves {max(room, 0)} tokens of context per window, not more than "
                            f"qa.doc_stride ({self.doc_stride}).",
                            "Raise --max-length (e.g. 384), lower qa.doc_stride, or shorten the question.")

    def collate(self, features: list[dict]) -> dict[str, torch.Tensor]:
        keys = self.processor.input_names
        batch = self.processor.tokenizer.pad([{k: f[k] for k in keys} for f in features], padding_side="right",
                                             return_tensors="pt")
        for key in ("start_positions", "end_positions", "_example"):
            batch[key] = torch.tensor([f[key] for f in features])
        batch["_offsets"] = pad_rows([f["_offsets"] for f in features], -1, batch["input_ids"].shape[1])
        return batch

    def outputs(self, model_output, batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        """Per window: its question, best span (characters), the span's and the no-answer probability."""
        starts = torch.as_tensor(model_output.start_logits).float().cpu().numpy()
        ends = torch.as_tensor(model_output.end_logits).float().cpu().numpy()
        offsets = batch["_offsets"].cpu().numpy()
        spans = np.array([best_span(starts[i], ends[i], offsets[i], self.max_answer_length)
                          for i in range(len(starts))]).reshape(-1, 4)
        return {"example": batch["_example"].cpu().numpy(), "start": spans[:, 0].astype(int),
                "end": spans[:, 1].astype(int), "score": spans[:, 2], "null_score": spans[:, 3]}

    def answers(self, outputs: dict[str, np.ndarray], frame: pd.DataFrame) -> list[dict]:
        """The answer of each question (row of `frame`): its best window's span, or "" when no answer is
        likelier (v2)."""
        contexts = frame["context"].tolist()
        best: dict[int, dict] = {}
        null: dict[int, float] = {}
        for ex, start, end, score, no in zip(outputs["example"], outputs["start"], outputs["end"],
                                             outputs["score"], outputs["null_score"], strict=True):
            ex = int(ex)
            null[ex] = min(null.get(ex, 1.0), float(no))
            if ex not in best or score > best[ex]["score"]:
                best[ex] = {"answer": contexts[ex][start:end] if start >= 0 else "", "score": float(score),
                            "start": int(start), "end": int(end)}
        if self.with_negative:
            for ex, answer in best.items():
                if null[ex] > answer["score"]:
                    best[ex] = {"answer": "", "score": null[ex], "start": -1, "end": -1}
        return [best[ex] for ex in range(len(frame))]

    def metrics(self, outputs: dict[str, np.ndarray], frame: pd.DataFrame) -> dict:
        """SQuAD exact match and F1 against the gold answers of the frame's questions."""
        answers = self.answers(outputs, frame)
        return squad_metrics([a["answer"] for a in answers], [[a["text"] for a in gold] for gold in frame["answers"]])

    def decode(self, outputs: dict[str, np.ndarray], frame: pd.DataFrame) -> list[dict]:
        return [{"answer": a["answer"], "score": round(a["score"], 6), "start": a["start"], "end": a["end"]}
                for a in self.answers(outputs, frame)]

    def read_labelled(self, source: str, run_cfg: RunConfig) -> pd.DataFrame:
        return load_squad(source, with_negative=True)

    @property
    def input_fields(self) -> list[str]:
        return ["question", "context"]

    def read_inputs(self, source: Path, run_cfg: RunConfig) -> pd.DataFrame:
        return input_columns(source, {"question": ("question", "a 'question' column"),
                                      "context": ("context", "a 'context' column")}, "A QA model")

    def inputs_from_args(self, values: list[str], options: dict) -> pd.DataFrame:
        questions, context = options.get("question") or [], options.get("context")
        if not questions or context is None:
            raise UserError("predict: a QA model needs --question and --context (or --input with question and "
                            "context columns).", 'Pass e.g. --question "Who directed it?" --context "..."')
        frame = pd.DataFrame({"question": list(questions), "context": [context] * len(questions)})
        frame.attrs["input_columns"] = ["question"]
        return frame

    def line(self, row: dict, prediction: dict) -> str:
        """The answer, its probability, its span in the context, the question."""
        return (f"{prediction['answer'] or '(no answer)'}\t{prediction['score']:.4f}\t"
                f"[{prediction['start']}:{prediction['end']}]\t{row['question']}")


def context_split(frame: pd.DataFrame, fraction: float, seed: int, source: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A seeded (train, eval) split of the questions that keeps all questions of a context on one side."""
    if frame["context"].nunique() < 2:
        raise UserError(f"{source} has a single context; a held-out split needs at least 2.",
                        "Add paragraphs, or give a separate eval file with --eval-data.")
    splitter = GroupShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
    train, evaluation = next(splitter.split(frame, groups=frame["context"]))
    return frame.iloc[train].reset_index(drop=True), frame.iloc[evaluation].reset_index(drop=True)
