"""Frozen-feature cache: where it applies, that cached training equals uncached training, resume, monitoring."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from conftest import tiny_config

from transferlab.config import build_config
from transferlab.pipeline import prepare_run, train_run
from transferlab.strategies.named import StrategyOptions, build_plan
from transferlab.training import feature_cache
from transferlab.training.feature_cache import CachePoint, build_phase_cache, cache_point
from transferlab.training.trainer import Trainer

TINY = {"data": {"max_train_examples": 16, "max_eval_examples": 8}, "model": {"max_length": 16, "head_dropout": 0.0}}


def make_trainer(root, strategy: str, cache: bool, callbacks=(), **training) -> Trainer:
    """A fp32 trainer on 16 reviews with every dropout off (so cached and uncached maths are the same)."""
    training = {"epochs": 2, "batch_size": 8, "log_every": 1, "precision": "fp32", "feature_cache": cache,
                **training}
    cfg = build_config(tiny_config(root, strategy={"name": strategy, "lr": 1e-4}, training=training, **TINY))
    set_seed(cfg.seed)
    prep = prepare_run(cfg)
    for module in prep.model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    encoded = [prep.task.encoded(frame) for frame in (prep.data.train, prep.data.eval)]
    return Trainer(prep.model, prep.task, prep.groups, prep.phases, *encoded, cfg.training,
                   cfg.seed, cfg.run_dir, Accelerator(), callbacks=callbacks, show_progress=False)


def records(trainer: Trainer, kind: str) -> list[dict]:
    return [r for r in trainer.history if r["kind"] == kind]


@pytest.fixture(scope="module")
def progressive_pair(tmp_path_factory):
    """progressive:1 (head on pooled features, then layer.5 on cached layer.4 states), uncached and cached."""
    runs = {}
    for cache in (False, True):
        trainer = make_trainer(tmp_path_factory.mktemp("cache"), "progressive:1", cache)
        trainer.train()
        runs[cache] = trainer
    return runs


def test_cache_point_follows_the_frozen_bottom(progressive_pair):
    model, groups = progressive_pair[True].model, progressive_pair[True].groups
    points = {}
    for strategy in ("feature-extraction", "freeze-bottom:4", "freeze-bottom:0", "freeze-attention", "full", "llrd"):
        (phase,) = build_plan(strategy, groups, StrategyOptions()).resolve(groups)
        points[strategy] = cache_point(model, groups, phase.lrs)
    assert points == {"feature-extraction": CachePoint(None), "freeze-bottom:4": CachePoint(4),
                      "freeze-bottom:0": None, "freeze-attention": None, "full": None, "llrd": None}


def test_cached_training_equals_uncached(progressive_pair):
    plain, cached = progressive_pair[False], progressive_pair[True]
    assert not records(plain, "cache")
    messages = [r["message"] for r in records(cached, "cache")]
    assert len(messages) == 2 and "pooled features" in messages[0] and "after layer.4" in messages[1]
    assert set(cached.state.extra["feature_cache"]) == {"0", "1"}
    losses = [[r["loss"] for r in records(t, kind)] for t in (plain, cached) for kind in ("train", "eval")]
    assert len(losses[0]) == 4 and len(losses[1]) == 2  # 2 steps per phase, one eval per phase
    assert losses[2] == pytest.approx(losses[0], abs=1e-4) and losses[3] == pytest.approx(losses[1], abs=1e-4)
    weights = plain.model.state_dict()
    for name, value in cached.model.state_dict().items():
        torch.testing.assert_close(value, weights[name], atol=1e-4, rtol=1e-4)
    # the head and layer.5 did train (so agreeing means something)
    change = records(plain, "monitor")[-1]["weight_change"]
    assert change["head"] > 1e-3 and change["layer.5.ffn"] > 1e-5


def test_resume_rebuilds_the_cache_and_ends_where_an_uninterrupted_run_ends(progressive_pair, tmp_path):
    class Killed(Exception):
        pass

    def kill_at_step_4(record, trainer):
        if record["kind"] == "train" and record["step"] == 4:
            raise Killed

    with pytest.raises(Killed):
        # checkpoints at step 2 (end of phase 1) and step 3 (inside phase 2): resume starts mid-phase
        make_trainer(tmp_path, "progressive:1", True, callbacks=(kill_at_step_4,), save_every=3).train()
    resumed = make_trainer(tmp_path, "progressive:1", True, save_every=3)
    resumed.train(resume=True)
    assert resumed.state.global_step == 4
    assert [r["step"] for r in records(resumed, "cache")] == [0, 2, 3]  # phase 2's cache recomputed on resume
    reference = progressive_pair[True].model.state_dict()
    for name, value in resumed.model.state_dict().items():
        torch.testing.assert_close(value, reference[name], atol=1e-5, rtol=1e-5)


def test_cache_too_big_is_skipped_with_a_message(progressive_pair, monkeypatch):
    trainer = progressive_pair[True]
    monkeypatch.setattr(feature_cache, "MAX_CACHE_BYTES", 1024)
    cache, line = build_phase_cache(trainer.model, trainer.groups, {"head"}, [trainer.train_set.features],
                                    trainer._cache_batches, None, trainer._autocast)
    assert cache is None and "skipped" in line and "uncached" in line


def test_progressive_run_end_to_end_with_weight_change(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="transferlab")
    cfg = build_config(tiny_config(tmp_path, strategy={"name": "progressive:1"},
                                   training={"epochs": 2, "batch_size": 8, "log_every": 1}, **TINY))
    doc = train_run(cfg, show_progress=False)
    assert [p["name"] for p in doc["plan"]] == ["head", "+ layer.5"] and doc["steps"] == 4
    assert 0 <= doc["eval"]["accuracy"] <= 1
    assert sum("frozen-feature cache:" in r.getMessage() for r in caplog.records) == 2
    metrics = json.loads((cfg.run_dir / "metrics.json").read_text())
    assert set(metrics["state"]["extra"]["feature_cache"]) == {"0", "1"}
    history = [json.loads(line) for line in (cfg.run_dir / "history.jsonl").read_text().splitlines()]
    monitors = [r for r in history if r["kind"] == "monitor"]
    assert [r["phase"] for r in monitors] == [0, 1] and [r["step"] for r in monitors] == [2, 4]
    first, last = monitors[0]["weight_change"], monitors[1]["weight_change"]
    assert first["head"] > 0 and first["layer.5.ffn"] == 0  # layer.5 is still frozen in phase 1
    assert last["layer.5.ffn"] > 0 and last["layer.5.attention"] > 0 and last["head"] > first["head"]
    assert last["layer.4.ffn"] == 0 and last["embeddings"] == 0
