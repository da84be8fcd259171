"""Token classification (NER): BIO tags per word, sub-word alignment, entity spans with character offsets.

Words are mapped to sub-tokens through the tokenizer's character offsets, so any fast tokenizer works and a
prediction comes back as entity spans over the original text.
"""

from __future__ import annotations

import logging
import re
from bisect import bisect_right
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from seqeval.metrics import accuracy_score, classification_report, f1_score, precision_score, recall_score
from seqeval.metrics.sequence_labeling import get_entities
from sklearn.model_selection import train_test_split
from torch import nn
from transformers import PreTrainedTokenizerBase

from transferlab.config import ModelConfig, RunConfig
from transferlab.data.conll import bio_labels, load_tagged
from transferlab.errors import UserError
from transferlab.models.backbone import build_task_model, load_tokenizer
from transferlab.models.modeling_transferlab import TransferlabForTokenClassification
from transferlab.tasks import require_saved_task
from transferlab.tasks.base import RunData, Task

log = logging.getLogger("transferlab")

_WORD = re.compile(r"\w+|[^\w\s]")  # raw text -> words: runs of letters/digits, or one punctuation mark
_MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def require_offsets(tokenizer: PreTrainedTokenizerBase, task: str) -> None:
    """Token-level tasks map sub-tokens back to characters: they need a fast tokenizer's offset mapping."""
    if not tokenizer.is_fast:
        raise UserError(f"Task '{task}' needs character offsets, which the tokenizer {type(tokenizer).__name__} "
                        "(a slow, pure-Python tokenizer) cannot give.",
                        "Use a model directory with a fast tokenizer (tokenizer.json).")


def pad_rows(rows: list[list], value, width: int | None = None) -> torch.Tensor:
    """Right-pad integer rows (or rows of pairs) to `width` (default: the longest row) as one tensor."""
    width = max([width or 0, *(len(r) for r in rows), 1])
    shape = np.shape(rows[0][0]) if rows and rows[0] else ()
    out = np.full((len(rows), width, *shape), value, dtype=np.int64)
    for i, row in enumerate(rows):
        if row:
            out[i, :len(row)] = row
    return torch.from_numpy(out)


def split_words(text: str) -> tuple[list[str], list[tuple[int, int]]]:
    """Words of raw text (letter/digit runs and single punctuation marks) with their character spans."""
    found = list(_WORD.finditer(text))
    return [m.group() for m in found], [m.span() for m in found]


def join_words(tokens: list[str]) -> tuple[str, list[tuple[int, int]]]:
    """Pre-tokenized words as one text (joined by spaces) and each word's character span in it."""
    spans, at = [], 0
    for token in tokens:
        spans.append((at, at + len(token)))
        at += len(token) + 1
    return " ".join(tokens), spans


def subtoken_words(offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[int | None]:
    """The word each sub-token starts in (None for special tokens and sub-tokens outside every word)."""
    starts = [s for s, _ in spans]
    words: list[int | None] = []
    for begin, end in offsets:
        w = bisect_right(starts, begin) - 1
        words.append(w if begin < end and w >= 0 and begin < spans[w][1] else None)
    return words


class TokensTask(Task):
    """BIO tags per word; the model tags the first sub-token of each word (or every sub-token, B- -> I-)."""

    name = "tokens"
    metric = "f1"

    def __init__(self, label_names: list[str], crf: bool = False, label_all_subtokens: bool = False):
        self.label_names = label_names
        self.label_to_id = {name: i for i, name in enumerate(label_names)}
        self.crf = crf
        self.label_all_subtokens = label_all_subtokens
        # per-word outputs are padded to one width (the longest sentence encoded) so batches concatenate
        self.width = 1

    @classmethod
    def load_data(cls, cfg: RunConfig) -> RunData:
        d, ner = cfg.data, cfg.ner
        frame = load_tagged(d.train, ner.tokens_column, ner.tags_column)
        if d.eval:
            train, evaluation = frame, load_tagged(d.eval, ner.tokens_column, ner.tags_column)
        else:
            train, evaluation = random_split(frame, d.eval_fraction, cfg.seed, d.train)
        labels = bio_labels([*train["tags"], *evaluation["tags"]])
        train = sample_rows(train, d.max_train_examples, cfg.seed)
        evaluation = sample_rows(evaluation, d.max_eval_examples, cfg.seed)
        return RunData(train, evaluation, labels)

    @classmethod
    def for_data(cls, cfg: RunConfig, data: RunData) -> TokensTask:
        return cls(data.labels, cfg.ner.crf, cfg.ner.label_all_subtokens)

    @classmethod
    def from_config(cls, config) -> TokensTask:
        """The task a saved token-classification model was trained for (labels and options from its config)."""
        labels = [config.id2label[i] for i in range(config.num_labels)]
        return cls(labels, getattr(config, "crf", False), getattr(config, "label_all_subtokens", False))

    def build_model(self, model_dir: Path, model_cfg: ModelConfig) -> torch.nn.Module:
        return build_task_model(
            model_dir, TransferlabForTokenClassification, task=self.name, num_labels=len(self.label_names),
            id2label=dict(enumerate(self.label_names)), label2id=dict(self.label_to_id),
            head_dropout=model_cfg.head_dropout, crf=self.crf, label_all_subtokens=self.label_all_subtokens)

    @property
    def outside(self) -> int:
        return self.label_to_id.get("O", 0)

    def _tag_ids(self, tags: list[str]) -> list[int]:
        unknown = sorted(set(tags) - set(self.label_to_id))
        if unknown:
            raise UserError(f"Tags {', '.join(map(repr, unknown))} are not among the model's labels "
                            f"({', '.join(self.label_names)}).",
                            "Evaluate on data with the entity types the model was trained on.")
        return [self.label_to_id[t] for t in tags]

    def _continuation(self, tag_id: int) -> int:
        """The tag of a word's later sub-tokens when all are labelled: B-X continues as I-X."""
        name = self.label_names[tag_id]
        return self.label_to_id.get("I-" + name[2:], tag_id) if name.startswith("B-") else tag_id

    def encode(self, frame: pd.DataFrame, tokenizer: PreTrainedTokenizerBase, max_length: int) -> list[dict]:
        """Per sentence: model inputs, `labels` / `tag_mask` per sub-token, and per word its first sub-token
        (`_word_starts`, -1 if cut off) and gold tag (`_word_tags`)."""
        require_offsets(tokenizer, self.name)
        texts, spans = sentence_texts(frame)
        enc = tokenizer(texts, truncation=True, max_length=max_length, return_offsets_mapping=True)
        keys = [k for k in _MODEL_INPUTS if k in enc]
        features, cut = [], 0
        for i, (word_spans, tags) in enumerate(zip(spans, frame["tags"], strict=True)):
            gold = self._tag_ids(list(tags))
            starts = [-1] * len(gold)
            labels, tag_mask = [], []
            for pos, w in enumerate(subtoken_words(enc["offset_mapping"][i], word_spans)):
                first = w is not None and starts[w] == -1
                if first:
                    starts[w] = pos
                tagged = first or (w is not None and self.label_all_subtokens)
                labels.append((gold[w] if first else self._continuation(gold[w])) if tagged else -100)
                tag_mask.append(int(tagged))
            cut += bool(starts) and starts[-1] == -1 and len(enc["input_ids"][i]) >= max_length
            features.append({**{k: enc[k][i] for k in keys}, "labels": labels, "tag_mask": tag_mask,
                             "_word_starts": starts, "_word_tags": gold})
        self.width = max([self.width, *(len(f["_word_tags"]) for f in features)])
        if cut:
            log.warning("%d of %d sentences are longer than max_length %d tokens: their last words are "
                        "predicted O.", cut, len(features), max_length)
        return features

    def collate(self, features: list[dict], tokenizer: PreTrainedTokenizerBase) -> dict[str, torch.Tensor]:
        keys = [k for k in _MODEL_INPUTS if k in features[0]]
        batch = tokenizer.pad([{k: f[k] for k in keys} for f in features], padding_side="right",
                              return_tensors="pt")
        width = batch["input_ids"].shape[1]
        batch["labels"] = pad_rows([f["labels"] for f in features], -100, width)
        batch["tag_mask"] = pad_rows([f["tag_mask"] for f in features], 0, width)
        batch["_word_starts"] = pad_rows([f["_word_starts"] for f in features], -1)
        batch["_word_tags"] = pad_rows([f["_word_tags"] for f in features], -100)
        return batch

    def outputs(self, model_output, batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        """Per sentence, per word (padded with -100 to `width`): predicted tag id, its probability, gold tag id."""
        predictions = model_output.predictions.cpu()
        probs = torch.softmax(model_output.logits.float(), dim=-1).cpu()
        chosen = probs.gather(-1, predictions.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        starts, gold = batch["_word_starts"].cpu(), batch["_word_tags"].cpu()
        rows = torch.arange(len(starts)).unsqueeze(1)
        kept = starts >= 0
        pred = torch.where(kept, predictions[rows, starts.clamp(min=0)], self.outside).masked_fill(gold == -100, -100)
        score = torch.where(kept, chosen[rows, starts.clamp(min=0)], 0.0)
        pad = self.width - gold.shape[1]
        return {"pred": nn.functional.pad(pred, (0, pad), value=-100).numpy(),
                "score": nn.functional.pad(score, (0, pad)).numpy(),
                "gold": nn.functional.pad(gold, (0, pad), value=-100).numpy()}

    def metrics(self, outputs: dict[str, np.ndarray]) -> dict:
        """Entity-level precision / recall / F1 (seqeval, conlleval rules), overall and per entity type."""
        names = self.label_names
        words = outputs["gold"] != -100
        true = [[names[t] for t in seq[keep]] for seq, keep in zip(outputs["gold"], words, strict=True)]
        pred = [[names[t] for t in seq[keep]] for seq, keep in zip(outputs["pred"], words, strict=True)]
        report = classification_report(true, pred, output_dict=True, zero_division=0)
        per_type = {kind: {"precision": float(row["precision"]), "recall": float(row["recall"]),
                           "f1": float(row["f1-score"]), "support": int(row["support"])}
                    for kind, row in report.items() if not kind.endswith(" avg")}
        return {"precision": float(precision_score(true, pred, zero_division=0)),
                "recall": float(recall_score(true, pred, zero_division=0)),
                "f1": float(f1_score(true, pred, zero_division=0)),
                "token_accuracy": float(accuracy_score(true, pred)), "per_class": per_type}

    def entities(self, text: str, spans: list[tuple[int, int]], tag_ids: np.ndarray, scores: np.ndarray) -> list[dict]:
        """Entity spans of one text: type, character start / end, the text, and the mean tag probability."""
        tags = [self.label_names[t] for t in tag_ids[:len(spans)]]
        found = []
        for kind, first, last in get_entities(tags):
            start, end = spans[first][0], spans[last][1]
            found.append({"type": kind, "start": start, "end": end, "text": text[start:end],
                          "score": round(float(np.mean(scores[first:last + 1])), 6)})
        return found


def sentence_texts(frame: pd.DataFrame) -> tuple[list[str], list[list[tuple[int, int]]]]:
    """Each row's text and word spans: the raw text a row carries (`text`, `spans`), else its words joined."""
    if "spans" in frame:
        return frame["text"].tolist(), frame["spans"].tolist()
    joined = [join_words(list(tokens)) for tokens in frame["tokens"]]
    return [t for t, _ in joined], [s for _, s in joined]


def random_split(frame: pd.DataFrame, fraction: float, seed: int, source: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A seeded random (train, eval) split of the sentences."""
    if len(frame) < 2:
        raise UserError(f"{source} has {len(frame)} sentence; an eval split needs at least 2.",
                        "Add sentences, or give a separate eval file with --eval-data.")
    train, evaluation = train_test_split(frame, test_size=fraction, random_state=seed)
    return train.reset_index(drop=True), evaluation.reset_index(drop=True)


def sample_rows(frame: pd.DataFrame, n: int | None, seed: int) -> pd.DataFrame:
    """A seeded random subset of n rows (all rows when n is None or not smaller)."""
    if not n or n >= len(frame):
        return frame
    return frame.sample(n=n, random_state=seed).reset_index(drop=True)


class EntityPredictor:
    """A saved token-classification model over raw texts: entity spans with character offsets."""

    def __init__(self, model_dir: Path, batch_size: int = 32):
        require_saved_task(model_dir, TokensTask.name, "Entity prediction")
        self.tokenizer = load_tokenizer(model_dir)
        self.model = TransferlabForTokenClassification.from_pretrained(str(model_dir)).eval()
        self.task = TokensTask.from_config(self.model.config)
        self.batch_size = batch_size
        self.max_length = min(self.tokenizer.model_max_length, 512)

    def predict(self, texts: list[str]) -> list[list[dict]]:
        """The entities of each text (words are letter/digit runs and single punctuation marks)."""
        words = [split_words(text) for text in texts]
        frame = pd.DataFrame({"tokens": [w for w, _ in words], "tags": [["O"] * len(w) for w, _ in words],
                              "text": texts, "spans": [s for _, s in words]})
        out = self.task.run_model(self.model, self.tokenizer, self.task.encode(frame, self.tokenizer,
                                                                               self.max_length), self.batch_size)
        return [self.task.entities(text, spans, pred, score)
                for text, (_, spans), pred, score in zip(texts, words, out["pred"], out["score"], strict=True)]

    def evaluate(self, path: str, tokens_column: str = "tokens", tags_column: str = "tags") -> dict:
        """Entity-level metrics on a CoNLL / JSONL file of tagged sentences."""
        frame = load_tagged(path, tokens_column, tags_column)
        features = self.task.encode(frame, self.tokenizer, self.max_length)
        return self.task.metrics(self.task.run_model(self.model, self.tokenizer, features, self.batch_size))


def predict_rows(model_dir: Path, texts: list[str]) -> list[dict]:
    """`transferlab predict` on a token-classification model: each text with its entity spans."""
    entities = EntityPredictor(model_dir).predict(texts)
    return [{"text": text, "entities": found} for text, found in zip(texts, entities, strict=True)]


def entity_line(row: dict) -> str:
    """One printed prediction: the text, then `TYPE [start:end] 'text' score` per entity."""
    found = "; ".join(f"{e['type']} [{e['start']}:{e['end']}] {e['text']!r} {e['score']:.2f}" for e in row["entities"])
    return f"{row['text']}\t{found or '(no entities)'}"
