"""`--strategy auto`: the candidates the rules of thumb propose, budgets, the decision rule, and one real probe and
training on 60 examples with the decision recorded in metrics.json and the report."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pandas as pd
import pytest

from transferlab.errors import UserError
from transferlab.lab import auto
from transferlab.lab.auto import Candidate, candidates, parse_budget
from transferlab.tasks.base import RunData

TINY = ["--max-train-examples", "60", "--max-eval-examples", "30", "--max-length", "32", "--batch-size", "16"]


def test_budgets_are_durations_or_epochs_of_full_fine_tuning():
    epoch = lambda: 40.0  # noqa: E731  (seconds of one full fine-tuning epoch, as auto estimates it)
    seconds = {text: parse_budget(text).total_s(epoch) for text in ("90s", "10m", "1h30m", "45", "3ep", None)}
    assert seconds == {"90s": 90, "10m": 600, "1h30m": 5400, "45": 45, "3ep": 120, None: float("inf")}
    for bad in ("ten minutes", "10 parsecs", "m"):
        with pytest.raises(UserError, match="not a duration"):
            parse_budget(bad)


def test_candidates_follow_the_rules_of_thumb_plus_lora_freeze_attention_and_llrd():
    text = SimpleNamespace(kinds=["embeddings", "attention", "ffn", "head"], num_layers=6)
    names = lambda n: [c.strategy for c in candidates(n, text)]  # noqa: E731
    assert names(500) == ["tfidf", "feature-extraction", "bitfit", "lora", "freeze-attention"]
    assert names(5_000) == ["freeze-bottom:3", "lora", "freeze-attention", "llrd"]
    assert names(50_000) == ["full", "lora", "freeze-attention", "llrd"]
    cnn = SimpleNamespace(kinds=["stem", "block", "head"], num_layers=8)  # no attention, no text for TF-IDF
    assert [c.strategy for c in candidates(500, cnn, text=False)] == ["feature-extraction", "bitfit", "lora"]
    assert [c.strategy for c in candidates(5_000, cnn, text=False)] == ["freeze-bottom:4", "lora", "llrd"]


def probed(strategy: str, score: float, seconds: float) -> Candidate:
    return Candidate(strategy, "test", probe_score=score, probe_time_s=seconds)


def test_the_best_probe_that_fits_the_budget_wins_and_ties_go_to_the_faster():
    found = [probed("tfidf", 0.70, 1.0), probed("lora", 0.84, 10.0), probed("llrd", 0.842, 30.0),
             probed("full", 0.90, 400.0), Candidate("bitfit", "test", decision="no time left to probe it")]
    # scale 10 (probe on a tenth of the data), 3 epochs: lora 300s, llrd 900s, full 12,000s predicted
    chosen, epochs, reason = auto._decide(found, left_s=1000, epochs=3, scale=10, probed_epochs=1)
    assert (chosen.strategy, epochs) == ("lora", 3) and "fastest within 0.5 point" in reason
    by_name = {c.strategy: c for c in found}
    assert by_name["llrd"].decision == "as good, slower than lora"
    assert by_name["full"].decision.startswith("over budget: predicted 12000s")  # 1,000s: a quarter of an epoch
    assert by_name["tfidf"].decision.startswith("probe score 0.7000 < 0.8400")
    assert by_name["bitfit"].decision == "no time left to probe it"


def test_a_plan_too_long_for_the_budget_trains_fewer_epochs_when_it_is_the_best():
    found = [probed("tfidf", 0.70, 1.0), probed("full", 0.90, 100.0)]
    chosen, epochs, _ = auto._decide(found, left_s=2000, epochs=3, scale=10, probed_epochs=1)
    assert chosen.strategy == "full" and epochs == pytest.approx(2.0) and chosen.predicted_time_s == 2000
    assert chosen.decision.endswith("2 of 3 epochs fit the budget")
    with pytest.raises(UserError, match="no probed plan"):
        auto._decide([probed("full", 0.9, 100.0)], left_s=100, epochs=3, scale=10, probed_epochs=1)


def test_small_data_probes_cross_validate_so_every_example_is_scored_once():
    frame = pd.DataFrame({"text": [f"t{i}" for i in range(200)], "label": ["pos"] * 120 + ["neg"] * 80})
    folds = auto.probe_splits(RunData(frame, frame.head(0), ["neg", "pos"]), seed=42)
    scored = pd.concat([f.eval for f in folds])["text"]
    assert len(folds) == auto.PROBE_FOLDS and sorted(scored) == sorted(frame["text"])
    assert all(set(f.train["text"]).isdisjoint(f.eval["text"]) and len(f.train) == 150 for f in folds)
    assert all((f.eval["label"] == "pos").mean() == pytest.approx(0.6) for f in folds)  # stratified
    big = pd.concat([frame] * 10, ignore_index=True).assign(text=[f"t{i}" for i in range(2000)])
    [split] = auto.probe_splits(RunData(big, big.head(0), ["neg", "pos"]), seed=42)
    assert len(split.train) == 1000 and len(split.eval) == 400  # one subset and a 20% slice, as before


def test_a_fold_probe_predicts_the_run_from_one_fold_not_their_sum():
    chosen, _, _ = auto._decide([probed("bitfit", 0.8, 40.0)], left_s=1000, epochs=3, scale=2, probed_epochs=3,
                                folds=4)
    assert chosen.predicted_time_s == 20.0  # 40 s over 4 folds = 10 s a probe, on half the data


def test_a_budget_too_small_for_any_probe_names_the_minimum(tmp_path, transferlab_cli, capsys):
    code = transferlab_cli("train", "--strategy", "auto", "--budget", "1s", *TINY, "--output", tmp_path)
    err = capsys.readouterr().err
    assert code == 2 and "too small for any probe" in err and "Pass --budget" in err
    assert "Traceback" not in err and not (tmp_path / "run").exists()


def test_plan_auto_explains_what_it_would_probe(transferlab_cli, capsys):
    assert transferlab_cli("plan", "--strategy", "auto", "--set", "data.max_train_examples=60") == 0
    out = capsys.readouterr().out
    assert "train examples: 60" in out and "auto would probe" in out
    assert all(name in out for name in ("tfidf", "feature-extraction", "lora", "freeze-attention"))
    assert "over 4 folds (every example scored once; ranked by roc_auc" in out


def test_a_probe_ranks_by_the_metric_asked_for_where_the_task_reports_it(monkeypatch):
    cfg = auto.build_config({"data": {"max_train_examples": 60}, "model": {"max_length": 32}})
    fold = auto.probe_splits(auto.load_run_data(cfg), cfg.seed)[0]
    assert auto.run_probe(cfg, "tfidf", fold, 1.0, "roc_auc")[0] == "roc_auc"
    assert auto.run_probe(cfg, "tfidf", fold, 1.0, "pearson")[0] == "accuracy"  # not a classification metric
    assert auto.run_probe(cfg, "tfidf", fold, 1.0)[0] == "accuracy"


def test_probes_of_trained_plans_score_the_task_metric_even_when_checkpoints_select_by_loss():
    # auto keeps the highest probe score: a plan probed by its eval loss would win by being worst
    cfg = auto.build_config({"data": {"max_train_examples": 40}, "model": {"max_length": 32},
                             "training": {"metric": "loss", "batch_size": 16}})
    fold = auto.probe_splits(auto.load_run_data(cfg), cfg.seed)[0]
    name, value, _, _ = auto.run_probe(cfg, "feature-extraction", fold, 0.5)
    assert name == "accuracy" and 0 <= value <= 1


def test_auto_probes_prints_its_reasoning_trains_the_choice_and_records_it(tmp_path, transferlab_cli, capsys,
                                                                          monkeypatch):
    two = lambda n, groups, text: [Candidate("tfidf", "cheap reference"),  # noqa: E731  (two probes: a short test)
                             Candidate("feature-extraction", "few examples")]
    monkeypatch.setattr(auto, "candidates", two)
    code = transferlab_cli("train", "--strategy", "auto", "--budget", "10m", *TINY, "--output", tmp_path,
                           "--name", "auto")
    out = capsys.readouterr().out
    assert code == 0 and "auto:" in out and "probe score" in out and "chosen" in out
    doc = json.loads((tmp_path / "auto" / "metrics.json").read_text())
    decision = doc["auto"]
    assert doc["strategy"] == decision["chosen"] in ("tfidf", "feature-extraction")
    assert decision["budget"] == "10m" and decision["train_examples"] == 60 and decision["classes"] == 2
    assert decision["probe_train_examples"] + decision["probe_eval_examples"] == 60 and decision["probe_folds"] == 4
    assert decision["probe_metric"] == "roc_auc" and "probe score = roc_auc" in out  # two classes, folds
    rows = {c["strategy"]: c for c in decision["candidates"]}
    assert all(0 <= r["probe_score"] <= 1 and r["probe_time_s"] > 0 for r in rows.values())
    assert rows[decision["chosen"]]["decision"].startswith("chosen")
    assert "How auto chose the plan" in (tmp_path / "auto" / "report.html").read_text()
    assert f"name: {decision['chosen']}" in (tmp_path / "auto" / "config.yaml").read_text()  # re-runs the choice


def test_a_budget_without_auto_is_refused(tmp_path, transferlab_cli, capsys):
    code = transferlab_cli("train", "--strategy", "full", "--budget", "10m", "--output", tmp_path)
    err = capsys.readouterr().err
    assert code == 2 and "applies to strategy 'auto' only" in err and "Traceback" not in err
