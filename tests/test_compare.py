"""`compare`: variants, the from-scratch baseline, learning-curve sizes, outputs of a real tiny comparison."""

from __future__ import annotations

import json
import sys

import pandas as pd
import pytest
from conftest import tiny_config
from rich.console import Console

from transferlab.cli import main
from transferlab.commands.lab import compare_table, parse_inits, parse_train_sizes
from transferlab.config import build_config
from transferlab.data.augment import AugmentConfig
from transferlab.errors import UserError
from transferlab.lab.compare import (
    DEFAULT_AUGMENT,
    Variant,
    aggregate_variant,
    check_train_sizes,
    plot_learning_curve,
    run_compare,
    trainable_text,
    variant_config,
    variants,
)
from transferlab.pipeline import prepare_run
from transferlab.strategies.plan import Phase, ResolvedPhase
from transferlab.tasks.base import RunData


def test_variant_directory_names_are_safe_and_distinct():
    assert Variant("freeze-bottom:4").run_name(3) == "freeze-bottom-4-seed3"
    assert Variant("full", "random", 100, True).run_name(0) == "full-random-n100-aug-seed0"
    assert Variant("full", "random", 100, True).label == "full, random init, n=100, augmented"


def test_variants_cover_every_combination():
    found = variants(["full", "llrd"], ["pretrained", "random"], [100, None], [False, True])
    assert len(found) == 16 and len(set(found)) == 16
    assert found[0] == Variant("full", "pretrained", 100, False)


def test_variant_config_sets_strategy_init_size_seed_and_augmentation(tmp_path):
    cfg = build_config(tiny_config(tmp_path))
    run = variant_config(cfg, Variant("llrd", "random", 50, True), 9, tmp_path / "cmp", DEFAULT_AUGMENT)
    assert (run.strategy.name, run.model.init, run.data.max_train_examples, run.seed) == ("llrd", "random", 50, 9)
    assert run.augment == DEFAULT_AUGMENT and run.run_dir == tmp_path / "cmp" / "llrd-random-n50-aug-seed9"
    plain = variant_config(cfg, Variant("full"), 7, tmp_path, DEFAULT_AUGMENT)
    assert plain.augment == AugmentConfig() and plain.data.max_train_examples == 200


def test_train_sizes_and_inits_parse_and_bad_values_are_user_errors():
    assert parse_train_sizes("100, 1000,all") == [100, 1000, None]
    assert parse_inits("pretrained,random") == ["pretrained", "random"]
    for bad in ("10,x", "0", ""):
        with pytest.raises(UserError):
            parse_train_sizes(bad)
    with pytest.raises(UserError, match="scratch"):
        parse_inits("scratch")
    with pytest.raises(UserError, match="only 200"):
        check_train_sizes([100, 1000, None], 200)


def test_random_init_keeps_the_architecture_but_not_the_pretrained_weights(tmp_path):
    frame = pd.DataFrame({"text": ["good", "bad"], "label": ["positive", "negative"]})
    data = RunData(frame, frame, ["negative", "positive"])
    pretrained = prepare_run(build_config(tiny_config(tmp_path)), data)
    scratch = prepare_run(build_config(tiny_config(tmp_path, model={"init": "random"})), data)
    ours, theirs = pretrained.model.state_dict(), scratch.model.state_dict()
    assert ours.keys() == theirs.keys()
    name = "backbone.encoder.layer.0.attention.self.query.weight"
    assert ours[name].shape == theirs[name].shape and not ours[name].equal(theirs[name])
    assert float(theirs[name].std()) == pytest.approx(0.02, rel=0.1)  # the architecture's own init


def test_a_variant_row_is_the_mean_and_std_over_its_seeds():
    seeds = ((0.8, 0.7, 10.0, 900.0, ["too-few-epochs"]), (0.9, 0.8, 12.0, 950.0, []))
    phases = [ResolvedPhase(Phase(lrs={"head": 1e-3}), {"head": 1e-3}, 10, 1000),
              ResolvedPhase(Phase(lrs={"head": 1e-3, "layer.5": 1e-4}), {"head": 1e-3, "layer.5": 1e-4}, 500, 1000)]
    runs = [{"eval": {"accuracy": a, "f1": f}, "train_examples": 100, "train_time_s": t, "peak_memory_mb": m,
             "warnings": w, "trainable_pct": [100 * p["trainable_ratio"] for p in (ph.summary(0) for ph in phases)]}
            for a, f, t, m, w in seeds]
    row = aggregate_variant(Variant("progressive"), runs)
    assert row["accuracy"] == pytest.approx(0.85) and row["accuracy_std"] == pytest.approx(0.0707107)
    assert row["f1"] == pytest.approx(0.75) and row["seeds"] == 2 and row["train_time_s"] == 11.0
    assert (row["trainable_pct_min"], row["trainable_pct"]) == (1.0, 50.0) and trainable_text(row) == "1-50%"
    assert row["peak_memory_mb"] == 950.0 and row["warnings"] == ["too-few-epochs"]


def test_learning_curve_plot_needs_two_sizes(tmp_path):
    rows = [{"strategy": "full", "init": "pretrained", "augment": False, "train_size": n, "accuracy": a,
             "accuracy_std": 0.01} for n, a in ((100, 0.6), (1000, 0.8))]
    assert plot_learning_curve(rows, "accuracy", tmp_path / "curve.png").stat().st_size > 0
    assert plot_learning_curve(rows[:1], "accuracy", tmp_path / "none.png") is None


def test_real_comparison_writes_table_json_csv_plots_and_report(tmp_path):
    cfg = build_config(tiny_config(tmp_path, name="cmp", data={"max_train_examples": 40, "max_eval_examples": 20},
                                   model={"max_length": 32}, training={"epochs": 1, "batch_size": 8}))
    strategies = ["feature-extraction", "freeze-bottom:5"]
    result = run_compare(cfg, strategies)
    out = tmp_path / "cmp"
    assert {p.name for p in result.files} == {"compare.json", "compare.csv", "report.html", "accuracy_vs_time.png"}
    doc = json.loads((out / "compare.json").read_text())
    assert len(doc["runs"]) == 2 and len(doc["rows"]) == 2 and doc["metrics"] == ["accuracy", "f1", "roc_auc"]
    first = doc["rows"][0]
    assert (first["strategy"], first["train_size"], first["seeds"]) == ("feature-extraction", 40, 1)
    assert first["accuracy"] == doc["runs"][0]["eval"]["accuracy"]
    by_strategy = {r["strategy"]: r for r in doc["rows"]}
    assert by_strategy["feature-extraction"]["trainable_pct"] < by_strategy["freeze-bottom:5"]["trainable_pct"]
    assert all(r["peak_memory_mb"] > 100 and r["train_time_s"] > 0 for r in doc["rows"])
    assert (out / "freeze-bottom-5-seed7" / "metrics.json").is_file()
    assert not (out / "freeze-bottom-5-seed7" / "checkpoints").exists()
    # one seed has no spread: n/a everywhere, never 0.0
    assert first["accuracy_std"] is None and first["roc_auc"] == doc["runs"][0]["eval"]["roc_auc"]
    csv = pd.read_csv(out / "compare.csv", keep_default_na=False)
    assert len(csv) == 2 and set(csv["accuracy_std"]) == {"n/a"}
    report = (out / "report.html").read_text()
    assert "freeze-bottom:5" in report and "accuracy std" in report and "roc_auc" in report and "n/a" in report
    console = Console(width=300, record=True)
    console.print(compare_table(result, "compare"))
    table = console.export_text()
    assert "roc_auc (mean ± std)" in table and "± n/a" in table and "± 0.0000" not in table


def test_cli_train_size_above_the_data_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["transferlab", "compare", "--strategies", "full", "--max-train-examples", "30",
                                      "--train-sizes", "10,100", "--output", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2
    assert "only 30" in capsys.readouterr().err
