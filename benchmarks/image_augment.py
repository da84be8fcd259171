"""Held-out accuracy and training time of an image run without and with augmentation (and each with flip TTA), in one
process, one after the other.

    python benchmarks/image_augment.py [--train 2000] [--eval 500] [--resolution 96] [--epochs 3]
        [--strategy freeze-bottom:4] [--presets none,light] [--seed 42] [--output runs/bench-augment]

EfficientNet-Lite0 (ImageNet weights) on a stratified subset of Fashion-MNIST's training set, scored on a stratified
subset of its official test set; lr 1e-3 (head too), cosine, batch 32. Without augmentation the frozen stages run
once (frozen-feature cache); with it they run on every training batch, which is most of the time difference.
"""

from __future__ import annotations

import argparse
import time

from transferlab.config import build_config
from transferlab.deploy.predictor import Predictor
from transferlab.pipeline import load_run_data, train_run


def run_config(args: argparse.Namespace, preset: str) -> dict:
    return {"name": f"augment-{preset}", "output_dir": args.output, "seed": args.seed, "task": "image-classification",
            "model": {"name": "efficientnet-lite0"},
            "data": {"train": "fashion-mnist", "eval": "fashion-mnist-test", "max_train_examples": args.train,
                     "max_eval_examples": args.eval},
            "image": {"resolution": args.resolution, "augment": {"preset": preset}},
            "strategy": {"name": args.strategy, "lr": 1e-3, "head_lr": 1e-3},
            "training": {"epochs": args.epochs, "batch_size": 32, "schedule": "cosine"},
            "doctor": {"train_eval_examples": 0}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--eval", type=int, default=500)
    parser.add_argument("--resolution", type=int, default=96)
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--strategy", default="freeze-bottom:4")
    parser.add_argument("--presets", default="none,light")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--output", default="runs/bench-augment")
    args = parser.parse_args()
    rows = []
    for preset in args.presets.split(","):
        cfg = build_config(run_config(args, preset))
        start = time.perf_counter()
        doc = train_run(cfg, overwrite=True, show_progress=False)
        wall = time.perf_counter() - start
        frame = load_run_data(cfg).eval
        tta = Predictor(cfg.run_dir, tta="flip").evaluate(frame)["accuracy"]
        rows.append((preset, doc["eval"]["accuracy"], tta, doc["train_time_s"], wall))
    print(f"{'augment':<8} {'accuracy':>9} {'with TTA':>9} {'train s':>8} {'wall s':>7}")
    for preset, accuracy, tta, train_s, wall in rows:
        print(f"{preset:<8} {accuracy:>9.4f} {tta:>9.4f} {train_s:>8.1f} {wall:>7.1f}")


if __name__ == "__main__":
    main()
