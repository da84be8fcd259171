"""Run plots as PNG files: learning curves, confusion matrix, lr / gradient norm / weight change per group.

Each plot function writes one PNG and returns its path, or returns None when the history lacks the data.
Figures are drawn on the Agg canvas without pyplot: no display, no global figure state to leak.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from itertools import pairwise
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from transferlab.evaluation.metrics import headline_metric, is_number

MAX_LEGEND = 12
# Past this many classes the per-cell counts of a confusion matrix are unreadable: colour only.
_MAX_ANNOTATED_CLASSES = 25


def _text(value: object) -> str:
    """User text for matplotlib: '$' escaped so that a label is never parsed as mathtext."""
    return str(value).replace("$", r"\$")


def _records(history: Iterable[Mapping], kind: str) -> list[Mapping]:
    """Records of one kind, in step order."""
    return sorted((r for r in history if r.get("kind") == kind), key=lambda r: r.get("step", 0))


_STACKS = {"embeddings": 0, "stem": 0, "layer": 1, "stage": 1, "block": 1, "decoder": 2, "pooler": 3, "head": 4}
_PARTS = {"attention": 0, "cross": 1}


def _group_order(names: Iterable[str]) -> list[str]:
    """Group names bottom (embeddings) to top (head), read from the names a history holds (records may list
    groups in any order); names of no known pattern keep their order, after the known ones."""
    def key(name: str) -> tuple:
        parts = name.split(".")
        if parts[0] not in _STACKS:
            return (1,)
        index = parts[1] if len(parts) > 1 else "0"
        return (0, _STACKS[parts[0]], int(index) if index.isdigit() else 10**6, _PARTS.get(parts[-1], 2))
    return sorted(dict.fromkeys(names), key=key)


def _marker(points: Sequence) -> str | None:
    """A dot on each point of a short series, which a line alone would barely show (a single point not at all)."""
    return "o" if len(points) <= 20 else None


def _new_figure(width: float = 8.0, height: float = 4.5) -> tuple[Figure, Axes]:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _save(fig: Figure | None, path: str | Path) -> Path | None:
    if fig is None:
        return None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def _phase_starts(history: Sequence[Mapping]) -> list[tuple[float, int]]:
    """(x, phase) where each phase starts: the first step of the first phase, then midway between phases."""
    records = [r for r in (_records(history, "train") or _records(history, "eval")) if "phase" in r]
    if not records:
        return []
    starts = [(records[0]["step"], records[0]["phase"])]
    for previous, record in pairwise(records):
        if record["phase"] != previous["phase"]:
            starts.append(((previous["step"] + record["step"]) / 2, record["phase"]))
    return starts


def _mark_phases(ax: Axes, history: Sequence[Mapping]) -> None:
    """Dashed vertical line at each phase boundary, each phase labelled 'phase k' at the top."""
    starts = _phase_starts(history)
    if len(starts) < 2:
        return
    for i, (x, phase) in enumerate(starts):
        if i:
            ax.axvline(x, color="0.45", linestyle="--", linewidth=0.9)
        ax.annotate(f"phase {phase + 1}", xy=(x, 1), xycoords=("data", "axes fraction"), xytext=(3, -3),
                    textcoords="offset points", va="top", fontsize="small", color="0.3")


def _learning_curves_figure(history: Sequence[Mapping], metric: str) -> Figure | None:
    train = [r for r in _records(history, "train") if is_number(r.get("loss"))]
    evals = _records(history, "eval")
    eval_loss = [r for r in evals if is_number(r.get("loss"))]
    scored = [r for r in evals if is_number((r.get("metrics") or {}).get(metric))]
    if not (train or eval_loss or scored):
        return None
    fig, ax = _new_figure()
    if train:
        steps = [r["step"] for r in train]
        loss = pd.Series([r["loss"] for r in train], dtype=float)
        ax.plot(steps, loss, color="C0", alpha=0.3, linewidth=0.8, label="train loss", marker=_marker(steps))
        smoothed = loss.ewm(span=max(2, len(loss) // 10)).mean()
        ax.plot(steps, smoothed, color="C0", linewidth=1.8, label="train loss (smoothed)")
    if eval_loss:
        ax.plot([r["step"] for r in eval_loss], [r["loss"] for r in eval_loss], "o-", color="C1",
                label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    handles, labels = ax.get_legend_handles_labels()
    if scored:
        twin = ax.twinx()
        twin.plot([r["step"] for r in scored], [r["metrics"][metric] for r in scored], "s-", color="C2",
                  label=f"eval {_text(metric)}")
        twin.set_ylabel(_text(metric))
        more_handles, more_labels = twin.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    ax.legend(handles, labels, fontsize="small", loc="upper left", bbox_to_anchor=(1.08, 1))
    _mark_phases(ax, history)
    ax.set_title("Learning curves")
    return fig


def plot_learning_curves(history: Sequence[Mapping], path: str | Path,
                         metric: str = "accuracy") -> Path | None:
    """Train loss (raw + smoothed), eval loss and an eval metric (twin axis) vs step, phases marked."""
    return _save(_learning_curves_figure(history, metric), path)


def _confusion_figure(matrix: Sequence[Sequence[int]], label_names: Sequence[str]) -> Figure | None:
    counts = np.asarray(matrix, dtype=float)
    if counts.ndim != 2 or counts.size == 0:
        return None
    n = counts.shape[0]
    if counts.shape != (n, n) or len(label_names) != n:
        raise ValueError(f"confusion matrix {counts.shape} does not match {len(label_names)} label names")
    totals = counts.sum(axis=1, keepdims=True)
    # colour by the share of each true class, so that rare classes read as clearly as frequent ones
    share = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    side = min(3.0 + 0.45 * n, 16.0)
    fig, ax = _new_figure(side + 1.2, side)
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, label="share of the true class", shrink=0.8)
    names = [_text(name) for name in label_names]
    crowded = n > 3 or max(map(len, names)) > 8  # slant the column labels so that they do not overlap
    ax.set_xticks(range(n), names, rotation=45 if crowded else 0, ha="right" if crowded else "center")
    ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= _MAX_ANNOTATED_CLASSES:
        for i, j in np.ndindex(counts.shape):
            ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", fontsize="small",
                    color="white" if share[i, j] > 0.5 else "black")
    ax.set_title("Confusion matrix")
    return fig


def plot_confusion_matrix(matrix: Sequence[Sequence[int]], label_names: Sequence[str],
                          path: str | Path) -> Path | None:
    """Confusion matrix (rows = true) with counts written in each cell, coloured by row share."""
    return _save(_confusion_figure(matrix, label_names), path)


def _group_series(records: Sequence[Mapping], field: str) -> dict[str, np.ndarray]:
    """Per group, its value at each record; missing or non-positive values become NaN (gaps on a log axis)."""
    groups = _group_order(g for r in records for g in r.get(field) or {})
    series = {}
    for group in groups:
        values = [(r.get(field) or {}).get(group) for r in records]
        curve = np.array([v if is_number(v) and v > 0 else np.nan for v in values], dtype=float)
        if not np.all(np.isnan(curve)):
            series[group] = curve
    return series


def _merge_equal(series: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Groups with the same curve under one legend label, e.g. 'layer.0.attention … head (9 groups)'."""
    merged: list[tuple[list[str], np.ndarray]] = []
    for name, curve in series.items():
        same = next((names for names, ref in merged
                     if np.allclose(curve, ref, rtol=1e-6, atol=0, equal_nan=True)), None)
        if same is None:
            merged.append(([name], curve))
        else:
            same.append(name)
    return {
        (", ".join(names) if len(names) <= 2 else f"{names[0]} … {names[-1]} ({len(names)} groups)"): curve
        for names, curve in merged
    }


def _groups_figure(steps: Sequence[float], series: Mapping[str, np.ndarray], ylabel: str, title: str,
                   history: Sequence[Mapping]) -> Figure:
    """One line per curve on a log axis, coloured bottom (dark) to top (light); legend capped."""
    fig, ax = _new_figure(9.0, 4.5)
    colours = matplotlib.colormaps["viridis"](np.linspace(0, 0.9, len(series)))
    n = len(series)
    shown = set(range(n)) if n <= MAX_LEGEND else set(np.linspace(0, n - 1, MAX_LEGEND).round().astype(int))
    for i, ((label, curve), colour) in enumerate(zip(series.items(), colours, strict=True)):
        ax.plot(steps, curve, color=colour, linewidth=1.3, label=_text(label) if i in shown else "_nolegend_",
                marker=_marker(steps))
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1),
              title="bottom → top" if n > 1 else None, title_fontsize="small")
    _mark_phases(ax, history)
    ax.set_title(title)
    return fig


def _lr_figure(history: Sequence[Mapping]) -> Figure | None:
    records = [r for r in _records(history, "train") if r.get("lr")]
    series = _merge_equal(_group_series(records, "lr"))
    if not series:
        return None
    return _groups_figure([r["step"] for r in records], series, "learning rate", "Learning rate per group",
                          history)


def plot_lr(history: Sequence[Mapping], path: str | Path) -> Path | None:
    """Learning rate per group vs step (log y); groups with identical curves share one legend entry."""
    return _save(_lr_figure(history), path)


def _grad_norms_figure(history: Sequence[Mapping]) -> Figure | None:
    train = _records(history, "train")
    records = [r for r in train if r.get("grad_norms")]
    series = _group_series(records, "grad_norms")
    title = "Gradient norm per group"
    if not series:
        records = [r for r in train if is_number(r.get("grad_norm")) and r["grad_norm"] > 0]
        series = {"total": np.array([r["grad_norm"] for r in records], dtype=float)} if records else {}
        title = "Gradient norm (all groups)"
    if not series:
        return None
    return _groups_figure([r["step"] for r in records], series, "gradient norm", title, history)


def plot_grad_norms(history: Sequence[Mapping], path: str | Path) -> Path | None:
    """Gradient norm per group vs step (log y), or the total gradient norm when per-group norms are absent."""
    return _save(_grad_norms_figure(history), path)


def _weight_change_figure(history: Sequence[Mapping]) -> Figure | None:
    records = _records(history, "monitor")
    last = {}
    for record in records:
        last.update({g: float(v) for g, v in (record.get("weight_change") or {}).items() if is_number(v)})
    if not last:
        return None
    groups = _group_order(last)
    fig, ax = _new_figure(7.0, 1.4 + 0.28 * len(groups))
    colours = matplotlib.colormaps["viridis"](np.linspace(0, 0.9, len(groups)))
    # barh draws the first bar at the bottom: embeddings at the bottom, head at the top, like the network
    ax.barh(range(len(groups)), [last[g] for g in groups], color=colours)
    ax.set_yticks(range(len(groups)), [_text(g) for g in groups])
    ax.set_xlabel("relative weight change")
    ax.set_title(f"Relative weight change per group (step {records[-1].get('step', '?')})")
    return fig


def plot_weight_change(history: Sequence[Mapping], path: str | Path) -> Path | None:
    """Bar chart of the last relative weight change of each group, bottom to top."""
    return _save(_weight_change_figure(history), path)


def plot_all(run_dir: Path, history: Sequence[Mapping], metrics: Mapping,
             label_names: Sequence[str]) -> list[Path]:
    """Every plot the data allows, into run_dir/plots; returns the paths written.

    metrics is the eval metric dict, or a whole metrics.json dict (its "eval" entry is used).
    """
    out = Path(run_dir) / "plots"
    evals = metrics.get("eval") or metrics
    last_eval = next((r.get("metrics") or {} for r in reversed(_records(history, "eval"))), {})
    metric = headline_metric(evals) or headline_metric(last_eval) or "accuracy"
    written = [plot_learning_curves(history, out / "learning_curves.png", metric)]
    if evals.get("confusion_matrix"):
        matrix = evals["confusion_matrix"]
        written.append(plot_confusion_matrix(matrix, label_names, out / "confusion_matrix.png"))
    written += [
        plot_lr(history, out / "lr.png"),
        plot_grad_norms(history, out / "grad_norms.png"),
        plot_weight_change(history, out / "weight_change.png"),
    ]
    return [path for path in written if path is not None]
