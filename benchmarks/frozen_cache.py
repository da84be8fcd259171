"""Feature extraction for 3 epochs: transformers.Trainer vs transferlab's frozen-feature cache.

Both train the same model (bundled MiniLM + transferlab's head, mean pooling) on the same tokenized
examples with the same optimizer (AdamW, lr 1e-3, weight decay 0.01), schedule (linear, 6% warmup),
batch sizes (32 train / 128 eval), an evaluation and a checkpoint each epoch, and the best epoch restored
at the end. transformers.Trainer runs the frozen body (requires_grad=False) on every batch of every epoch;
transferlab computes its pooled output once and trains the head on it.

    .venv/bin/python benchmarks/frozen_cache.py [--train 2000] [--eval 500] [--epochs 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from transformers import DataCollatorWithPadding, PrinterCallback, TrainingArguments
from transformers import Trainer as HFTrainer

from transferlab.cli import quiet_libraries
from transferlab.config import RunConfig, build_config
from transferlab.pipeline import PreparedRun, prepare_run
from transferlab.tasks.base import Encoded
from transferlab.training.trainer import Trainer


class Clock:
    """Wall time and this process's CPU time (all threads): CPU time stays fair on a shared, busy machine."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.figures = {"seconds": time.perf_counter() - self.wall, "cpu_seconds": time.process_time() - self.cpu}


# --precision -> transferlab's training.precision; transformers.Trainer runs bf16 autocast only for "bf16"
# ("defaults" compares each tool as it comes: transferlab's auto = bf16 where the hardware runs it natively)
TRANSFERLAB_PRECISION = {"fp32": "fp32", "bf16": "bf16", "defaults": "auto"}


def run_config(args: argparse.Namespace, root: Path, cache: bool) -> RunConfig:
    return build_config({
        "name": "bench", "output_dir": str(root), "seed": 42,
        "data": {"max_train_examples": args.train, "max_eval_examples": args.eval},
        "strategy": {"name": "feature-extraction", "lr": 1e-3},
        "training": {"epochs": args.epochs, "batch_size": 32, "eval_batch_size": 128, "weight_decay": 0.01,
                     "warmup": 0.06, "precision": TRANSFERLAB_PRECISION[args.precision], "feature_cache": cache,
                     "log_every": 50}})


def prepared(cfg: RunConfig) -> tuple[PreparedRun, Encoded, Encoded]:
    """A fresh model (same seed, so the same head init) and the encoded train / eval examples."""
    set_seed(cfg.seed)
    prep = prepare_run(cfg)
    return prep, prep.task.encoded(prep.data.train), prep.task.encoded(prep.data.eval)


def run_transferlab(args: argparse.Namespace, root: Path, cache: bool) -> dict:
    cfg = run_config(args, root / f"transferlab-{cache}", cache)
    prep, train, evaluation = prepared(cfg)
    trainer = Trainer(prep.model, prep.task, prep.groups, prep.phases, train, evaluation,
                      cfg.training, cfg.seed, cfg.run_dir, Accelerator(), show_progress=False)
    with Clock() as clock:
        trainer.train()
    _, metrics = trainer.evaluate()
    return clock.figures | {"accuracy": metrics["accuracy"]}


def run_hf(args: argparse.Namespace, root: Path) -> dict:
    cfg = run_config(args, root / "hf", cache=False)
    prep, train, evaluation = prepared(cfg)
    for p in prep.model.backbone.parameters():
        p.requires_grad = False
    hf_args = TrainingArguments(
        output_dir=str(root / "hf"), num_train_epochs=args.epochs, per_device_train_batch_size=32,
        per_device_eval_batch_size=128, learning_rate=1e-3, weight_decay=0.01, warmup_steps=0.06,
        lr_scheduler_type="linear", max_grad_norm=1.0, eval_strategy="epoch", save_strategy="epoch",
        save_total_limit=1, load_best_model_at_end=True, metric_for_best_model="accuracy", logging_strategy="no",
        report_to="none", seed=cfg.seed, bf16=args.precision == "bf16", use_cpu=not torch.cuda.is_available(),
        disable_tqdm=True, dataloader_num_workers=0)

    def accuracy(prediction) -> dict:
        return {"accuracy": float((np.argmax(prediction.predictions, -1) == prediction.label_ids).mean())}

    trainer = HFTrainer(model=prep.model, args=hf_args, train_dataset=train.features,
                        eval_dataset=evaluation.features, compute_metrics=accuracy,
                        data_collator=DataCollatorWithPadding(prep.task.processor.tokenizer))
    trainer.remove_callback(PrinterCallback)
    with Clock() as clock:
        trainer.train()
    return clock.figures | {"accuracy": trainer.evaluate()["eval_accuracy"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=2000, help="training reviews")
    parser.add_argument("--eval", type=int, default=500, help="held-out reviews")
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--precision", choices=tuple(TRANSFERLAB_PRECISION), default="fp32",
                        help="fp32 / bf16 for both, or each tool's defaults")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--skip-uncached", action="store_true", help="skip transferlab without the cache")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    quiet_libraries()
    if args.threads:
        torch.set_num_threads(args.threads)
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        runs["transformers.Trainer"] = run_hf(args, root)
        if not args.skip_uncached:
            runs["transferlab, cache off"] = run_transferlab(args, root, cache=False)
        runs["transferlab (frozen-feature cache)"] = run_transferlab(args, root, cache=True)
    device = "cuda" if torch.cuda.is_available() else f"cpu, {torch.get_num_threads()} threads"
    print(f"feature extraction, {args.epochs:g} epochs, {args.train:,} train / {args.eval:,} eval reviews, "
          f"MiniLM-L6, {args.precision}, {device}")
    print(f"{'runner':<36} {'wall s':>8} {'CPU s':>8} {'accuracy':>9}")
    for name, r in runs.items():
        print(f"{name:<36} {r['seconds']:>8.1f} {r['cpu_seconds']:>8.1f} {r['accuracy']:>9.4f}")
    hf, ours = runs["transformers.Trainer"], runs["transferlab (frozen-feature cache)"]
    speedup = {"wall": hf["seconds"] / ours["seconds"], "cpu": hf["cpu_seconds"] / ours["cpu_seconds"]}
    print(f"speed-up of transferlab over transformers.Trainer: {speedup['wall']:.1f}x wall time, "
          f"{speedup['cpu']:.1f}x CPU time (required >= 5x, goal >= 10x)")
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "device": device,
                                         "runs": runs, "speedup": speedup}, indent=2))


if __name__ == "__main__":
    main()
