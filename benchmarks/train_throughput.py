"""Training throughput: transformers.Trainer vs transferlab, same model, examples, length, batch size, epochs.

Both sides train the same freshly built model (bundled MiniLM + transferlab's mean-pooling head, so the
accuracies are comparable) with the same trainable parameters (the strategy's plan), lr, warmup, weight decay
and gradient clipping, and each does one evaluation and one checkpoint per epoch inside its timed loop.
transformers.Trainer runs as a user would run it (fp32, random batches padded to their longest example);
`--hf-tuned` gives it bf16 and length-grouped batches too.

    .venv/bin/python benchmarks/train_throughput.py [--train 2000] [--eval 500] [--epochs 2] [--threads 1]

On a machine shared with other jobs pass `--threads 1`: with more threads than free cores, OpenMP
synchronisation dominates both sides and hides the difference.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import DataCollatorWithPadding, PrinterCallback, Trainer, TrainingArguments
from transformers import set_seed as hf_set_seed

from transferlab.config import RunConfig, apply_override, build_config
from transferlab.pipeline import prepare_run, train_run


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=int, default=2000, help="training examples (bundled reviews)")
    parser.add_argument("--eval", type=int, default=500, help="held-out examples")
    parser.add_argument("--epochs", type=float, default=2, help="1 epoch leaves accuracy at the mercy of batch order")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--strategy", default="freeze-attention", help="full | freeze-attention | ...")
    parser.add_argument("--lr", type=float, default=1e-4, help="one lr for body and head (Trainer has one)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--hf-tuned", action="store_true", help="give HF bf16 and length-grouped batches too")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="config override for both sides, e.g. training.precision=fp32 (transferlab only)")
    parser.add_argument("--skip-hf", action="store_true", help="only the transferlab side (for experiments)")
    return parser.parse_args()


def bench_config(args: argparse.Namespace, output: Path) -> RunConfig:
    data = {
        "name": "transferlab", "output_dir": str(output), "seed": args.seed,
        "data": {"max_train_examples": args.train, "max_eval_examples": args.eval},
        "model": {"max_length": args.max_length},
        "strategy": {"name": args.strategy, "lr": args.lr, "head_lr": args.lr},  # Trainer has one lr
        "training": {"epochs": args.epochs, "batch_size": args.batch_size},
        "doctor": {"enabled": False},  # its extra scoring pass is not part of the comparison
    }
    for assignment in args.overrides:
        apply_override(data, assignment)
    return build_config(data, "the benchmark")


def run_transferlab(cfg: RunConfig) -> dict:
    start = time.perf_counter()
    doc = train_run(cfg, overwrite=True, show_progress=False)
    return {"samples_per_s": doc["train_samples_per_s"], "train_s": doc["train_time_s"],
            "accuracy": doc["eval"]["accuracy"], "wall_s": time.perf_counter() - start,
            "precision": doc["precision"]}


def run_hf(cfg: RunConfig, args: argparse.Namespace, output: Path) -> dict:
    """transformers.Trainer on the same examples, model and trainable parameters as the transferlab run."""
    start = time.perf_counter()
    hf_set_seed(cfg.seed)
    prep = prepare_run(cfg)
    (phase,) = prep.phases  # a one-phase strategy: Trainer has no notion of phases
    lrs = set(phase.lrs.values())
    assert len(lrs) == 1, "Trainer has a single lr; use a strategy whose groups share one"
    for p in prep.model.parameters():
        p.requires_grad_(False)
    for group in phase.lrs:
        for _, p in prep.groups[group].params:
            p.requires_grad_(True)
    t = cfg.training
    train = prep.task.encode(prep.data.train)
    evaluation = prep.task.encode(prep.data.eval)
    training_args = TrainingArguments(
        output_dir=str(output / "hf"), per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.eval_batch_size, num_train_epochs=t.epochs, learning_rate=lrs.pop(),
        weight_decay=t.weight_decay, warmup_steps=t.warmup, lr_scheduler_type=t.schedule,
        max_grad_norm=t.max_grad_norm, eval_strategy="epoch", save_strategy="epoch", logging_strategy="no",
        report_to="none", seed=cfg.seed, disable_tqdm=True, use_cpu=not torch.cuda.is_available(),
        bf16=args.hf_tuned, train_sampling_strategy="group_by_length" if args.hf_tuned else "random",
    )
    trainer = Trainer(model=prep.model, args=training_args, train_dataset=train, eval_dataset=evaluation,
                      data_collator=DataCollatorWithPadding(prep.task.processor.tokenizer))
    trainer.remove_callback(PrinterCallback)  # its per-epoch log lines would interleave with the table
    result = trainer.train()
    logits = trainer.predict(evaluation).predictions
    labels = np.array([f["labels"] for f in evaluation])
    return {"samples_per_s": result.metrics["train_samples_per_second"], "train_s": result.metrics["train_runtime"],
            "accuracy": float((logits.argmax(-1) == labels).mean()), "wall_s": time.perf_counter() - start,
            "precision": "bf16" if args.hf_tuned else "fp32"}


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = bench_config(args, Path(tmp))
        print(f"{args.train} train / {args.eval} held-out bundled reviews, max_length {args.max_length}, "
              f"batch {args.batch_size}, {args.epochs:g} epoch(s), strategy {args.strategy}, "
              f"{torch.get_num_threads()} threads")
        results = {} if args.skip_hf else {"transformers.Trainer": run_hf(cfg, args, Path(tmp))}
        results["transferlab"] = run_transferlab(cfg)
    print(f"\n{'':22}{'samples/s':>10}{'train s':>9}{'held-out acc':>14}  precision")
    for name, r in results.items():
        print(f"{name:22}{r['samples_per_s']:>10.1f}{r['train_s']:>9.1f}{r['accuracy']:>14.4f}  {r['precision']}")
    if args.skip_hf:
        return
    hf, tl = results["transformers.Trainer"], results["transferlab"]
    print(f"\nspeed ratio transferlab / transformers.Trainer: {tl['samples_per_s'] / hf['samples_per_s']:.2f}x; "
          f"accuracy difference: {100 * (tl['accuracy'] - hf['accuracy']):+.1f} points")


if __name__ == "__main__":
    main()
