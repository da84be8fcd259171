"""Held-out accuracy: transformers.Trainer's default recipe vs transferlab `--strategy auto` on the same split.

Both sides read the same stratified 80/20 split (seed 42) of all the bundled reviews; each seed then trains both:

- transformers.Trainer as its documentation runs it: AutoModelForSequenceClassification on the bundled MiniLM (a
  [CLS] pooler head), every TrainingArguments default (lr 5e-5, batch 8, 3 epochs, linear decay, no warmup);
- transferlab `--strategy auto` with a budget of the seconds the Trainer's 3 epochs of full fine-tuning took on
  this machine for this seed, probes included (the printed times show what each side really used).

Neither side sees the held-out labels before it is scored. The Trainer's recipe keeps its last weights, and so does
transferlab by default (`--select last`: the whole training split, the held-out split only watched); with
`--select validation` it selects its best epoch on a stratified 10% of the training split that it then does not
train on. Its saved model is scored on the held-out split.

    .venv/bin/python benchmarks/quality_vs_hf.py [--seeds 3] [--limit 2000] [--threads 2]

`--limit N` keeps a stratified N of the training split and N/4 of the held-out split: a quick check that both
sides run, not a quality figure. Times on a machine shared with other jobs are noisy, and auto's budget follows
the Trainer's measured time, so say under which load a figure was taken.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    PrinterCallback,
    Trainer,
    TrainingArguments,
)
from transformers import set_seed as hf_set_seed

from transferlab.backbones import resolve_model_dir
from transferlab.config import build_config
from transferlab.data.splits import stratified_split, subsample
from transferlab.deploy.predictor import Predictor
from transferlab.lab.auto import run_auto
from transferlab.pipeline import load_run_data
from transferlab.tasks.base import RunData
from transferlab.training.baselines import is_baseline

SPLIT_SEED = 42
VALIDATION = 0.1  # of the training split: where transferlab selects its best epoch


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="training seeds 42, 43, ... (the split stays seed 42)")
    parser.add_argument("--limit", type=int, default=None, help="stratified training examples kept (quick check)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--budget", default=None, help="auto's budget instead of the Trainer's time, e.g. 10m")
    parser.add_argument("--select", choices=("last", "validation"), default="last",
                        help="transferlab's weights: the last, or the best epoch on 10%% of the training split")
    parser.add_argument("--skip-hf", action="store_true", help="only the transferlab side (needs --budget)")
    args = parser.parse_args()
    if args.skip_hf and not args.budget:
        parser.error("--skip-hf needs --budget: auto's budget is otherwise the Trainer's time")
    return args


def split(limit: int | None) -> RunData:
    """The stratified 80/20 split (seed 42) of all the bundled reviews, optionally cut to `limit` train examples."""
    data = load_run_data(build_config({"seed": SPLIT_SEED}))
    if limit is None:
        return data
    return RunData(subsample(data.train, limit, SPLIT_SEED), subsample(data.eval, max(limit // 4, 20), SPLIT_SEED),
                   data.labels)


def run_hf(data: RunData, seed: int, output: Path) -> dict:
    """transformers.Trainer with its default recipe: a [CLS] pooler head, lr 5e-5, batch 8, 3 epochs."""
    hf_set_seed(seed)
    model_dir = str(resolve_model_dir("minilm"))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    label_ids = {name: i for i, name in enumerate(data.labels)}
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=len(label_ids))

    def encode(frame):
        return [{**tokenizer(text, truncation=True), "labels": label_ids[label]}
                for text, label in zip(frame["text"], frame["label"], strict=True)]

    args = TrainingArguments(output_dir=str(output / f"hf-{seed}"), seed=seed, report_to="none",
                             save_strategy="no", eval_strategy="no", logging_strategy="no", disable_tqdm=True,
                             use_cpu=not torch.cuda.is_available())
    held_out = encode(data.eval)
    trainer = Trainer(model=model, args=args, train_dataset=encode(data.train),
                      data_collator=DataCollatorWithPadding(tokenizer))
    trainer.remove_callback(PrinterCallback)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    logits = trainer.predict(held_out).predictions
    labels = np.array([f["labels"] for f in held_out])
    return {"accuracy": float((logits.argmax(-1) == labels).mean()), "seconds": seconds, "plan": "full, 3 epochs"}


def run_transferlab(data: RunData, seed: int, budget: str, select: str, output: Path) -> dict:
    """transferlab --strategy auto within `budget` (probes + the chosen plan's run), its weights chosen by `select`;
    its saved model scored on the held-out split."""
    cfg = build_config({"name": f"auto-{seed}", "output_dir": str(output), "seed": seed,
                        "strategy": {"name": "auto", "budget": budget},
                        "training": {"restore_best": select == "validation"}})
    if select == "validation":
        train, watched = stratified_split(data.train, VALIDATION, SPLIT_SEED)
    else:  # the held-out split is only watched (eval records), never chosen on: the last weights are kept
        train, watched = data.train, data.eval
    start = time.perf_counter()
    doc = run_auto(cfg, overwrite=True, show_progress=False, data=RunData(train, watched, data.labels))
    seconds = time.perf_counter() - start
    held_out = Predictor(output / f"auto-{seed}").evaluate(data.eval)
    decision = doc["auto"]
    epochs = "" if is_baseline(decision["chosen"]) else f", {decision['epochs']:g} epochs"
    probes = ", ".join(f"{c['strategy']} {c['probe_score']:.3f}" for c in decision["candidates"]
                       if c["probe_score"] is not None)
    return {"accuracy": held_out["accuracy"], "seconds": seconds,
            "plan": f"{decision['chosen']}{epochs}; probes {decision['probe_time_s']:.0f}s: {probes}"}


def mean_std(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{100 * statistics.mean(values):.2f} ± {100 * spread:.2f}"


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = split(args.limit)
    print(f"{len(data.train):,} train / {len(data.eval):,} held-out bundled reviews (stratified split, seed "
          f"{SPLIT_SEED}), {args.seeds} seed(s), {torch.get_num_threads()} threads")
    results: dict[str, list[dict]] = {"transformers.Trainer": [], "transferlab auto": []}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(SPLIT_SEED, SPLIT_SEED + args.seeds):
            hf = None if args.skip_hf else run_hf(data, seed, Path(tmp))
            tl = run_transferlab(data, seed, args.budget or f"{hf['seconds']:.0f}s", args.select, Path(tmp))
            for name, r in (("transformers.Trainer", hf), ("transferlab auto", tl)):
                if r is None:
                    continue
                results[name].append(r)
                print(f"seed {seed}  {name:22} accuracy {r['accuracy']:.4f}  {r['seconds']:7.1f}s  {r['plan']}",
                      flush=True)
    print(f"\n{'':22}{'accuracy % (mean ± std)':>26}{'mean time':>12}")
    for name, runs in results.items():
        if not runs:
            continue
        print(f"{name:22}{mean_std([r['accuracy'] for r in runs]):>26}"
              f"{statistics.mean(r['seconds'] for r in runs):>11.1f}s")
    if args.skip_hf:
        return
    hf_acc = statistics.mean(r["accuracy"] for r in results["transformers.Trainer"])
    tl_acc = statistics.mean(r["accuracy"] for r in results["transferlab auto"])
    print(f"\ndifference transferlab auto - transformers.Trainer: {100 * (tl_acc - hf_acc):+.2f} points "
          "(goal: +1.0 or more)")


if __name__ == "__main__":
    main()
