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
from pydantic import Field
from transformers import (
    AutoConfig,
    AutoModelForSeq2SeqLM,
    DataCollatorForSeq2Seq,
    EncoderDecoderModel,
    PreTrainedTokenizerBase,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING

from transferlab.backbones import open_backbone
from transferlab.backbones.base import Backbone, Processor
from transferlab.backbones.groups import LayerGroups
from transferlab.backbones.text import ENCODER_RULES, load_tokenizer
from transferlab.config import ConfigSection, ModelConfig, RunConfig, register_section
from transferlab.errors import UserError
from transferlab.evaluation.metrics import generation_metrics
from transferlab.models.build import dropout_overrides
from transferlab.tasks.base import RunData, Task
from transferlab.tasks.table import input_columns, read_columns, text_inputs, train_and_eval

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
        usable = type(config) in MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING and (model_type in ENCODER_RULES
                                                                           or model_type == "encoder-decoder")
        kind = "encoder-decoder"
    else:
        usable = type(config) in MODEL_FOR_CAUSAL_LM_MAPPING and model_type in ENCODER_RULES
        kind = "encoder that can be warm-started as a decoder (a causal LM with cross-attention)"
    if not usable:
        raise UserError(f"The '{model_type}' model in '{model_dir}' cannot do text-to-text: transferlab needs an "
                        f"{kind} of a family with layer-group rules.", fix)
    return config


def warm_start(encoder_dir: Path, decoder_dir: Path, tokenizer: PreTrainedTokenizerBase,
               dropout: float | None = None) -> EncoderDecoderModel:
    """BERT2BERT: an EncoderDecoderModel whose encoder and decoder start from pretrained encoders; the decoder
    starts from [CLS] (or BOS) and stops at [SEP] (or EOS), so targets are tokenized like sources. `dropout`
    replaces every dropout rate of both (None: their own)."""
    if decoder_dir != encoder_dir and load_tokenizer(decoder_dir).get_vocab() != tokenizer.get_vocab():
        raise UserError(f"The decoder '{decoder_dir}' has another vocabulary than the encoder '{encoder_dir}'.",
                        "Warm-start the decoder from a model with the encoder's tokenizer (or leave "
                        "text2text.decoder unset to use the encoder's model).")
    rates = {f"{side}_{key}": rate for side, where in (("encoder", encoder_dir), ("decoder", decoder_dir))
             for key, rate in dropout_overrides(AutoConfig.from_pretrained(str(where)).to_dict(), dropout).items()}
    model = EncoderDecoderModel.from_encoder_decoder_pretrained(str(encoder_dir), str(decoder_dir), **rates)
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


class Text2TextConfig(ConfigSection):
    """Text-to-text (task: text2text): an encoder-decoder model generates the target from the source."""

    source_column: str = "source"
    target_column: str = "target"
    prefix: str = Field("", description="prepended to every source (T5 style), e.g. 'summarize: '")
    max_target_length: int = Field(64, ge=1, le=4096, description="target tokens kept in training and generated")
    num_beams: int = Field(1, ge=1, description="1 = greedy decoding, more = beam search")
    decoder: str | None = Field(None, description="an encoder-only model.name is warm-started as an encoder-decoder; "
                                "its decoder from this model ('minilm' or a dir); None = model.name")


register_section("text2text", Text2TextConfig)


def _columns(options: Text2TextConfig) -> dict[str, tuple[str, str]]:
    return {"source": (options.source_column, "text2text.source_column"),
            "target": (options.target_column, "text2text.target_column")}


class Text2TextTask(Task):
    """Source and target columns, an optional task prefix (T5 style) before every source; ROUGE-L selects."""

    name = "text2text"
    pipeline_tag = "text2text-generation"
    metric = "rougeL"
    exportable = False  # generation is a loop of forward passes, not one graph
    backbone_prefix = ""  # a Hugging Face seq2seq model: its own LM head is the head

    def __init__(self, options: Text2TextConfig, processor: Processor):
        super().__init__(processor)
        self.options = options

    @classmethod
    def load_data(cls, cfg: RunConfig) -> RunData:
        columns = _columns(cfg.section("text2text"))
        train, evaluation = train_and_eval(cfg, lambda source: read_columns(source, columns), stratify=False)
        return RunData(train, evaluation)

    @classmethod
    def for_data(cls, cfg: RunConfig, data: RunData, processor: Processor) -> Text2TextTask:
        return cls(cfg.section("text2text"), processor)

    @classmethod
    def for_saved(cls, model_dir: Path, config: dict, run_cfg: RunConfig, processor: Processor) -> Text2TextTask:
        # the prefix and generation settings travel with the model; the run config has the rest (columns)
        prefix = (config.get("task_specific_params") or {}).get(TASK_PARAMS, {}).get("prefix", "")
        return cls(run_cfg.section("text2text").model_copy(update={"prefix": prefix}), processor)

    def build_model(self, backbone: Backbone, model_cfg: ModelConfig) -> torch.nn.Module:
        model_dir = backbone.model_dir
        config = _check_can_generate(model_dir)
        if config.is_encoder_decoder:
            model = AutoModelForSeq2SeqLM.from_pretrained(
                str(model_dir), **dropout_overrides(config.to_dict(), model_cfg.backbone_dropout))
        else:
            decoder_dir = open_backbone(self.options.decoder).model_dir if self.options.decoder else model_dir
            if _check_can_generate(decoder_dir).is_encoder_decoder:
                raise UserError(f"text2text.decoder '{decoder_dir}' is an encoder-decoder, not an encoder to "
                                "warm-start a decoder from.", "Name a BERT-family encoder, or leave it unset.")
            model = warm_start(model_dir, decoder_dir, self.processor.tokenizer, model_cfg.backbone_dropout)
        gen = model.generation_config
        gen.num_beams, gen.max_new_tokens = self.options.num_beams, self.options.max_target_length
        params = dict(getattr(model.config, "task_specific_params", None) or {})
        params[TASK_PARAMS] = {"prefix": self.options.prefix}
        model.config.task_specific_params = params
        model.config.task = self.name  # saved in config.json: what `predict` reads to pick the task
        return model

    def load_model(self, model_dir: Path) -> torch.nn.Module:
        return AutoModelForSeq2SeqLM.from_pretrained(str(model_dir)).eval()

    def layer_groups(self, model: torch.nn.Module) -> LayerGroups:
        return replace(super().layer_groups(model), new_head=False)

    def encode(self, frame: pd.DataFrame) -> list[dict]:
        tokenizer, max_length = self.processor.tokenizer, self.processor.max_length
        sources = [self.options.prefix + text for text in frame["source"]]
        enc = tokenizer(sources, truncation=True, max_length=max_length, return_token_type_ids=False)
        if "target" not in frame:
            return [{"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i]}
                    for i in range(len(frame))]
        # a BERT tokenizer starts every text with [CLS], which is the decoder's start token, not a target token
        lead = int(tokenizer("a")["input_ids"][0] in {tokenizer.cls_token_id, tokenizer.bos_token_id} - {None})
        targets = tokenizer(text_target=frame["target"].tolist(), truncation=True,
                            max_length=self.options.max_target_length + lead)["input_ids"]
        return [{"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i],
                 "labels": targets[i][lead:]} for i in range(len(frame))]

    def collate(self, features: list[dict]) -> dict[str, torch.Tensor]:
        # pads labels with -100, which the loss ignores; unlabelled inputs get no `labels` key (not labels=None)
        batch = DataCollatorForSeq2Seq(self.processor.tokenizer, label_pad_token_id=-100)(features)
        return {k: v for k, v in batch.items() if v is not None}

    def eval_forward(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> Generated:
        loss = model(**inputs).loss if "labels" in inputs else None
        sequences = model.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        return Generated(loss, sequences)

    def outputs(self, model_output: Generated, batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        out = {"generated": model_output.sequences.cpu().numpy()}
        if "labels" in batch:
            out["references"] = batch["labels"].cpu().numpy()
        return out

    def texts(self, ids: np.ndarray) -> list[str]:
        """Token ids (rows padded with -100 or the pad token) to texts, without special tokens."""
        ids = torch.as_tensor(ids)
        return decode(self.processor.tokenizer, ids.masked_fill(ids < 0, self.processor.tokenizer.pad_token_id))

    def metrics(self, outputs: dict[str, np.ndarray], frame: pd.DataFrame) -> dict:
        return generation_metrics(self.texts(outputs["generated"]), self.texts(outputs["references"]))

    def decode(self, outputs: dict[str, np.ndarray], frame: pd.DataFrame) -> list[dict]:
        return [{"generated": text} for text in self.texts(outputs["generated"])]

    def read_labelled(self, source: str, run_cfg: RunConfig) -> pd.DataFrame:
        return read_columns(source, _columns(run_cfg.section("text2text")))

    @property
    def input_fields(self) -> list[str]:
        return ["source"]

    def read_inputs(self, source: Path, run_cfg: RunConfig) -> pd.DataFrame:
        column = run_cfg.section("text2text").source_column
        return input_columns(source, {"source": (column, "--set text2text.source_column=")}, "A text2text model")

    def inputs_from_args(self, values: list[str], options: dict) -> pd.DataFrame:
        return text_inputs(values, 1, ("source",))

    def line(self, row: dict, prediction: dict) -> str:
        return f"{prediction['generated']}\t{row['source']}"


def decode(tokenizer, ids: torch.Tensor) -> list[str]:
    """Token ids (batch, length) to texts, without special tokens."""
    return [text.strip() for text in tokenizer.batch_decode(ids, skip_special_tokens=True,
                                                            clean_up_tokenization_spaces=True)]
