"""Saved models in the form the Hugging Face ecosystem loads with no transferlab code.

Where a transferlab task model is, weight for weight, one of transformers' own classes (a token classifier or
extractive QA head on a BERT-family encoder, a classifier on the pooler output), it is saved as that class:
`BertForTokenClassification`, `BertForQuestionAnswering`, ... with the backbone's config type, so
`transformers.pipeline(task, model=RUN/model)` needs nothing else. The task fields transferlab needs (task name,
window stride, ...) ride along in the config, listed under `transferlab_fields`, and `load_task_model` reads the
directory back into the transferlab class. Every other model is saved as the transferlab class, which
`import transferlab` registers with the Auto classes (models/auto.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn
from transformers import (
    MODEL_FOR_QUESTION_ANSWERING_MAPPING,
    MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING,
    MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING,
    PretrainedConfig,
    PreTrainedModel,
)

from transferlab.models.baselines import BaselineConfig, BaselineForSequenceClassification
from transferlab.models.modeling_transferlab import (
    TransferlabConfig,
    TransferlabForQuestionAnswering,
    TransferlabForSequenceClassification,
    TransferlabForTokenClassification,
)

FIELDS_KEY = "transferlab_fields"  # config.json: which of its keys are transferlab's, not the backbone's
# transferlab class -> (the Auto mapping of its transformers counterparts, its head's weight names -> theirs)
COUNTERPARTS = {
    TransferlabForSequenceClassification: (MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING,
                                           {"head.classifier.": "classifier."}),
    TransferlabForTokenClassification: (MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING, {}),
    TransferlabForQuestionAnswering: (MODEL_FOR_QUESTION_ANSWERING_MAPPING, {}),
}
_LABEL_KEYS = ("id2label", "label2id", "problem_type")


def _own_fields(config: TransferlabConfig) -> dict:
    """The transferlab fields of a task model's config (head, task options), without the backbone's."""
    skip = {"backbone", "model_type", "architectures", "auto_map", "transformers_version", *_LABEL_KEYS}
    return {k: v for k, v in config.to_diff_dict().items() if k not in skip}


def _rename(state: dict[str, torch.Tensor], names: dict[str, str]) -> dict[str, torch.Tensor]:
    renamed = {}
    for key, value in state.items():
        for old, new in names.items():
            if key.startswith(old):
                key = new + key[len(old):]
                break
        renamed[key] = value
    return renamed


def _standard_config(model: PreTrainedModel, counterpart: type[PreTrainedModel]) -> PretrainedConfig:
    config = model.config
    own = _own_fields(config)
    backbone = config.backbone_config()
    fields = {**backbone.to_dict(), **own, FIELDS_KEY: sorted(own)}
    fields.update({k: getattr(config, k) for k in _LABEL_KEYS})
    fields.pop("model_type", None)
    fields["architectures"] = [counterpart.__name__]
    if "classifier_dropout" in fields:  # the head's dropout, where the counterpart reads one
        fields["classifier_dropout"] = config.head_dropout
    return type(backbone)(**fields)


def standard_form(model: nn.Module) -> PreTrainedModel | None:
    """The same network as a transformers class with the same weights, or None where no class computes it."""
    if type(model) not in COUNTERPARTS:
        return None
    mapping, head_names = COUNTERPARTS[type(model)]
    try:
        counterpart = mapping[type(model.config.backbone_config())]
    except KeyError:
        return None
    config = _standard_config(model, counterpart)
    state = _rename(model.state_dict(), {"backbone.": f"{counterpart.base_model_prefix}.", **head_names})
    with torch.device("meta"):  # shapes only: does every weight have its place, and nothing more?
        expected = counterpart(config).state_dict()
    if set(state) != set(expected) or any(state[k].shape != expected[k].shape for k in state):
        return None
    standard = counterpart(config)
    standard.load_state_dict(state)
    return standard.eval()


def load_task_model(model_dir: Path, model_class: type[PreTrainedModel]) -> PreTrainedModel:
    """A saved task model as the transferlab class `model_class`, whichever form it was saved in."""
    config = json.loads((model_dir / "config.json").read_text())
    # saved in their own class, not a transformers counterpart: the head models and the fitted baselines
    own_classes = {TransferlabConfig.model_type: model_class,
                   BaselineConfig.model_type: BaselineForSequenceClassification}
    if config.get("model_type") in own_classes:
        return own_classes[config["model_type"]].from_pretrained(str(model_dir)).eval()
    own = {k: config[k] for k in config.get(FIELDS_KEY, []) if k in config}
    labels = {k: config[k] for k in _LABEL_KEYS if k in config}
    backbone = {k: v for k, v in config.items() if k not in {*own, *labels, FIELDS_KEY, "architectures"}}
    if "id2label" in labels:  # JSON keys are strings; the config wants the ids back
        labels["id2label"] = {int(k): v for k, v in labels["id2label"].items()}
    model = model_class(TransferlabConfig(backbone=backbone, **own, **labels))
    counterpart_prefix = _prefix_of(config)
    _, head_names = COUNTERPARTS[model_class]
    reverse = {new: old for old, new in head_names.items()}
    state = _rename(load_file(str(model_dir / "model.safetensors")), {f"{counterpart_prefix}.": "backbone.", **reverse})
    model.load_state_dict(state)
    return model.eval()


def _prefix_of(config: dict) -> str:
    """The base-model prefix of the transformers class a standard config names (bert, distilbert, ...)."""
    import transformers

    return getattr(transformers, config["architectures"][0]).base_model_prefix
