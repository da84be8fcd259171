"""Evaluation layer: metrics on hand-checkable cases, plots from a synthetic 2-phase history, HTML reports."""

import json
import math
import re

import numpy as np
import pytest

from transferlab.errors import UserError
from transferlab.evaluation import plots
from transferlab.evaluation.metrics import classification_metrics, headline_metric, regression_metrics
from transferlab.evaluation.report import read_history, write_compare_report, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
GROUPS = ["embeddings", "layer.0.attention", "layer.0.ffn", "layer.1.attention", "layer.1.ffn", "pooler",
          "head"]
EVIL = "<script>alert(1)</script>"


def one_hot(predictions, n_classes):
    return np.eye(n_classes)[predictions]


def test_classification_metrics_known_confusion_matrix():
    labels = [0, 0, 1, 1, 2, 2]
    result = classification_metrics(labels, one_hot([0, 1, 1, 1, 2, 0], 3), ["a", "b", "c"])
    assert result["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert result["accuracy"] == pytest.approx(4 / 6)
    expected = {"a": (0.5, 0.5, 0.5), "b": (2 / 3, 1.0, 0.8), "c": (1.0, 0.5, 2 / 3)}
    for name, (precision, recall, f1) in expected.items():
        scores = {"precision": precision, "recall": recall, "f1": f1, "support": 2}
        assert result["per_class"][name] == pytest.approx(scores)
    assert result["precision"] == pytest.approx((0.5 + 2 / 3 + 1) / 3)
    assert result["f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert "roc_auc" not in result  # three classes
    # plain Python types all the way down: survives a JSON round trip unchanged
    assert json.loads(json.dumps(result)) == result
    assert type(result["accuracy"]) is float and type(result["per_class"]["a"]["support"]) is int


def test_classification_metrics_perfect_binary_and_auc():
    perfect = classification_metrics([0, 1, 1, 0], one_hot([0, 1, 1, 0], 2), ["neg", "pos"])
    for key in ("accuracy", "precision", "recall", "f1", "roc_auc"):
        assert perfect[key] == 1.0
    # positives scored 0.35 and 0.8, negatives 0.1 and 0.4: 3 of the 4 (pos, neg) pairs are ordered right
    probs1 = np.array([0.1, 0.4, 0.35, 0.8])
    ranked = classification_metrics([0, 0, 1, 1], np.stack([1 - probs1, probs1], axis=1), ["neg", "pos"])
    assert ranked["roc_auc"] == pytest.approx(0.75)
    assert ranked["accuracy"] == pytest.approx(0.75)
    one_class = classification_metrics([1, 1], np.array([[0.2, 0.8], [0.6, 0.4]]), ["neg", "pos"])
    assert "roc_auc" not in one_class


def test_classification_metrics_class_absent_from_split():
    result = classification_metrics([0, 0, 1], one_hot([0, 0, 1], 3), ["a", "b", "c"])
    assert result["f1"] == 1.0  # macro over the classes seen, not a zero for "c"
    assert result["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    with pytest.raises(ValueError, match="shape"):
        classification_metrics([0, 1], np.ones((2, 2)), ["a", "b", "c"])


def test_regression_metrics_known_data():
    result = regression_metrics([1, 2, 3, 4], [2, 4, 6, 8])
    assert result["mse"] == pytest.approx(7.5)
    assert result["rmse"] == pytest.approx(math.sqrt(7.5))
    assert result["mae"] == pytest.approx(2.5)
    assert result["pearson"] == pytest.approx(1.0)
    assert result["spearman"] == pytest.approx(1.0)
    # monotone but not linear: spearman is exactly -1, pearson is not
    curved = regression_metrics([1, 2, 3, 4], [8, 1, 0.5, 0.1])
    assert curved["spearman"] == pytest.approx(-1.0)
    assert -1.0 < curved["pearson"] < -0.7
    constant = regression_metrics([1, 2, 3], [5, 5, 5])
    assert constant["pearson"] is None and constant["spearman"] is None
    json.dumps(constant)


def test_headline_metric():
    assert headline_metric({"loss": 0.3, "f1": 0.5, "accuracy": 0.7}) == "accuracy"
    assert headline_metric({"mse": 1.0, "spearman": 0.5}) == "spearman"
    assert headline_metric({"loss": 0.3}) == "loss"
    assert headline_metric({"per_class": {}}) is None


def synthetic_history(groups=GROUPS, steps_per_phase=20):
    """Phase 0 trains the head only; phase 1 unfreezes everything with decaying, layer-wise rates."""
    history = []
    for step in range(1, 2 * steps_per_phase + 1):
        phase = 0 if step <= steps_per_phase else 1
        trainable = groups[-1:] if phase == 0 else groups
        decay = 1 - (step - 1) / (2 * steps_per_phase)
        lr = {g: (1e-3 if g == "head" else 1e-4 * 0.8 ** (len(groups) - i)) * decay
              for i, g in enumerate(groups) if g in trainable}
        history.append({"kind": "train", "step": step, "epoch": step / steps_per_phase, "phase": phase,
                        "loss": 1.0 / step + 0.05 * np.sin(step), "lr": lr, "grad_norm": 2.0 + np.cos(step),
                        "grad_norms": {g: 0.1 * (i + 1) + 0.01 * step for i, g in enumerate(trainable)}})
        if step % 10 == 0:
            history.append({"kind": "eval", "step": step, "epoch": step / steps_per_phase, "phase": phase,
                            "loss": 0.8 / step ** 0.5, "metrics": {"accuracy": 0.5 + step / 100, "f1": 0.4}})
            history.append({"kind": "monitor", "step": step, "phase": phase,
                            "weight_change": {g: 0.001 * (i + 1) * step for i, g in enumerate(trainable)}})
    return history


def assert_png(path, min_bytes=5000):
    assert path is not None and path.is_file()
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > min_bytes


def test_each_plot_writes_a_png(tmp_path):
    history = synthetic_history()
    assert_png(plots.plot_learning_curves(history, tmp_path / "curves.png"))
    assert_png(plots.plot_confusion_matrix([[5, 1], [2, 7]], ["neg", EVIL], tmp_path / "cm.png"))
    assert_png(plots.plot_lr(history, tmp_path / "lr.png"))
    assert_png(plots.plot_grad_norms(history, tmp_path / "sub" / "grad.png"))
    assert_png(plots.plot_weight_change(history, tmp_path / "wc.png"))
    # without per-group norms the total gradient norm is drawn
    totals_only = [{k: v for k, v in r.items() if k != "grad_norms"} for r in history]
    assert_png(plots.plot_grad_norms(totals_only, tmp_path / "grad_total.png"))


def test_plots_skip_missing_data(tmp_path):
    evals_only = [r for r in synthetic_history() if r["kind"] == "eval"]
    assert plots.plot_lr(evals_only, tmp_path / "lr.png") is None
    assert plots.plot_grad_norms(evals_only, tmp_path / "g.png") is None
    assert plots.plot_weight_change(evals_only, tmp_path / "w.png") is None
    assert plots.plot_learning_curves([], tmp_path / "c.png") is None
    assert plots.plot_confusion_matrix([], [], tmp_path / "cm.png") is None
    assert not list(tmp_path.iterdir())
    assert_png(plots.plot_learning_curves(evals_only, tmp_path / "c.png"))


def legend_labels(fig):
    legend = fig.axes[0].get_legend()
    return [t.get_text() for t in legend.get_texts()]


def test_phases_marked_and_groups_ordered_bottom_to_top():
    history = synthetic_history()
    fig = plots._learning_curves_figure(history, "accuracy")
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts == ["phase 1", "phase 2"]  # numbered like the plan
    assert "eval accuracy" in legend_labels(fig)
    # the history lists the head first (unfrozen first); the chart still goes embeddings -> head
    bars = plots._weight_change_figure(history).axes[0]
    assert [t.get_text() for t in bars.get_yticklabels()] == GROUPS


def test_lr_legend_merges_equal_curves_and_stays_short():
    many = [f"layer.{i}.{part}" for i in range(12) for part in ("attention", "ffn")]
    same_lr = [{"kind": "train", "step": s, "phase": 0, "lr": {g: 1e-4 for g in many}} for s in range(1, 6)]
    assert legend_labels(plots._lr_figure(same_lr)) == ["layer.0.attention … layer.11.ffn (24 groups)"]
    rates = {g: 1e-4 * (i + 1) for i, g in enumerate(many)}
    distinct = [{"kind": "train", "step": s, "phase": 0, "lr": rates} for s in range(1, 6)]
    labels = legend_labels(plots._lr_figure(distinct))
    assert len(labels) == plots.MAX_LEGEND
    assert labels[0] == "layer.0.attention" and labels[-1] == "layer.11.ffn"


def make_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    labels = ["negative", EVIL]
    probs = np.array([[0.9, 0.1], [0.3, 0.7], [0.2, 0.8], [0.4, 0.6]])
    evals = classification_metrics([0, 0, 1, 1], probs, labels)
    metrics = {
        "task": "classification", "model": "minilm", "strategy": "progressive", "seed": 13,
        "plan": [
            {"phase": 0, "epochs": 1, "groups": {"head": 1e-3}, "trainable_params": 770,
             "trainable_ratio": 3.4e-5},
            {"phase": 1, "epochs": 2, "groups": {"layer.5.ffn": 1e-4, "pooler": 1e-4, "head": 1e-3},
             "name": "unfreeze layer.5", "schedule": "linear", "warmup": 0.06,
             "trainable_params": 1_234_567, "trainable_ratio": 0.054},
        ],
        "eval": evals, "train_time_s": 12.34,
        "warnings": [{"code": "W001", "message": f"class {EVIL} has 2 examples", "fix": "add more examples"}],
        "versions": {"torch": "2.13.0", "transformers": "5.23"}, "best_step": 40, "labels": labels,
    }
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "config.yaml").write_text(f"model: minilm\nnote: '{EVIL}'\n")
    history = synthetic_history()
    lines = [json.dumps(r) for r in history] + ['{"kind": "train", "st']  # a line cut short by a kill
    (run / "history.jsonl").write_text("\n".join(lines))
    written = plots.plot_all(run, read_history(run / "history.jsonl"), metrics, labels)
    assert [p.name for p in written] == ["learning_curves.png", "confusion_matrix.png", "lr.png",
                                         "grad_norms.png", "weight_change.png"]
    return run, metrics, history


def test_write_report(tmp_path):
    run, metrics, history = make_run(tmp_path)
    assert len(read_history(run / "history.jsonl")) == len(history)
    page = write_report(run).read_text()
    assert f"{metrics['eval']['accuracy']:.4g}" in page and f"{metrics['eval']['roc_auc']:.4g}" in page
    # plan table: one row per phase with its parameter count and ratio
    rows = re.findall(r"<tr>(.*?)</tr>", page, flags=re.S)
    assert any("1,234,567" in r and "5.4%" in r and "layer.5.ffn, pooler" in r for r in rows)
    assert any("770" in r and "0.0034%" in r for r in rows)
    assert any("unfreeze layer.5" in r and "linear, warmup 0.06" in r for r in rows)
    assert len(re.findall(r'<img src="data:image/png;base64,[A-Za-z0-9+/=]{100,}"', page)) == 5
    assert "<script" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "W001" in page and "add more examples" in page
    assert "Best eval accuracy" in page and "at step 40 (phase 2)" in page
    assert "2.13.0" in page and "12.3 s" in page
    assert '<div class="label">best_step</div><div class="value">40</div>' in page  # any other key shows too
    assert '<div class="label">eval accuracy</div>' in page
    assert "http" not in page.replace("http-equiv", "")  # no external assets


def test_write_report_tolerates_a_bare_run_dir_and_rejects_a_missing_one(tmp_path):
    page = write_report(tmp_path).read_text()
    assert "transferlab run" in page
    with pytest.raises(UserError, match="does not exist"):
        write_report(tmp_path / "nope")
    (tmp_path / "metrics.json").write_text("{not json")
    with pytest.raises(UserError, match="metrics.json"):
        write_report(tmp_path)


def test_write_compare_report(tmp_path):
    plot = plots.plot_lr(synthetic_history(), tmp_path / "lr.png")
    rows = [
        {"strategy": "full", "accuracy": 0.81, "eval_loss": 0.52, "train_time_s": 30.0},
        {"strategy": EVIL, "accuracy": 0.86, "eval_loss": 0.47, "train_time_s": 10.0, "extra": {"k": 1}},
    ]
    page = write_compare_report(tmp_path / "cmp", rows, [plot, tmp_path / "missing.png"]).read_text()
    assert '<td class="best">0.86</td>' in page and '<td class="best">0.47</td>' in page
    assert page.count('class="best"') == 2  # train_time_s is not a metric: never bold
    assert "<th>extra</th>" in page and "&lt;script&gt;" in page and "<script" not in page
    assert page.count("data:image/png;base64,") == 1
