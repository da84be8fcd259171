"""Size, latency, throughput and accuracy of every deployable variant of a run, side by side.

The machine is shared and noisy: each variant gets warm-up calls, then every measurement is repeated in rounds on
the same real eval texts; the table reports the median over the rounds and their spread (half the range, as a share
of the median), and a spread above `Settings.busy_spread` says the machine was busy while measuring, so that a
difference between variants smaller than the spread is not read as real.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from transferlab.deploy.artifacts import Variant, variants
from transferlab.deploy.evalset import EvalSet, load_eval_set, score
from transferlab.deploy.predictor import Predictor
from transferlab.errors import UserError

THROUGHPUT_BATCH = 32


@dataclass
class Settings:
    repeats: int = 100  # timed batch-1 calls per variant, split evenly over `rounds`
    warmup: int = 10
    throughput_batches: int = 4  # batches of 32 per throughput repeat
    throughput_repeats: int = 3
    threads: int | None = None  # None: torch's default, ONNX Runtime given the same number
    eval_limit: int | None = None  # None: the whole eval set
    rounds: int = 3  # latency is measured this many times (each round's percentiles; the median is reported)
    busy_spread: float = 0.10  # a spread above this share of the median means the machine was busy


@dataclass
class Measurement:
    variant: str
    backend: str
    int8: bool
    model_dir: str
    size_mb: float
    latency_p50_ms: float
    latency_p95_ms: float
    throughput_per_s: float
    score: float | None  # the task's headline metric on the eval set (accuracy, F1, Spearman...)
    metric: str
    latency_spread: float | None = None  # half the range of the rounds' p50, as a share of their median
    throughput_spread: float | None = None  # the same over the throughput repeats


def spread(values: list[float]) -> float | None:
    """Half the range of repeated measurements as a share of their median (None for a single measurement)."""
    if len(values) < 2:
        return None
    return float((max(values) - min(values)) / 2 / np.median(values))


def busy_warnings(rows: list[Measurement], limit: float) -> list[str]:
    """One line per measurement whose repeats varied more than `limit`: the machine was busy, and differences
    between variants smaller than that spread are noise."""
    lines = []
    for r in rows:
        for what, value in (("batch-1 latency", r.latency_spread), ("throughput", r.throughput_spread)):
            if value is not None and value > limit:
                lines.append(f"{r.variant}: {what} varied by ±{100 * value:.0f}% between repeats (limit "
                             f"±{100 * limit:.0f}%): the machine was busy; differences between variants below that "
                             "are noise. Measure again on a quiet machine (or with more --repeats).")
    return lines


def latencies(predictor: Predictor, frame: pd.DataFrame, repeats: int, warmup: int) -> np.ndarray:
    """Seconds per single-example call (encoding and decoding included), after warm-up calls."""
    for i in range(min(warmup, len(frame))):
        predictor.predict_frame(frame.iloc[i:i + 1])
    times = []
    for i in range(repeats):
        row = frame.iloc[[i % len(frame)]]
        start = time.perf_counter()
        predictor.predict_frame(row)
        times.append(time.perf_counter() - start)
    return np.array(times)


def throughput(predictor: Predictor, frame: pd.DataFrame, batches: int, repeats: int) -> list[float]:
    """Examples per second in batches of 32, once per repeat (after one warm-up batch)."""
    predictor.batch_size = THROUGHPUT_BATCH
    n = THROUGHPUT_BATCH * batches
    sample = pd.concat([frame] * (1 + n // max(len(frame), 1)), ignore_index=True).iloc[:n]
    predictor.predict_frame(sample.iloc[:THROUGHPUT_BATCH])
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        predictor.predict_frame(sample)
        rates.append(len(sample) / (time.perf_counter() - start))
    return rates


def measure(variant: Variant, evalset: EvalSet, settings: Settings) -> Measurement:
    """One variant's size, batch-1 latency percentiles, batch-32 throughput and eval score."""
    threads = settings.threads or torch.get_num_threads()
    predictor = Predictor(variant.model_dir, variant.backend, variant.int8, batch_size=THROUGHPUT_BATCH,
                          threads=threads, precision="bf16" if variant.bf16 else "fp32")
    lat = latencies(predictor, evalset.frame, settings.repeats, settings.warmup) * 1000
    rounds = np.array_split(lat, max(1, min(settings.rounds, len(lat))))
    p50s = [float(np.percentile(r, 50)) for r in rounds]
    p95s = [float(np.percentile(r, 95)) for r in rounds]
    rates = throughput(predictor, evalset.frame, settings.throughput_batches, settings.throughput_repeats)
    return Measurement(variant.name, variant.backend, variant.int8, str(variant.model_dir),
                       round(variant.size_bytes / 2**20, 2), round(float(np.median(p50s)), 2),
                       round(float(np.median(p95s)), 2), round(float(np.median(rates)), 1),
                       round(score(predictor, evalset), 4), predictor.task.metric,
                       _rounded(spread(p50s)), _rounded(spread(rates)))


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def machine() -> dict:
    """Where the figures were measured (they only compare within one machine)."""
    import onnxruntime
    import transformers

    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__, "transformers": transformers.__version__}


def benchmark_run(run_dir: Path, settings: Settings, on_result=None) -> dict:
    """Measure every variant of a run; write benchmark.json and plots/benchmark.png; return the document."""
    found = variants(run_dir)
    if not found:
        raise UserError(f"'{run_dir}' holds no model (no model/config.json).",
                        "Benchmark a run directory written by `transferlab train` or `transferlab demo`.")
    evalset = load_eval_set(run_dir, settings.eval_limit)
    rows = []
    for variant in found:
        rows.append(measure(variant, evalset, settings))
        if on_result is not None:
            on_result(rows[-1])
    doc = {"run": str(run_dir), "eval_examples": len(evalset), "settings": asdict(settings),
           "machine": machine(), "variants": [asdict(r) for r in rows],
           "warnings": busy_warnings(rows, settings.busy_spread)}
    (run_dir / "benchmark.json").write_text(json.dumps(doc, indent=2))
    plot_benchmark(rows, run_dir / "plots" / "benchmark.png")
    return doc


def plot_benchmark(rows: list[Measurement], path: Path) -> None:
    """Latency (x) against accuracy (y); the area of each point is the size on disk."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7.5, 5))
    biggest = max(r.size_mb for r in rows)
    for r in rows:
        ax.scatter(r.latency_p50_ms, r.score or 0, s=60 + 900 * r.size_mb / biggest, alpha=0.5)
        ax.annotate(f"{r.variant}\n{r.size_mb:.0f} MB", (r.latency_p50_ms, r.score or 0), fontsize=8,
                    ha="center", va="center")
    ax.set_xlabel("latency p50 at batch 1 (ms)")
    ax.set_ylabel(f"eval {rows[0].metric}")
    ax.set_title(f"size (point area) vs latency vs {rows[0].metric}")
    ax.grid(alpha=0.3)
    ax.margins(x=0.15, y=0.1)  # room for the labels of the outermost points
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
