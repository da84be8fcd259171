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
from pydantic import Field
from safetensors import safe_open
from seqeval.metrics import accuracy_score, classification_report, f1_score, precision_score, recall_score
from seqeval.metrics.sequence_labeling import get_entities

from transferlab.backbones.base import Backbone, Processor
from transferlab.config import ConfigSection, ModelConfig, RunConfig, register_section
from transferlab.data.conll import bio_labels, load_tagged
from transferlab.data.splits import random_split, sample_rows
from transferlab.errors import UserError
from transferlab.models.build import build_task_model
from transferlab.models.modeling_transferlab import CRF, TransferlabForTokenClassification, tag_predictions
from transferlab.models.standard import load_task_model
from transferlab.tasks.base import RunData, Task
from transferlab.tasks.table import input_columns

log = logging.getLogger("transferlab")

_WORD = re.compile(r"\w+|[^\w\s]")  # raw text -> words: runs of letters/digits, or one punctuation mark


class NerConfig(ConfigSection):
    """Token classification (task: tokens): where the tokens and BIO tags are, and how they are learned."""

    tokens_column: str = Field("tokens", description="JSONL/JSON/Parquet column of token lists (CoNLL: 1st column)")
    tags_column: str = Field("tags", description="column of BIO tag lists (CoNLL: last column)")
    crf: bool = Field(False, description="a CRF layer with BIO constraints on top, Viterbi decoding")
    label_all_subtokens: bool = Field(False, description="tag every sub-token of a word, not only the first")


register_section("ner", NerConfig)


def require_offsets(tokenizer, task: str) -> None:
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
    pipeline_tag = "token-classification"
    metric = "f1"
    per_position = True

    def __init__(self, label_names: list[str], processor: Processor, crf: bool = False,
                 label_all_subtokens: bool = False, crf_layer: CRF | None = None):
        super().__init__(processor)
        require_offsets(processor.tokenizer, self.name)
        self.label_names = label_names
        self.label_to_id = {name: i for i, name in enumerate(label_names)}
        self.crf = crf
        self.label_all_subtokens = label_all_subtokens
        self.crf_layer = crf_layer  # a saved CRF's transitions: decodes emissions of an exported graph

    @classmethod
    def load_data(cls, cfg: RunConfig) -> RunData:
        d, ner = cfg.data, cfg.section("ner")
        frame = load_tagged(d.train, ner.tokens_column, ner.tags_column)
        if d.eval:
            train, evaluation = frame, load_tagged(d.eval, ner.tokens_column, ner.tags_column)
        else:
            train, evaluation = random_split(frame, d.eval_fraction, cfg.seed, d.train, "sentence")
        labels = bio_labels([*train["tags"], *evaluation["tags"]])
        train = sample_rows(train, d.max_train_examples, cfg.seed)
        evaluation = sample_rows(evaluation, d.max_eval_examples, cfg.seed)
        return RunData(train, evaluation, labels)

    @classmethod
    def for_data(cls, cfg: RunConfig, data: RunData, processor: Processor) -> TokensTask:
        ner = cfg.section("ner")
        return cls(data.labels, processor, ner.crf, ner.label_all_subtokens)

    @classmethod
    def for_saved(cls, model_dir: Path, config: dict, run_cfg: RunConfig, processor: Processor) -> TokensTask:
        labels = [config["id2label"][str(i)] for i in range(len(config["id2label"]))]
        crf_layer = None
        if config.get("crf"):
            crf_layer = CRF(labels)
            with safe_open(str(model_dir / "model.safetensors"), "pt") as weights:
                crf_layer.load_state_dict({k: weights.get_tensor(f"crf.{k}") for k in crf_layer.state_dict()})
        return cls(labels, processor, config.get("crf", False), config.get("label_all_subtokens", False), crf_layer)

    def build_model(self, backbone: Backbone, model_cfg: ModelConfig) -> torch.nn.Module:
        return build_task_model(
            backbone, TransferlabForTokenClassification, task=self.name, num_labels=len(self.label_names),
            id2label=dict(enumerate(self.label_names)), label2id=dict(self.label_to_id),
            head_dropout=model_cfg.head_dropout, backbone_dropout=model_cfg.backbone_dropout, crf=self.crf,
            label_all_subtokens=self.label_all_subtokens)

    def load_model(self, model_dir: Path) -> torch.nn.Module:
        return load_task_model(model_dir, TransferlabForTokenClassification)

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

    def encode(self, frame: pd.DataFrame) -> list[dict]:
        """Per sentence: model inputs, `labels` / `tag_mask` per sub-token, and per word its first sub-token
        (`_word_starts`, -1 if cut off) and gold tag (`_word_tags`; O for unlabelled inputs)."""
        tokenizer, max_length = self.processor.tokenizer, self.processor.max_length
        texts, spans = sentence_texts(frame)
        enc = tokenizer(texts, truncation=True, max_length=max_length, return_offsets_mapping=True)
        keys = self.processor.input_names
        tag_lists = frame["tags"] if "tags" in frame else [["O"] * len(s) for s in spans]
        features, cut = [], 0
        for i, (word_spans, tags) in enumerate(zip(spans, tag_lists, strict=True)):
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
        if cut:
            log.warning("%d of %d sentences are longer than max_length %d tokens: their last words are "
                        "predicted O.", cut, len(features), max_length)
        return features

    def collate(self, features: list[dict]) -> dict[str, torch.Tensor]:
        keys = self.processor.input_names
        batch = self.processor.tokenizer.pad([{k: f[k] for k in keys} for f in features], padding_side="right",
                                             return_tensors="pt")
        width = batch["input_ids"].shape[1]
        batch["labels"] = pad_rows([f["labels"] for f in features], -100, width)
        batch["tag_mask"] = pad_rows([f["tag_mask"] for f in features], 0, width)
        batch["_word_starts"] = pad_rows([f["_word_starts"] for f in features], -1)
        batch["_word_tags"] = pad_rows([f["_word_tags"] for f in features], -100)
        return batch

    def graph_forward(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor]):
        return model(**inputs, decode=False)

    def outputs(self, model_output, batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        """Per sentence, per word (padded with -100): predicted tag id, its probability, gold tag id."""
        emissions = torch.as_tensor(model_output.logits).float().cpu()
        predictions = getattr(model_output, "predictions", None)
        if predictions is None:  # an exported graph gives emissions only: decode them here
            predictions = tag_predictions(self.crf_layer, emissions, batch["tag_mask"].cpu().bool())
        predictions = predictions.cpu()
        probs = torch.softmax(emissions, dim=-1)
        chosen = probs.gather(-1, predictions.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        starts, gold = batch["_word_starts"].cpu(), batch["_word_tags"].cpu()
        rows = torch.arange(len(starts)).unsqueeze(1)
        kept = starts >= 0
        pred = torch.where(kept, predictions[rows, starts.clamp(min=0)], self.outside).masked_fill(gold == -100, -100)
        score = torch.where(kept, chosen[rows, starts.clamp(min=0)], 0.0)
        return {"pred": pred.numpy(), "score": score.numpy(), "gold": gold.numpy()}

    def metrics(self, outputs: dict[str, np.ndarray], frame: pd.DataFrame) -> dict:
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

    def decode(self, outputs: dict[str, np.ndarray], frame: pd.DataFrame) -> list[dict]:
        """The entities of each text: type, character start / end, the text, and the mean tag probability."""
        texts, spans = sentence_texts(frame)
        return [{"entities": self.entities(text, word_spans, pred, score)}
                for text, word_spans, pred, score in zip(texts, spans, outputs["pred"], outputs["score"],
                                                         strict=True)]

    def entities(self, text: str, spans: list[tuple[int, int]], tag_ids: np.ndarray, scores: np.ndarray) -> list[dict]:
        """Entity spans of one text: type, character start / end, the text, and the mean tag probability."""
        tags = [self.label_names[t] if t >= 0 else "O" for t in tag_ids[:len(spans)]]
        found = []
        for kind, first, last in get_entities(tags):
            start, end = spans[first][0], spans[last][1]
            found.append({"type": kind, "start": start, "end": end, "text": text[start:end],
                          "score": round(float(np.mean(scores[first:last + 1])), 6)})
        return found

    def read_labelled(self, source: str, run_cfg: RunConfig) -> pd.DataFrame:
        ner = run_cfg.section("ner")
        return load_tagged(source, ner.tokens_column, ner.tags_column)

    def read_inputs(self, source: Path, run_cfg: RunConfig) -> pd.DataFrame:
        return raw_sentences(input_columns(source, {"text": (run_cfg.data.text_column, "--text-column")},
                                           "A token-classification model"))

    def inputs_from_args(self, values: list[str], options: dict) -> pd.DataFrame:
        if not values:
            raise UserError("predict: no texts given.", "Pass texts as arguments or a file with --input.")
        frame = pd.DataFrame({"text": values})
        frame.attrs["input_columns"] = ["text"]
        return raw_sentences(frame)

    def line(self, row: dict, prediction: dict) -> str:
        """The text, then `TYPE [start:end] 'text' score` per entity."""
        found = "; ".join(f"{e['type']} [{e['start']}:{e['end']}] {e['text']!r} {e['score']:.2f}"
                          for e in prediction["entities"])
        return f"{row['text']}\t{found or '(no entities)'}"


def raw_sentences(frame: pd.DataFrame) -> pd.DataFrame:
    """Raw texts split into words (letter/digit runs and single punctuation marks) with their character spans."""
    words = [split_words(text) for text in frame["text"]]
    out = frame.assign(tokens=[w for w, _ in words], spans=[s for _, s in words])
    out.attrs = dict(frame.attrs)
    return out


def sentence_texts(frame: pd.DataFrame) -> tuple[list[str], list[list[tuple[int, int]]]]:
    """Each row's text and word spans: the raw text a row carries (`text`, `spans`, or `text` alone, split into
    words here), else its words joined."""
    if "spans" in frame:
        return frame["text"].tolist(), frame["spans"].tolist()
    if "tokens" not in frame:
        split = [split_words(text) for text in frame["text"]]
        return frame["text"].tolist(), [spans for _, spans in split]
    joined = [join_words(list(tokens)) for tokens in frame["tokens"]]
    return [t for t, _ in joined], [s for _, s in joined]
