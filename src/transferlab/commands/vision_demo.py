"""`transferlab demo --vision`: EfficientNet-Lite0 (ImageNet) fine-tuned on Fashion-MNIST, beside the same
architecture trained from random weights on the same images (wall times printed beside both).

The settings are chosen for a 2-core CPU and a 10-minute budget: 96 x 96 inputs (the 28 x 28 images upscaled), the
stem and the lowest five stages frozen (their output is computed once: the frozen-feature cache) and the top stages
and head trained for 2 epochs on 20,000 images; the held-out set is 2,000 images of the official test set, stratified.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.table import Table

from transferlab.commands.common import console, free_run_name, resolve_config
from transferlab.config import RunConfig

RESOLUTION = 96
TRAIN_IMAGES = 20_000
HELD_OUT_IMAGES = 2_000
SHOWN_PREDICTIONS = 6
SCRATCH_EPOCHS = 0.25  # 5,000 images: every layer of a random network trains, each step a full forward and backward


def demo_config(name: str, output: str, **changes) -> RunConfig:
    """The demo's run config; `changes` replace whole sections (the from-scratch run's model and strategy)."""
    base = {"name": name, "output_dir": output, "task": "image-classification",
            "model": {"name": "efficientnet-lite0"},
            "data": {"train": "fashion-mnist", "eval": "fashion-mnist-test", "max_train_examples": TRAIN_IMAGES,
                     "max_eval_examples": HELD_OUT_IMAGES},
            "image": {"resolution": RESOLUTION},
            "strategy": {"name": "freeze-bottom:5", "lr": 1e-3, "head_lr": 1e-3},
            "training": {"epochs": 2, "batch_size": 64, "schedule": "cosine"},
            # lr 1e-3 suits the top stages of a batch-normalised CNN (the default threshold is set for transformers)
            "doctor": {"max_pretrained_lr": 1e-3}}
    return resolve_config(None, {}, [], base={**base, **changes})


def confusion_table(metrics: dict, labels: list[str]) -> Table:
    """Rows: true class; columns: predicted class (numbered as the rows)."""
    table = Table(title="confusion matrix (rows: true class, columns: predicted)")
    table.add_column("true class")
    for i in range(len(labels)):
        table.add_column(str(i), justify="right")
    for i, (label, row) in enumerate(zip(labels, metrics["confusion_matrix"], strict=True)):
        table.add_row(f"{i} {label}", *(str(v) if v else "." for v in row))
    return table


def run_vision_demo(output: str, overwrite: bool, train_and_show) -> None:
    """Train, show, predict, then the from-scratch baseline; print both side by side with the wall time. Earlier
    demo runs are kept (saved beside them as demo-vision-2, ...) unless `overwrite`."""
    from transferlab.data.images import fashion_mnist
    from transferlab.deploy.predictor import Predictor
    from transferlab.pipeline import train_run

    start = time.perf_counter()
    def name(base: str) -> str:
        return base if overwrite else free_run_name(Path(output), base)

    cfg = demo_config(name("demo-vision"), output)
    doc = train_and_show(cfg, resume=False, overwrite=overwrite)
    console.print(confusion_table(doc["eval"], doc["labels"]))
    transfer_s = time.perf_counter() - start

    test = fashion_mnist("test").groupby("label").head(1).head(SHOWN_PREDICTIONS)
    console.print("[bold]predictions on Fashion-MNIST test images[/]")
    for (_, row), pred in zip(test.iterrows(), Predictor(cfg.run_dir).predict_frame(test), strict=True):
        console.print(f"  {row['path']:<22} true {row['label']:<12} predicted {pred['label']:<12} "
                      f"({pred['score']:.2f})")

    console.print(f"[bold]the same architecture from random weights, same images and resolution, {SCRATCH_EPOCHS} "
                  "epoch[/] (every layer trains: frozen random layers would learn nothing)")
    scratch = demo_config(name("demo-vision-scratch"), output, model={"name": "efficientnet-lite0", "init": "random"},
                          strategy={"name": "full", "lr": 1e-3, "head_lr": 1e-3},
                          training={"epochs": SCRATCH_EPOCHS, "batch_size": 64,
                                    "schedule": "cosine"})
    scratch_start = time.perf_counter()
    scratch_doc = train_run(scratch, overwrite=overwrite, show_progress=True)
    scratch_s = time.perf_counter() - scratch_start

    table = Table(title=f"Fashion-MNIST, {HELD_OUT_IMAGES:,} held-out test images")
    for column in ("EfficientNet-Lite0", "accuracy", "macro F1", "wall time"):
        table.add_column(column)
    for label, d, seconds in (("ImageNet weights, freeze-bottom:5", doc, transfer_s),
                              (f"random init, full, {SCRATCH_EPOCHS} epoch", scratch_doc, scratch_s)):
        table.add_row(label, f"{d['eval']['accuracy']:.4f}", f"{d['eval']['f1']:.4f}", f"{seconds:.0f}s")
    console.print(table)
    console.print(f"demo finished in {time.perf_counter() - start:.0f}s; runs saved to {cfg.run_dir} and "
                  f"{scratch.run_dir}")
