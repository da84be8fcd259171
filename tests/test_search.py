"""`search`: search spaces from flags and YAML, their validation, pruning, and a real two-trial study."""

from __future__ import annotations

import json
import sys

import optuna
import pandas as pd
import pytest
from conftest import tiny_config

from transferlab.cli import main
from transferlab.config import build_config, load_yaml
from transferlab.errors import UserError
from transferlab.lab.search import PruneOnEval, Range, check_space, load_space, parse_flag, run_search

BASE = build_config(tiny_config("runs")).model_dump(mode="json")


def test_flags_make_ranges_choices_and_fixed_values():
    assert parse_flag("lr", "1e-5:1e-3") == Range(low=1e-5, high=1e-3, log=True)
    assert parse_flag("epochs", "1:3").is_int
    assert not parse_flag("warmup", "0:0.2").is_int
    assert parse_flag("batch_size", "16,32") == [16, 32]
    assert parse_flag("strategy", "freeze-bottom:4,llrd") == ["freeze-bottom:4", "llrd"]
    assert parse_flag("dropout", "0.1") == [0.1]


def test_space_from_yaml(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("lr: {low: 1.0e-5, high: 1.0e-3, log: true}\nbatch_size: [8, 16]\nepochs: 2\n"
                    "training.schedule: [linear, cosine]\n")
    space = load_space(path)
    assert space == {"lr": Range(low=1e-5, high=1e-3, log=True), "batch_size": [8, 16], "epochs": [2],
                     "training.schedule": ["linear", "cosine"]}
    check_space(space, BASE, str(path))


@pytest.mark.parametrize(("space", "message"), [
    ({}, "empty"),
    ({"batch_size": []}, "empty list"),
    ({"epochs": Range(low=3, high=1)}, "no valid value"),
    ({"warmup": Range(low=1.0, high=2.0)}, "'warmup' = 1.0 is not a valid value"),
    ({"dropout": [0.1, 1.5]}, "'dropout' = 1.5"),
    ({"lr": Range(low=0, high=1e-3, log=True)}, "log scale"),
    ({"momentum": [0.9]}, "unknown parameter 'momentum'"),
    ({"training.nonsense": [1]}, "nonsense"),
])
def test_spaces_without_valid_values_are_user_errors(space, message):
    with pytest.raises(UserError, match=message):
        check_space(space, BASE, "test")


def test_a_space_where_nothing_varies_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="nothing to search"):
        run_search(build_config(tiny_config(tmp_path)), {"dropout": [0.1], "epochs": [2]}, trials=3)


def test_unknown_strategy_fails_before_any_trial(tmp_path):
    cfg = build_config(tiny_config(tmp_path, data={"max_train_examples": 20, "max_eval_examples": 10}))
    with pytest.raises(UserError, match="Unknown strategy 'frozen'"):
        run_search(cfg, {"strategy": ["feature-extraction", "frozen"]}, trials=1)
    assert not (tmp_path / "tiny").exists()


def test_pruner_stops_a_trial_whose_evals_fall_below_the_median():
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=1))
    good = study.ask()
    watcher = PruneOnEval(good, "accuracy")
    for accuracy in (0.85, 0.9):
        watcher({"kind": "eval", "loss": 0.3, "metrics": {"accuracy": accuracy}}, None)
    study.tell(good, 0.9)
    bad = study.ask()
    watcher = PruneOnEval(bad, "accuracy")
    watcher({"kind": "train", "loss": 0.7}, None)  # train records are not reported
    with pytest.raises(optuna.TrialPruned):
        watcher({"kind": "eval", "loss": 0.9, "metrics": {"accuracy": 0.5}}, None)
    assert bad.storage.get_trial(bad._trial_id).intermediate_values == {1: 0.5}


def test_real_search_writes_trials_and_a_rerunnable_best_config(tmp_path):
    cfg = build_config(tiny_config(tmp_path, name="search", data={"max_train_examples": 40, "max_eval_examples": 20},
                                   model={"max_length": 32}, training={"epochs": 1, "batch_size": 8}))
    space = {"lr": Range(low=1e-4, high=1e-2, log=True), "dropout": [0.0, 0.2], "strategy": ["feature-extraction"]}
    result = run_search(cfg, space, trials=2)
    out = tmp_path / "search"
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 2 and set(trials["state"]) == {"complete"}
    doc = json.loads((out / "search.json").read_text())
    assert doc["metric"] == "accuracy" and doc["direction"] == "maximize"
    assert doc["storage"] == str(out / "study.db")  # stored as it goes: a killed search can resume
    assert len(optuna.load_study(study_name="search", storage=f"sqlite:///{out / 'study.db'}").trials) == 2
    assert doc["best"]["value"] == trials["value"].max()
    best = build_config(load_yaml(out / "best.yaml"))
    assert best.strategy.lr == pytest.approx(doc["best"]["params"]["lr"])
    assert best.model.head_dropout == doc["best"]["params"]["dropout"]
    assert best.strategy.name == "feature-extraction" and "strategy" not in trials  # set, not searched
    assert best.name == "search-best" and best == result.best_config
    assert not (out / "trial-000" / "model").exists() and (out / "trial-000" / "metrics.json").is_file()


def test_cli_search_space_with_no_valid_value_exits_2(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(sys, "argv", ["transferlab", "search", "--warmup", "2:3", "--output", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2
    assert "'warmup'" in capsys.readouterr().err
