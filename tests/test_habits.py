"""What a practitioner notices first, through the CLI: the doctor on a collapsed run and on a plan whose later phases
are discarded, plots of a short run, the model card, prediction files, the train flags, the plan's wording."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml
from torch import nn

from transferlab.commands.common import resolve_config, with_augment
from transferlab.config import DEFAULT_AUGMENT
from transferlab.pipeline import prepare_run

TINY = ["--max-train-examples", "64", "--max-eval-examples", "32", "--max-length", "32", "--epochs", "1",
        "--batch-size", "16", "--set", "doctor.train_eval_examples=32"]


@pytest.fixture(scope="module")
def collapsed_run(tmp_path_factory, transferlab_cli) -> Path:
    """`train --lr 5e-2` with the default strategy: 4 steps (fewer than log_every) that wreck the pretrained layers."""
    out = tmp_path_factory.mktemp("collapsed")
    assert transferlab_cli("train", *TINY, "--lr", "5e-2", "--name", "hot", "--output", out) == 0
    return out / "hot"


@pytest.fixture(scope="module")
def progressive_run(tmp_path_factory, transferlab_cli) -> Path:
    """Phase 2 of a progressive plan at an absurd lr: the best evaluation stays the phase 1 one."""
    out = tmp_path_factory.mktemp("progressive")
    assert transferlab_cli("train", *TINY, "--strategy", "progressive:1", "--set", "strategy.phase_lrs=[1e-3,0.5]",
                           "--epochs", "2", "--name", "prog", "--output", out) == 0
    return out / "prog"


def warnings_of(run: Path) -> dict[str, dict]:
    return {w["code"]: w for w in json.loads((run / "metrics.json").read_text())["warnings"]}


def test_doctor_reports_the_collapsed_model_and_its_lr(collapsed_run, capsys):
    found = warnings_of(collapsed_run)
    assert "collapsed-model" in found and "lr-too-high" in found
    assert "%" in found["collapsed-model"]["message"] and "--lr 3e-5" in found["collapsed-model"]["fix"]
    assert "layer.0-5.ffn" in found["lr-too-high"]["message"]  # only part of the body learns, and it is caught
    report = (collapsed_run / "report.html").read_text()
    assert "collapsed-model" in report


def test_a_short_run_still_gets_its_plots(collapsed_run):
    history = [json.loads(line) for line in (collapsed_run / "history.jsonl").read_text().splitlines()]
    steps = json.loads((collapsed_run / "metrics.json").read_text())["steps"]
    assert steps < 10  # shorter than log_every
    train = [r for r in history if r["kind"] == "train"]
    assert train and train[-1]["step"] == steps and train[-1]["lr"] and train[-1]["grad_norm"] > 0
    for plot in ("learning_curves", "lr", "grad_norms"):
        assert (collapsed_run / "plots" / f"{plot}.png").stat().st_size > 0


def test_restored_best_weights_that_discard_later_phases_are_said_in_words(progressive_run):
    found = warnings_of(progressive_run)["best-weights-from-earlier-phase"]
    assert "phase 1 (head) of 2" in found["message"] and "2 (+ layer.5)" in found["message"]
    assert "restore_best=false" in found["fix"]
    report = (progressive_run / "report.html").read_text()
    assert "best-weights-from-earlier-phase" in report and "(phase 0)" not in report


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_every_saved_model_has_a_model_card(collapsed_run, transferlab_cli):
    card_path = collapsed_run / "model" / "README.md"
    metrics = json.loads((collapsed_run / "metrics.json").read_text())
    meta = _front_matter(card_path.read_text())
    assert meta["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert meta["pipeline_tag"] == "text-classification" and "transferlab" in meta["tags"]
    results = meta["model-index"][0]["results"][0]
    assert {m["type"]: m["value"] for m in results["metrics"]}["accuracy"] == round(metrics["eval"]["accuracy"], 4)
    assert "held-out 20%" in results["dataset"]["split"]
    card = card_path.read_text()
    for part in ("negative, positive", "64 examples", "31.89%", "standard error over 32 examples", "optimizer steps",
                 "hardware:", "collapsed-model", "transferlab train --config", "import transferlab"):
        assert part in card, part
    card_path.unlink()
    assert transferlab_cli("card", collapsed_run) == 0
    assert card_path.read_text() == card


def test_card_shows_the_spread_of_the_cross_validation_it_belongs_to(collapsed_run, tmp_path, transferlab_cli):
    fold = tmp_path / "cv" / "fold-1"
    fold.mkdir(parents=True)
    for name in ("metrics.json", "config.yaml"):
        (fold / name).write_text((collapsed_run / name).read_text())
    (fold / "model").mkdir()
    (fold / "model" / "config.json").write_text((collapsed_run / "model" / "config.json").read_text())
    (tmp_path / "cv" / "cv.json").write_text(json.dumps({"folds": 3, "per_fold": [{"run_dir": str(fold)}],
                                                          "metrics": {"accuracy": {"mean": 0.6, "std": 0.0123}}}))
    assert transferlab_cli("card", fold) == 0
    assert "± 0.0123 (std over 3 folds)" in (fold / "model" / "README.md").read_text()


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".json", ".parquet"])
def test_prediction_files_keep_every_input_column(collapsed_run, tmp_path, transferlab_cli, suffix):
    source = tmp_path / "in.csv"
    pd.DataFrame({"id": ["r1", "r2"], "text": ["Great fun.", "Dull."], "year": [2001, 2002]}).to_csv(source,
                                                                                                  index=False)
    out = tmp_path / "new" / "dir" / f"preds{suffix}"
    assert transferlab_cli("predict", collapsed_run, "--input", source, "--output", out) == 0
    if suffix == ".jsonl":
        rows = [json.loads(line) for line in out.read_text().splitlines()]
    elif suffix == ".json":
        rows = json.loads(out.read_text())
    else:
        rows = (pd.read_csv(out) if suffix == ".csv" else pd.read_parquet(out)).to_dict("records")
    assert [r["id"] for r in rows] == ["r1", "r2"] and [str(r["year"]) for r in rows] == ["2001", "2002"]
    for row in rows:
        assert row["label"] in ("negative", "positive") and 0 <= row["score"] <= 1
        probabilities = row["probabilities"] if suffix in (".json", ".jsonl") else \
            {k: row[f"p({k})"] for k in ("negative", "positive")}
        assert sum(probabilities.values()) == pytest.approx(1, abs=1e-6)


def test_train_flags_reach_the_config():
    cfg = resolve_config(None, {"warmup": 0.2, "schedule": "cosine", "grad_accum": 2, "weight_decay": 0.0,
                                "dropout": 0.3}, [])
    t = cfg.training
    assert (t.warmup, t.schedule, t.grad_accum, t.weight_decay) == (0.2, "cosine", 2, 0.0)
    assert cfg.model.head_dropout == 0.3 and cfg.model.backbone_dropout == 0.3
    assert with_augment(cfg, True).augment == DEFAULT_AUGMENT
    assert not with_augment(with_augment(cfg, True), False).augment.enabled


def test_dropout_reaches_the_backbone(tmp_path):
    cfg = resolve_config(None, {"dropout": 0.3, "max_train_examples": 20, "max_eval_examples": 10}, [])
    model = prepare_run(cfg).model
    assert model.config.backbone["hidden_dropout_prob"] == 0.3
    assert model.config.backbone["attention_probs_dropout_prob"] == 0.3
    rates = {m.p for m in model.backbone.modules() if isinstance(m, nn.Dropout)}
    assert rates == {0.3} and model.head.dropout.p == 0.3


def test_plan_prints_two_significant_digits_and_is_not_cut_when_piped(transferlab_cli, capsys):
    assert transferlab_cli("plan", "--strategy", "llrd", "--lr", "6.4e-5") == 0
    out = capsys.readouterr().out
    assert "layer.5 @ 6.4e-05" in out and "embeddings @ 1.7e-05" in out
    assert max(len(line) for line in out.splitlines()) > 120  # one row, as wide as it needs (not 80 columns)


def test_text2text_plan_names_each_layer_range_once(transferlab_cli, capsys):
    root = Path(__file__).resolve().parents[1]
    assert transferlab_cli("plan", "--config", root / "examples" / "text2text.yaml") == 0
    out = capsys.readouterr().out
    assert out.count("decoder.0-5") == 1 and "layer.0-5 @ 1.0e-04" in out


def test_freeze_top_freezes_the_highest_layers(transferlab_cli, capsys):
    assert transferlab_cli("plan", "--strategy", "freeze-top:2") == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if "freeze top 2" in line)
    assert "embeddings @ 5.0e-05, layer.0-3 @ 5.0e-05, head @ 1.0e-03" in row
    assert not re.search(r"layer\.[45]", row)
    assert transferlab_cli("plan", "--strategy", "freeze-top:9") == 2


def test_task_sections_are_known_to_a_fresh_cli(tmp_path):
    """The task modules load lazily, but a config's task sections (`ner:`, `--crf`) are still validated as such."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-m", "transferlab.cli", "train", "--task", "tokens", "--crf", "--set",
                           "ner.tokens_column=words", "--data", str(tmp_path / "missing.conll")], capture_output=True,
                          text=True, timeout=600, cwd=tmp_path, env={"PYTHONPATH": str(root / "src"),
                                                                      "PATH": "/usr/bin:/bin"})
    assert done.returncode == 2 and "missing.conll does not exist" in done.stderr, done.stderr[-2000:]
