"""Strategies compile to the plans they promise: phases, learning groups, lrs, ratios; bad plans are refused."""

from __future__ import annotations

from dataclasses import replace

import pytest
import yaml
from typer.testing import CliRunner

from transferlab.backbones import layer_groups, open_backbone
from transferlab.config import ModelConfig, build_config, load_yaml
from transferlab.errors import UserError
from transferlab.strategies.named import FASTAI_DECAY, HEAD_LR, StrategyOptions, build_plan, plan_for_config
from transferlab.tasks.classification import ClassificationTask

LAYERS = [f"layer.{i}.{part}" for i in range(6) for part in ("attention", "ffn")]


@pytest.fixture(scope="module")
def groups():
    backbone = open_backbone("minilm")
    model = ClassificationTask(["negative", "positive"], backbone.processor).build_model(backbone, ModelConfig())
    return layer_groups(model)


def compile_plan(groups, strategy, **options):
    return build_plan(strategy, groups, StrategyOptions(**options)).resolve(groups)


@pytest.mark.parametrize("strategy, body_lr", [("full", 3e-5), ("freeze-bottom:2", 5e-5), ("freeze-attention", 1e-4)])
def test_a_new_head_learns_faster_than_the_pretrained_body(groups, strategy, body_lr):
    (phase,) = compile_plan(groups, strategy)
    assert phase.lrs["head"] == HEAD_LR == 1e-3 and phase.lrs["layer.5.ffn"] == body_lr
    assert compile_plan(groups, strategy, head_lr=2e-4)[0].lrs["head"] == 2e-4
    pretrained_head = replace(groups, new_head=False)  # a seq2seq LM head: it keeps the body's lr
    assert compile_plan(pretrained_head, strategy, lr=7e-5)[0].lrs["head"] == 7e-5


def test_progressive_unfreezes_one_layer_per_phase_from_the_top(groups):
    phases = compile_plan(groups, "progressive", epochs=3.5)
    assert len(phases) == 7  # head, then the 6 encoder layers one by one
    assert phases[0].lrs == {"head": 1e-3}
    assert phases[1].lrs == {"layer.5.attention": 1e-4, "layer.5.ffn": 1e-4, "head": 1e-4}
    assert set(phases[-1].lrs) == set(LAYERS) | {"head"}  # embeddings stay frozen unless asked
    ratios = [p.trainable_ratio for p in phases]
    assert ratios == sorted(ratios) and ratios[0] < 0.01 and ratios[-1] < 0.5
    assert sum(p.phase.epochs for p in phases) == pytest.approx(3.5, abs=1e-3)
    assert [p.phase.name for p in phases[:3]] == ["head", "+ layer.5", "+ layer.4"]


def test_progressive_depth_lrs_epochs_and_embeddings(groups):
    assert len(compile_plan(groups, "progressive:2")) == 3
    assert len(compile_plan(groups, "progressive", depth=2)) == 3
    assert compile_plan(groups, "progressive:0")[0].lrs == {"head": 1e-3}
    phases = compile_plan(groups, "progressive", unfreeze_embeddings=True, phase_lrs=[2e-3, 5e-4, 1e-4],
                          epochs_per_phase=[2.0])
    assert len(phases) == 8 and phases[-1].trainable_ratio == 1.0 and phases[-1].phase.name == "+ embeddings"
    assert [set(p.lrs.values()) for p in phases[:4]] == [{2e-3}, {5e-4}, {1e-4}, {1e-4}]  # the last lr repeats
    assert all(p.phase.epochs == 2.0 for p in phases)
    assert compile_plan(groups, "progressive:1", lr=3e-5, head_lr=3e-3)[1].lrs["layer.5.ffn"] == 3e-5


def test_llrd_decays_by_layer_with_embeddings_lowest(groups):
    (phase,) = compile_plan(groups, "llrd")
    assert phase.trainable_ratio == 1.0
    for i in range(6):
        assert phase.lrs[f"layer.{i}.attention"] == pytest.approx(1e-4 * 0.8 ** (5 - i))
    assert phase.lrs["head"] == 1e-4
    assert phase.lrs["embeddings"] == pytest.approx(1e-4 * 0.8**6) == min(phase.lrs.values())
    (fastai,) = compile_plan(groups, "llrd:fastai", lr=2e-4)
    assert fastai.lrs["layer.4.ffn"] == pytest.approx(2e-4 / 2.6)
    (custom,) = compile_plan(groups, "discriminative:0.5", lr=1e-4, head_lr=1e-3)
    assert custom.lrs["layer.3.ffn"] == pytest.approx(1e-4 / 4) and custom.lrs["head"] == 1e-3
    assert compile_plan(groups, "llrd", decay=0.9)[0].lrs["layer.4.ffn"] == pytest.approx(9e-5)


def test_gradual_is_progressive_with_discriminative_rates(groups):
    phases = compile_plan(groups, "gradual:3")
    assert len(phases) == 4 and phases[0].lrs == {"head": 1e-3}
    third = phases[2].lrs
    assert set(third) == {"layer.4.attention", "layer.4.ffn", "layer.5.attention", "layer.5.ffn", "head"}
    assert third["layer.5.ffn"] == third["head"] == 1e-4
    assert third["layer.4.ffn"] == pytest.approx(1e-4 * FASTAI_DECAY)
    assert phases[3].lrs["layer.3.ffn"] == pytest.approx(1e-4 * FASTAI_DECAY**2)


def test_custom_plan_from_yaml(groups, tmp_path):
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump({
        "training": {"warmup": 0.1, "epochs": 9},
        "strategy": {"phases": [
            {"name": "warm head", "epochs": 1, "lrs": {"head": "1e-3"}},
            {"epochs": 2, "lrs": {"layer.4-5.ffn": 5e-5, "head": 1e-4}, "schedule": "cosine", "warmup": 0},
        ]},
    }))
    cfg = build_config(load_yaml(path), str(path))
    assert cfg.strategy.name == "custom"  # phases alone ask for a custom plan
    phases = plan_for_config(cfg, groups).resolve(groups)
    assert [p.phase.name for p in phases] == ["warm head", "phase 2"]
    assert phases[0].lrs == {"head": 1e-3} and phases[0].phase.warmup == 0.1  # inherits training.warmup
    assert phases[1].lrs == {"layer.4.ffn": 5e-5, "layer.5.ffn": 5e-5, "head": 1e-4}
    assert (phases[1].phase.schedule, phases[1].phase.warmup, phases[1].phase.epochs) == ("cosine", 0, 2)


def custom_cfg(phases, **strategy):
    return build_config({"strategy": {"phases": phases, **strategy}})


@pytest.mark.parametrize(("phases", "strategy", "message"), [
    ([{"lrs": {"layer.9": 1e-4}}], {}, "Groups that exist: embeddings, layer.0.attention"),
    ([{"lrs": {"head": 0}}], {}, "lr 0"),
    ([{"lrs": {"head": -1e-3}}], {}, "must be > 0"),
    ([], {}, "empty list of phases"),
    ([{"lrs": {}}], {}, "no group a learning rate"),
    ([{"lrs": {"head": 1e-3}}], {"name": "full"}, "Set strategy.name to 'custom'"),
])
def test_bad_custom_phases_are_user_errors(groups, phases, strategy, message):
    with pytest.raises(UserError, match=message):
        plan_for_config(custom_cfg(phases, **strategy), groups).resolve(groups)


@pytest.mark.parametrize(("strategy", "options", "message"), [
    ("warp-speed", {}, "progressive\\[:DEPTH\\].*llrd\\[:DECAY\\|fastai\\]"),
    ("progressive:9", {}, "has 6"),
    ("progressive:two", {}, "not a whole number"),
    ("gradual:3", {"unfreeze_embeddings": True}, "frozen layers"),
    ("llrd:1.5", {}, "outside \\(0, 1\\]"),
    ("llrd:slow", {}, "neither a number nor a preset"),
    ("full:3", {}, "takes no argument"),
    ("custom", {}, "no strategy.phases"),
    ("progressive:2", {"phase_lrs": [1e-3, 1e-4, 1e-4, 1e-5]}, "4 values but 'progressive' has 3 phases"),
])
def test_bad_strategies_are_user_errors(groups, strategy, options, message):
    with pytest.raises(UserError, match=message):
        compile_plan(groups, strategy, **options)


def test_bad_strategy_config_values_are_user_errors():
    for strategy in ({"decay": 2}, {"phases": [{"lrs": {"head": 1e-3}, "lr": 1}]}, {"epochs_per_phase": [0]}):
        with pytest.raises(UserError, match="strategy"):
            build_config({"strategy": strategy})


@pytest.fixture(scope="module")
def cli():
    from transferlab import cli

    cli._register_commands()
    return cli.app


def test_plan_command_prints_phases_and_cache(cli, tmp_path, monkeypatch):
    from transferlab.commands import run as run_commands

    monkeypatch.setattr(run_commands.console, "width", 250)
    result = CliRunner().invoke(cli, ["plan", "--strategy", "progressive:2", "--epochs", "3"])
    assert result.exit_code == 0, result.output
    for text in ("1 head", "head @ 1.0e-03", "2 + layer.5", "layer.5 @ 1.0e-04", "3 + layer.4", "layer.4-5 @ 1.0e-04",
                 "0.65%", "phase 1: frozen-feature cache: pooled features",
                 "phase 3: frozen-feature cache: hidden states after layer.3"):
        assert text in result.output
    path = tmp_path / "custom.yaml"
    path.write_text(yaml.safe_dump({"strategy": {"phases": [{"name": "ffn top", "lrs": {"layer.5.ffn": 2e-5}}]}}))
    result = CliRunner().invoke(cli, ["plan", "--config", str(path)])
    assert result.exit_code == 0, result.output
    assert "plan: custom" in result.output and "layer.5.ffn @ 2.0e-05" in result.output
    result = CliRunner().invoke(cli, ["plan", "--strategy", "nope"])
    assert isinstance(result.exception, UserError) and "progressive" in str(result.exception)
