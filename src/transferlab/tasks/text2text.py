"""Text-to-text: an encoder-decoder generates a target text from a source text (summaries, translations...).

The model is a plain Hugging Face seq2seq model, saved as such: a local T5-family directory, or an encoder
(BERT family, e.g. the bundled MiniLM) warm-started as encoder and decoder of an `EncoderDecoderModel`
(BERT2BERT: the decoder gets causal self-attention and new cross-attention layers). Evaluation generates
(greedy or beam search) and scores the texts with ROUGE-1/2/L and BLEU.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from transformers import (
    AutoConfig,
    AutoModelForSeq2SeqLM,
    DataCollatorForSeq2Seq,
    EncoderDecoderModel,
    PreTrainedTokenizerBase,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING

from transferlab.config import ModelConfig, RunConfig, Text2TextConfig
from transferlab.deploy.predictor import model_dir_of, run_max_length
from transferlab.errors import UserError
from transferlab.evaluation.metrics import generation_metrics
from transferlab.models.backbone import load_tokenizer, resolve_model_dir
from transferlab.models.groups import FAMILY_RULES, LayerGroups, layer_groups
from transferlab.tasks.base import RunData, Task
from transferlab.tasks.table import read_columns, saved_run_config, train_and_eval

# EncoderDecoderModel warns on every forward with labels that its loss changed in transformers 4.12 (2021);
# it concerns checkpoints trained before then, never a model built here.
warnings.filterwarnings("ignore", message="Version v4.12.0 introduces a better way", category=FutureWarning)

TASK_PARAMS = "text2text"  # key of config.task_specific_params that carries the prefix with the saved model


@dataclass
class Generated:
    """The evaluation output of a batch: teacher-forced loss and the generated token ids."""

    loss: torch.Tensor | None
    sequences: torch.Tensor


def _check_can_generate(model_dir: Path) -> AutoConfig:
    """The model's config if text2text can use the model: a seq2seq family with layer-group rules, or an
    encoder with rules whose family also exists as a decoder (causal LM with cross-attention)."""
    model_type = json.loads((model_dir / "config.json").read_text()).get("model_type", "unknown")
    fix = ("Use a local T5-family directory (an encoder-decoder), or a BERT-family encoder such as the bundled "
           "minilm, which is warm-started as encoder and decoder.")
    try:
        config = AutoConfig.from_pretrained(str(model_dir))
    except (ValueError, KeyError) as err:
        raise UserError(f"'{model_dir}' holds a '{model_type}' model, which cannot do text-to-text "
                        "(transformers does not know it as an encoder-decoder or an encoder).", fix) from err
    if config.is_encoder_decoder:
        # "encoder-decoder": a warm-started model saved by an earlier run, trained further
        usable = type(config) in MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING and (model_type in FAMILY_RULES
                                                                           or model_type == "encoder-decoder")
        kind = "encoder-decoder"
    else:
        usable = type(config) in MODEL_FOR_CAUSAL_LM_MAPPING and model_type in FAMILY_RULES
        kind = "encoder that can be warm-started as a decoder (a causal LM with cross-attention)"
    if not usable:
        raise UserError(f"The '{model_type}' model in '{model_dir}' cannot do text-to-text: transferlab needs an "
                        f"{kind} of a family with layer-group rules.", fix)
    return config


def warm_start(encoder_dir: Path, decoder_dir: Path, tokenizer: PreTrainedTokenizerBase) -> EncoderDecoderModel:
    """BERT2BERT: an EncoderDecoderModel whose encoder and decoder start from pretrained encoders; the decoder
    starts from [CLS] (or BOS) and stops at [SEP] (or EOS), so targets are tokenized like sources."""
    if decoder_dir != encoder_dir and load_tokenizer(decoder_dir).get_vocab() != tokenizer.get_vocab():
        raise UserError(f"The decoder '{decoder_dir}' has another vocabulary than the encoder '{encoder_dir}'.",
                        "Warm-start the decoder from a model with the encoder's tokenizer (or leave "
                        "text2text.decoder unset to use the encoder's model).")
    model = EncoderDecoderModel.from_encoder_decoder_pretrained(str(encoder_dir), str(decoder_dir))
    # EncoderDecoderModel never calls the encoder's pooler: an unused parameter gets no gradient
    if getattr(model.encoder, "pooler", None) is not None:
        model.encoder.pooler = None
    start = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    end = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    if start is None or end is None or tokenizer.pad_token_id is None:
        raise UserError(f"The tokenizer of '{encoder_dir}' has no start ([CLS]/BOS), end ([SEP]/EOS) or padding "
                        "token, which a warm-started decoder needs.", "Use a BERT-family encoder with its tokenizer.")
    for config in (model.config, model.generation_config):
        config.decoder_start_token_id, config.eos_token_id, config.pad_token_id = start, end, tokenizer.pad_token_id
    model.config.vocab_size = model.config.decoder.vocab_size
    return model


def _columns(options: Text2TextConfig) -> dict[str, tuple[str, str]]:
    return {"source": (options.source_column, "text2text.source_column"),
            "target": (options.target_column, "text2text.target_column")}


class Text2TextTask(Task):
    """Source and target columns, an optional task prefix (T5 style) before every source; ROUGE-L selects."""

    name = "text2text"
    metric = "rougeL"

    def __init__(self, options: Text2TextConfig):
        self.options = options
        self.tokenizer: PreTrainedTokenizerBase | None = None  # the one that encoded the features decodes outputs

    @classmethod
    def load_data(cls, cfg: RunConfig) -> RunData:
        columns = _columns(cfg.text2text)
        train, evaluation = train_and_eval(cfg, lambda source: read_columns(source, columns), stratify=False)
        return RunData(train, evaluation)

    @classmethod
    def for_data(cls, cfg: RunConfig, data: RunData) -> Text2TextTask:
        return cls(cfg.text2text)

    def build_model(self, model_dir: Path, model_cfg: ModelConfig) -> torch.nn.Module:
        config = _check_can_generate(model_dir)
        if config.is_encoder_decoder:
            model = AutoModelForSeq2SeqLM.from_pretrained(str(model_dir))
        else:
            decoder_dir = resolve_model_dir(self.options.decoder) if self.options.decoder else model_dir
            if _check_can_generate(decoder_dir).is_encoder_decoder:
                raise UserError(f"text2text.decoder '{decoder_dir}' is an encoder-decoder, not an encoder to "
                                "warm-start a decoder from.", "Name a BERT-family encoder, or leave it unset.")
            model = warm_start(model_dir, decoder_dir, load_tokenizer(model_dir))
        gen = model.generation_config
        gen.num_beams, gen.max_new_tokens = self.options.num_beams, self.options.max_target_length
        params = dict(getattr(model.config, "task_specific_params", None) or {})
        params[TASK_PARAMS] = {"prefix": self.options.prefix}
        model.config.task_specific_params = params
        model.config.task = self.name  # saved in config.json: what `predict` reads to pick the task
        return model

    def layer_groups(self, model: torch.nn.Module) -> LayerGroups:
        return replace(layer_groups(model, backbone_prefix=""), new_head=False)

    def encode(self, frame: pd.DataFrame, tokenizer: PreTrainedTokenizerBase, max_length: int) -> list[dict]:
        self.tokenizer = tokenizer
        sources = [self.options.prefix + text for text in frame["source"]]
        enc = tokenizer(sources, truncation=True, max_length=max_length, return_token_type_ids=False)
        # a BERT tokenizer starts every text with [CLS], which is the decoder's start token, not a target token
        lead = int(tokenizer("a")["input_ids"][0] in {tokenizer.cls_token_id, tokenizer.bos_token_id} - {None})
        targets = tokenizer(text_target=frame["target"].tolist(), truncation=True,
                            max_length=self.options.max_target_length + lead)["input_ids"]
        return [{"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i],
                 "labels": targets[i][lead:]} for i in range(len(frame))]

    def collate(self, features: list[dict], tokenizer: PreTrainedTokenizerBase) -> dict[str, torch.Tensor]:
        # pads labels with -100, which the loss ignores
        return DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)(features)

    def eval_forward(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> Generated:
        loss = model(**inputs).loss if "labels" in inputs else None
        sequences = model.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        return Generated(loss, sequences)

    def outputs(self, model_output: Generated, batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        # token ids padded to one width (the start token + max_target_length), so batches concatenate
        pad, width = self.tokenizer.pad_token_id, self.options.max_target_length + 1
        labels = batch["labels"].masked_fill(batch["labels"] == -100, pad)
        return {"generated": _pad_to(model_output.sequences, width, pad), "references": _pad_to(labels, width, pad)}

    def metrics(self, outputs: dict[str, np.ndarray]) -> dict:
        generated, references = (decode(self.tokenizer, torch.as_tensor(outputs[k])) for k in ("generated",
                                                                                               "references"))
        return generation_metrics(generated, references)


def _pad_to(ids: torch.Tensor, width: int, pad: int) -> np.ndarray:
    return torch.nn.functional.pad(ids, (0, width - ids.shape[1]), value=pad).cpu().numpy()


def decode(tokenizer: PreTrainedTokenizerBase, ids: torch.Tensor) -> list[str]:
    """Token ids (batch, length) to texts, without special tokens."""
    return [text.strip() for text in tokenizer.batch_decode(ids, skip_special_tokens=True,
                                                            clean_up_tokenization_spaces=True)]


class Text2TextPredictor:
    """A saved text2text model: generates with its saved generation config after its saved task prefix."""

    def __init__(self, path: str | Path, batch_size: int = 32, max_length: int | None = None):
        self.model_dir = model_dir_of(path)
        self.tokenizer = load_tokenizer(self.model_dir)
        self.model = AutoModelForSeq2SeqLM.from_pretrained(str(self.model_dir)).eval()
        self.prefix = (getattr(self.model.config, "task_specific_params", None) or {}).get(TASK_PARAMS, {}).get(
            "prefix", "")
        self.batch_size = batch_size
        self.max_length = max_length or run_max_length(self.model_dir)

    @torch.inference_mode()
    def generate(self, texts: list[str]) -> list[str]:
        """The generated text for each source text (the prefix is added here)."""
        results = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer([self.prefix + t for t in texts[start:start + self.batch_size]], truncation=True,
                                   max_length=self.max_length, padding=True, return_tensors="pt",
                                   return_token_type_ids=False)
            results += decode(self.tokenizer, self.model.generate(**batch))
        return results


def predict_rows(run: str | Path, texts: list[str]) -> list[dict]:
    """`transferlab predict` on a text2text model: the generated text, then the source text."""
    generated = Text2TextPredictor(run).generate(texts)
    return [{"generated": g, "text": t} for g, t in zip(generated, texts, strict=True)]


def evaluate_file(model_dir: Path, data: str) -> dict:
    """ROUGE and BLEU of a saved text2text model on a file of sources and targets, read and encoded as its run
    reads its eval data (columns, prefix, lengths)."""
    cfg = saved_run_config(model_dir)
    task = Text2TextTask(cfg.text2text)
    tokenizer = load_tokenizer(model_dir)
    features = task.encode(read_columns(data, _columns(cfg.text2text)), tokenizer, cfg.model.max_length)
    model = AutoModelForSeq2SeqLM.from_pretrained(str(model_dir))
    return task.metrics(task.run_model(model, tokenizer, features))
