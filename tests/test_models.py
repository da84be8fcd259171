"""Models: layer groups by introspection (bundled BERT + tiny random families), pooling, weights, strategies."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from transformers import DistilBertConfig, ElectraConfig, GPT2Config, RobertaConfig, T5Config

from transferlab.backbones import layer_groups, open_backbone
from transferlab.errors import UserError
from transferlab.models.build import build_task_model, default_pooling
from transferlab.models.modeling_transferlab import TransferlabConfig, TransferlabForSequenceClassification
from transferlab.strategies.named import StrategyOptions, build_plan

TINY = {"vocab_size": 99, "max_position_embeddings": 64}
FAMILIES = {
    "distilbert": DistilBertConfig(dim=16, n_layers=2, n_heads=2, hidden_dim=32, **TINY),
    "roberta": RobertaConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                             **TINY),
    # embedding_size != hidden_size gives ELECTRA its extra embeddings_project layer
    "electra": ElectraConfig(embedding_size=8, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=32, **TINY),
    "t5": T5Config(vocab_size=99, d_model=16, d_kv=8, d_ff=32, num_layers=2, num_heads=2),
}


@pytest.fixture(scope="module")
def minilm_dir():
    return open_backbone("minilm").model_dir


@pytest.fixture(scope="module")
def minilm(minilm_dir):
    return build_task_model(open_backbone("minilm"), TransferlabForSequenceClassification, num_labels=2,
                            pooling=default_pooling(minilm_dir))


def random_model(backbone_config, pooling: str = "mean") -> TransferlabForSequenceClassification:
    torch.manual_seed(0)
    config = TransferlabConfig(backbone=backbone_config.to_dict(), num_labels=3, pooling=pooling)
    return TransferlabForSequenceClassification(config)


def assert_partition(model, groups) -> None:
    """Every parameter of the model is in exactly one group."""
    grouped = [name for group in groups for name, _ in group.params]
    assert len(grouped) == len(set(grouped))
    assert sorted(grouped) == sorted(name for name, _ in model.named_parameters())
    assert groups.total == sum(p.numel() for p in model.parameters())


def expected_names(num_layers: int, extra: tuple[str, ...] = ()) -> list[str]:
    layers = [f"layer.{i}.{part}" for i in range(num_layers) for part in ("attention", "ffn")]
    return ["embeddings", *layers, *extra, "head"]


def test_bundled_bert_groups(minilm):
    groups = layer_groups(minilm)
    assert_partition(minilm, groups)
    assert groups.num_layers == 6
    # mean pooling: the untrained-for-this-use pooler is dropped, so it is no group
    assert groups.names == expected_names(6)
    assert all(".attention." in n for n, _ in groups["layer.3.attention"].params)
    assert all(".intermediate." in n or ".output." in n for n, _ in groups["layer.3.ffn"].params)
    assert {n.split(".")[1] for n, _ in groups["head"].params} == {"dense", "classifier"}


def test_text_batches_pad_to_a_multiple_of_8_but_never_past_max_length_nor_a_lone_input():
    processor = open_backbone("minilm", 20).processor
    features = [{"input_ids": [101] + [7592] * n + [102], "attention_mask": [1] * (n + 2)} for n in (3, 9)]
    batch = processor.pad(features)
    assert batch["input_ids"].shape == (2, 16) and batch["attention_mask"].sum().item() == 16
    longest = [{"input_ids": [101] + [7592] * n + [102], "attention_mask": [1] * (n + 2)} for n in (16, 3)]
    assert processor.pad(longest)["input_ids"].shape == (2, 20)  # 24 would pass max_length
    assert processor.pad(features[:1])["input_ids"].shape == (1, 5)  # a lone input is not padded


@pytest.mark.parametrize("family", FAMILIES)
def test_random_family_groups(family):
    pooling = "pooler" if family == "roberta" else "mean"
    model = random_model(FAMILIES[family], pooling)
    groups = layer_groups(model)
    assert_partition(model, groups)
    assert groups.num_layers == 2
    extra = {"roberta": ("pooler",), "t5": ("layer.last.ffn",)}.get(family, ())
    assert groups.names == expected_names(2, extra)
    if family == "electra":
        assert any("embeddings_project" in n for n, _ in groups["embeddings"].params)


def test_unknown_architecture_lists_modules():
    model = random_model(GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=99, n_positions=32))
    with pytest.raises(UserError) as caught:
        layer_groups(model)
    message = str(caught.value)
    assert "'gpt2'" in message
    assert all(module in message for module in ("wte", "wpe", "h", "ln_f"))
    assert "bert" in message  # and names the supported families


def test_default_pooling_follows_sentence_transformers_config(minilm_dir, minilm, tmp_path):
    assert json.loads((minilm_dir / "1_Pooling" / "config.json").read_text())["pooling_mode_mean_tokens"]
    assert default_pooling(minilm_dir) == "mean"
    assert minilm.config.pooling == "mean"
    assert default_pooling(tmp_path) == "cls"  # no 1_Pooling: the [CLS] vector
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(
        {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}))
    assert default_pooling(tmp_path) == "cls"


def test_pretrained_weights_loaded_exactly(minilm_dir, minilm):
    state = minilm.backbone.state_dict()
    with safe_open(str(minilm_dir / "model.safetensors"), "pt") as f:
        names = [n for n in f.keys() if n in state]
        assert len(names) >= 100
        for name in ("embeddings.word_embeddings.weight", "encoder.layer.0.attention.self.query.weight",
                     "encoder.layer.5.output.dense.weight"):
            assert torch.equal(state[name], f.get_tensor(name))
        assert all(torch.equal(state[n], f.get_tensor(n)) for n in names)


def _ratio(model, keep) -> float:
    sizes = {n: p.numel() for n, p in model.named_parameters()}
    return sum(s for n, s in sizes.items() if keep(n)) / sum(sizes.values())


def _is_ffn(name: str) -> bool:
    return ".intermediate." in name or (".output." in name and ".attention." not in name)


@pytest.mark.parametrize(("strategy", "learns", "keep"), [
    ("full", expected_names(6), lambda n: True),
    ("feature-extraction", ["head"], lambda n: n.startswith("head.")),
    ("freeze-bottom:2", [f"layer.{i}.{p}" for i in range(2, 6) for p in ("attention", "ffn")] + ["head"],
     lambda n: n.startswith("head.") or any(f"encoder.layer.{i}." in n for i in range(2, 6))),
    ("freeze-attention", [f"layer.{i}.ffn" for i in range(6)] + ["head"],
     lambda n: n.startswith("head.") or _is_ffn(n)),
])
def test_strategies_compile_to_expected_groups(minilm, strategy, learns, keep):
    groups = layer_groups(minilm)
    (phase,) = build_plan(strategy, groups, StrategyOptions(epochs=1)).resolve(groups)
    assert list(phase.lrs) == learns
    # the ratio, counted independently from parameter names
    assert phase.trainable_ratio == pytest.approx(_ratio(minilm, keep), abs=1e-9)
    assert phase.trainable_params == sum(groups.size(g) for g in learns)


def test_freeze_attention_ratio_on_minilm(minilm):
    groups = layer_groups(minilm)
    (phase,) = build_plan("freeze-attention", groups, StrategyOptions()).resolve(groups)
    # the 6 FFN blocks hold about a third of MiniLM's parameters (embeddings are half)
    assert 0.30 < phase.trainable_ratio < 0.33


def test_freeze_bottom_beyond_depth_is_a_user_error(minilm):
    groups = layer_groups(minilm)
    with pytest.raises(UserError, match="6 encoder layers"):
        build_plan("freeze-bottom:7", groups, StrategyOptions())


@pytest.mark.parametrize("n", [0, 1, 2])
def test_freeze_bottom_on_t5_keeps_final_norm_with_top_layer(n):
    groups = layer_groups(random_model(FAMILIES["t5"]))
    (phase,) = build_plan(f"freeze-bottom:{n}", groups, StrategyOptions()).resolve(groups)
    trainable_layers = [g for g in phase.lrs if g.startswith("layer.")]
    assert ("layer.last.ffn" in trainable_layers) == (n < 2)
    assert [g for g in trainable_layers if g != "layer.last.ffn"] == \
        [f"layer.{i}.{p}" for i in range(n, 2) for p in ("attention", "ffn")]
