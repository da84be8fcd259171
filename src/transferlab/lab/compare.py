"""Compare strategies (and random init, train sizes, augmentation) on the same data over several seeds.

Every run is an ordinary `train_run` in out_dir/<variant>-seed<k>. Peak memory is measured per run: on CUDA
torch's peak allocated memory; on CPU the process's resident set size (RSS), sampled by a thread every 20 ms
with psutil (`resource.getrusage` only knows the peak over the whole process lifetime, not per run). RSS counts
everything resident, so it includes the interpreter, the libraries and the data: compare it across rows.
"""

from __future__ import annotations

import ctypes
import gc
import json
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from transferlab.config import DEFAULT_AUGMENT, AugmentConfig, RunConfig, build_config
from transferlab.errors import UserError
from transferlab.evaluation.metrics import headline_metric
from transferlab.evaluation.report import write_compare_report
from transferlab.lab.cross_validation import aggregate_metrics, drop_checkpoints, summarize
from transferlab.pipeline import (
    PreparedRun,
    load_run_data,
    prepare_run,
    results_dir,
    strategy_groups,
    train_run,
)
from transferlab.strategies.named import build_plan, strategy_options
from transferlab.strategies.plan import ResolvedPhase
from transferlab.tasks.base import RunData
from transferlab.training.baselines import check_baseline, is_baseline

NO_SPREAD = "n/a"  # what the tables show for the spread of a single seed


@dataclass(frozen=True)
class Variant:
    """One row of the comparison: a strategy, an initialisation, a train size (None = all), augmentation."""

    strategy: str
    init: str = "pretrained"
    train_size: int | None = None
    augment: bool = False

    @property
    def label(self) -> str:
        parts = [self.strategy]
        if self.init != "pretrained":
            parts.append(f"{self.init} init")
        if self.train_size is not None:
            parts.append(f"n={self.train_size}")
        if self.augment:
            parts.append("augmented")
        return ", ".join(parts)

    def run_name(self, seed: int) -> str:
        """Directory name: <strategy>[-random][-n<size>][-aug]-seed<k>, safe on every file system."""
        name = re.sub(r"[^A-Za-z0-9._-]+", "-", self.strategy)
        name += "-random" if self.init == "random" else ""
        name += f"-n{self.train_size}" if self.train_size is not None else ""
        name += "-aug" if self.augment else ""
        return f"{name}-seed{seed}"


@dataclass
class CompareResult:
    """Aggregated rows (one per variant), the per-run records, the metrics the table shows, the files written."""

    rows: list[dict]
    runs: list[dict]
    metrics: list[str]
    files: list[Path] = field(default_factory=list)


class PeakMemory:
    """Peak memory while the block runs: torch's peak allocated on CUDA, else the process RSS (sampled)."""

    def __init__(self, interval: float = 0.02):
        import psutil

        self.interval = interval
        self.process = psutil.Process()
        self.cuda = torch.cuda.is_available()
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    @property
    def method(self) -> str:
        if self.cuda:
            return "torch.cuda.max_memory_allocated"
        return f"peak process RSS (psutil, sampled every {1000 * self.interval:g} ms)"

    @property
    def peak_mb(self) -> float:
        return round(self.peak_bytes / 2**20, 1)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_bytes = max(self.peak_bytes, self.process.memory_info().rss)

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        else:
            _release_free_heap()
            self.peak_bytes = self.process.memory_info().rss
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            self.peak_bytes = torch.cuda.max_memory_allocated()
            return
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self.peak_bytes, self.process.memory_info().rss)


def _release_free_heap() -> None:
    """Hand memory freed by the previous run back to the OS (glibc keeps it), so runs start from a like baseline."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: the baseline simply includes what the allocator kept


def compile_strategies(cfg: RunConfig, prep: PreparedRun,
                       strategies: Sequence[str]) -> dict[str, list[ResolvedPhase]]:
    """Each strategy's plan for the model's layer groups (with the adapters it adds), built before any training
    so a bad name fails at once; a baseline has no plan before its fit (its features come from the data)."""
    if not strategies:
        raise UserError("No strategy given.", "Pass --strategies with a comma-separated list, e.g. full,llrd.")
    plans = {}
    for s in strategies:
        if is_baseline(s):
            check_baseline(s, prep.task)
            continue
        groups = strategy_groups(cfg, prep, s)
        plans[s] = build_plan(s, groups, strategy_options(cfg)).resolve(groups)
    return plans


def variant_config(cfg: RunConfig, variant: Variant, seed: int, out_dir: Path, augment: AugmentConfig) -> RunConfig:
    """The base config with this variant's strategy, init, train size, augmentation and seed."""
    data = cfg.model_dump(mode="json")
    data.update(name=variant.run_name(seed), output_dir=str(out_dir), seed=seed)
    data["strategy"]["name"] = variant.strategy
    data["model"]["init"] = variant.init
    if variant.train_size is not None:
        data["data"]["max_train_examples"] = variant.train_size
    data["augment"] = augment.model_dump() if variant.augment else AugmentConfig().model_dump()
    return build_config(data, f"compare variant {variant.label}")


def variants(strategies: Sequence[str], inits: Sequence[str], train_sizes: Sequence[int | None],
             augment: Sequence[bool]) -> list[Variant]:
    """Every combination, strategies outermost."""
    return [Variant(s, i, n, a) for s in strategies for i in inits for n in train_sizes for a in augment]


def check_train_sizes(sizes: Sequence[int | None], available: int) -> None:
    """Learning-curve sizes must fit in the training data the config selects."""
    too_big = [n for n in sizes if n is not None and n > available]
    if too_big:
        raise UserError(f"--train-sizes asks for {', '.join(map(str, too_big))} training examples, but the training "
                        f"data has only {available}.",
                        f"Use sizes up to {available} (or 'all'), or raise --max-train-examples.")


def run_compare(cfg: RunConfig, strategies: Sequence[str], seeds: int = 1, inits: Sequence[str] = ("pretrained",),
                train_sizes: Sequence[int | None] = (None,), with_augment: bool = False, overwrite: bool = False,
                show_progress: bool = False,
                on_run: Callable[[Variant, int, dict], None] | None = None) -> CompareResult:
    """Train every variant with `seeds` seeds (cfg.seed, cfg.seed + 1, ...) in cfg.run_dir/<variant>-seed<k>; write
    compare.json / .csv, plots and report.html there. `with_augment` runs each variant without and with it."""
    if seeds < 1:
        raise UserError(f"--seeds {seeds}: at least one seed is needed.", "Pass --seeds 1 or more.")
    base_data = load_run_data(cfg)
    check_train_sizes(train_sizes, len(base_data.train))
    compile_strategies(cfg, prepare_run(cfg, base_data), strategies)
    with results_dir(cfg, overwrite) as out_dir:
        augment = cfg.augment if cfg.augment.enabled else DEFAULT_AUGMENT
        flags = (False, True) if with_augment else (cfg.augment.enabled,)
        data_cache: dict[tuple[int | None, int], RunData] = {}
        runs = []
        for variant in variants(strategies, inits, train_sizes, flags):
            for seed in range(cfg.seed, cfg.seed + seeds):
                run_cfg = variant_config(cfg, variant, seed, out_dir, augment)
                key = (variant.train_size, seed)
                if key not in data_cache:  # the same examples for every strategy of a seed and size
                    data_cache[key] = base_data if key == (None, cfg.seed) else load_run_data(run_cfg)
                with PeakMemory() as memory:
                    doc = train_run(run_cfg, show_progress=show_progress, data=data_cache[key])
                drop_checkpoints(run_cfg.run_dir)
                runs.append({"variant": variant.label, "strategy": variant.strategy, "init": variant.init,
                             "train_size": variant.train_size, "augment": variant.augment, "seed": seed,
                             "run_dir": str(run_cfg.run_dir), "train_examples": doc["train_examples"],
                             "eval": {k: v for k, v in doc["eval"].items() if isinstance(v, int | float)},
                             "train_time_s": doc["train_time_s"], "peak_memory_mb": memory.peak_mb,
                             "trainable_pct": [100 * p["trainable_ratio"] for p in doc["plan"]],
                             "warnings": [w["code"] for w in doc.get("warnings", [])]})
                if on_run is not None:
                    on_run(variant, seed, runs[-1])
        rows = [aggregate_variant(v, [r for r in runs if r["variant"] == v.label])
                for v in variants(strategies, inits, train_sizes, flags)]
        result = CompareResult(rows, runs, shown_metrics(runs[0]["eval"]))
        result.files = _write_outputs(out_dir, cfg, result, memory.method)
        return result


def aggregate_variant(variant: Variant, runs: list[dict]) -> dict:
    """One variant over its seeds: trainable share, mean ± std of each metric, mean time, peak memory."""
    ratios = runs[0]["trainable_pct"]
    metrics = aggregate_metrics([r["eval"] for r in runs])
    row = {"variant": variant.label, "strategy": variant.strategy, "init": variant.init,
           "train_size": runs[0]["train_examples"], "augment": variant.augment, "seeds": len(runs),
           "trainable_pct": round(max(ratios), 4), "trainable_pct_min": round(min(ratios), 4)}
    for name, stats in metrics.items():
        # one seed has no spread: None (n/a in the tables), never a misleading 0.0
        row[name], row[f"{name}_std"] = stats["mean"], stats["std"] if len(runs) > 1 else None
    row["train_time_s"] = round(summarize([r["train_time_s"] for r in runs])["mean"], 2)
    row["peak_memory_mb"] = max(r["peak_memory_mb"] for r in runs)
    row["warnings"] = sorted({code for r in runs for code in r["warnings"]})
    return row


def shown_metrics(evals: dict) -> list[str]:
    """The metrics the table shows: the task's headline metric (accuracy for classification), then F1 and ROC-AUC
    where the task has them."""
    first = headline_metric(evals)
    return [first] + [name for name in ("f1", "roc_auc") if name in evals and name != first]


def _write_outputs(out_dir: Path, cfg: RunConfig, result: CompareResult, memory_method: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = {"config": cfg.model_dump(mode="json"), "memory": memory_method, "metrics": result.metrics,
           "rows": result.rows, "runs": result.runs}
    files = [out_dir / "compare.json", out_dir / "compare.csv"]
    files[0].write_text(json.dumps(doc, indent=2))
    pd.DataFrame([{**r, "warnings": " ".join(r["warnings"])} for r in result.rows]).to_csv(files[1], index=False,
                                                                                           na_rep=NO_SPREAD)
    metric = result.metrics[0]
    plots = [p for p in (plot_metric_vs_time(result.rows, metric, out_dir / "plots" / "accuracy_vs_time.png"),
                         plot_learning_curve(result.rows, metric, out_dir / "plots" / "accuracy_vs_train_size.png"))
             if p is not None]
    report_rows = [_report_row(r, result.metrics) for r in result.rows]
    files.append(write_compare_report(out_dir, report_rows, plots))
    return files + plots


def _report_row(row: dict, metrics: Sequence[str]) -> dict:
    shown = {"strategy": row["variant"], "trainable %": trainable_text(row)}
    for name in metrics:
        shown[name] = row[name]
        shown[f"{name} std"] = NO_SPREAD if row[f"{name}_std"] is None else row[f"{name}_std"]
    shown |= {"train time (s)": row["train_time_s"], "peak memory (MB)": row["peak_memory_mb"],
              "train examples": row["train_size"], "seeds": row["seeds"], "warnings": ", ".join(row["warnings"])}
    return shown


def trainable_text(row: dict) -> str:
    """'1.2%', or '0.01-100%' for a plan whose phases train different shares."""
    low, high = row["trainable_pct_min"], row["trainable_pct"]
    return f"{high:.3g}%" if low == high else f"{low:.3g}-{high:.3g}%"


def _figure() -> tuple[Figure, Axes]:
    fig = Figure(figsize=(8, 5), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _save(fig: Figure, ax: Axes, xlabel: str, metric: str, title: str, path: Path) -> Path:
    ax.set_xscale("log")
    # ticks at 1, 2, 5 × 10^k written plainly (20, 200), not as 2×10¹; unlabelled minor ticks
    ax.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(xlabel)
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def _text(label: str) -> str:
    return label.replace("$", r"\$")  # never parsed as mathtext


def plot_metric_vs_time(rows: Sequence[dict], metric: str, path: Path) -> Path:
    """Each variant at (mean train time, mean metric) with its std as an error bar, on a log time axis."""
    fig, ax = _figure()
    for i, row in enumerate(rows):
        ax.errorbar(row["train_time_s"], row[metric], yerr=row[f"{metric}_std"] or 0.0, fmt="o", color=f"C{i % 10}",
                    capsize=3, label=_text(row["variant"]))
    return _save(fig, ax, "train time (s, log scale)", metric, f"{metric} vs training time", path)


def plot_learning_curve(rows: Sequence[dict], metric: str, path: Path) -> Path | None:
    """Metric vs number of training examples, one line per strategy / init / augmentation (needs 2+ sizes)."""
    if len({r["train_size"] for r in rows}) < 2:
        return None
    fig, ax = _figure()
    curves: dict[str, list[dict]] = {}
    for row in rows:
        label = Variant(row["strategy"], row["init"], None, row["augment"]).label
        curves.setdefault(label, []).append(row)
    for i, (label, points) in enumerate(curves.items()):
        points.sort(key=lambda r: r["train_size"])
        ax.errorbar([p["train_size"] for p in points], [p[metric] for p in points],
                    yerr=[p[f"{metric}_std"] or 0.0 for p in points], fmt="o-", color=f"C{i % 10}", capsize=3,
                    label=_text(label))
    return _save(fig, ax, "training examples (log scale)", metric, f"{metric} vs training-set size", path)
