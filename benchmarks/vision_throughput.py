"""Training images/s and held-out accuracy of a plain PyTorch loop and of transferlab, side by side in one run.

    python benchmarks/vision_throughput.py [--mode finetune|features] [--train 2000] [--eval 500]
        [--resolution 96] [--epochs 3] [--batch-size 32] [--data fashion-mnist]

Both sides train the same model (EfficientNet-Lite0 with a new linear head, built by the image task), on the same
images, at the same resolution, batch size, epochs and lr. The plain loop is the one the transformers
image-classification docs write: fp32, `model.train()`, a shuffled DataLoader whose collate runs the model's image
processor, AdamW over the parameters that learn. `finetune` trains every layer (transferlab: strategy full);
`features` trains the head on a frozen backbone (transferlab: feature-extraction, which computes the frozen
features once). Both evaluate the held-out images after every epoch inside the timed span, as a run that selects
its best epoch must (the Trainer example in the same docs sets `eval_strategy="epoch"`). Printed: images/s of each
side, their held-out accuracy and the ratio; then the time of one training step of the same model in fp32
(contiguous and channels-last) and under bf16 autocast (channels-last; then with depthwise convolutions kept in fp32,
as transferlab trains under bf16 on a CPU), so the effect of each is visible.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.data import DataLoader

from transferlab.config import build_config
from transferlab.data.images import open_image
from transferlab.pipeline import prepare_run, train_run
from transferlab.training.fp32_depthwise import depthwise_in_fp32

LR = 1e-3
CL = torch.channels_last


def run_config(args: argparse.Namespace, name: str) -> dict:
    return {"name": name, "output_dir": args.output, "task": "image-classification",
            "model": {"name": "efficientnet-lite0"},
            "data": {"train": args.data, "max_train_examples": args.train, "max_eval_examples": args.eval},
            "image": {"resolution": args.resolution},
            "strategy": {"name": "full" if args.mode == "finetune" else "feature-extraction", "lr": LR,
                         "head_lr": LR},
            "training": {"epochs": args.epochs, "batch_size": args.batch_size, "warmup": 0.0,
                         "schedule": "constant", "precision": args.precision},
            "doctor": {"enabled": False}}


def plain_loop(args: argparse.Namespace) -> tuple[float, float]:
    """(images/s, held-out accuracy) of the documented PyTorch loop on the same model and data."""
    prep = prepare_run(build_config(run_config(args, "plain")))
    model, processor = prep.model, prep.task.processor.image_processor
    if args.mode == "features":
        for p in model.backbone.parameters():
            p.requires_grad_(False)
    label_id = prep.task.label_to_id

    def collate(rows):
        pixels = processor([open_image(r["image"]).convert("RGB") for r in rows], return_tensors="pt")
        return pixels["pixel_values"], torch.tensor([label_id[r["label"]] for r in rows])

    train = DataLoader(prep.data.train.to_dict("records"), batch_size=args.batch_size, shuffle=True,
                       collate_fn=collate)
    held_out = DataLoader(prep.data.eval.to_dict("records"), batch_size=128, collate_fn=collate)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR)
    start = time.perf_counter()
    for _ in range(args.epochs):
        model.train()
        for pixels, labels in train:
            loss = model(pixel_values=pixels, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        model.eval()
        correct = 0
        with torch.no_grad():
            for pixels, labels in held_out:
                correct += int((model(pixel_values=pixels).logits.argmax(-1) == labels).sum())
    seconds = time.perf_counter() - start
    return len(prep.data.train) * args.epochs / seconds, correct / len(prep.data.eval)


def step_times(args: argparse.Namespace, steps: int = 6) -> dict[str, float]:
    """Seconds per training step (every layer learning) of one batch in each memory format and precision."""
    model = prepare_run(build_config(run_config(args, "formats"))).model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    pixels = torch.randn(args.batch_size, 3, args.resolution, args.resolution)
    labels = torch.zeros(args.batch_size, dtype=torch.long)
    cl = pixels.to(memory_format=CL)
    variants = {"fp32, contiguous": (pixels, None, False), "fp32, channels-last": (cl, None, False),
                "bf16 autocast, channels-last": (cl, torch.bfloat16, False),
                "the same, depthwise in fp32": (cl, torch.bfloat16, True)}
    times = {}
    for name, (x, dtype, fp32_depthwise) in variants.items():
        if fp32_depthwise:  # what transferlab's trainer does under bf16 on a CPU (the last variant: not undone)
            depthwise_in_fp32(model)
        for i in range(steps + 1):  # the first step warms up
            if i == 1:
                start = time.perf_counter()
            with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
                loss = model(pixel_values=x, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        times[name] = (time.perf_counter() - start) / steps
    return times


def transferlab_run(args: argparse.Namespace) -> tuple[float, float]:
    doc = train_run(build_config(run_config(args, "transferlab")), overwrite=True, show_progress=False)
    return doc["train_examples"] * args.epochs / doc["train_time_s"], doc["eval"]["accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("finetune", "features"), default="finetune")
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--eval", type=int, default=500)
    parser.add_argument("--resolution", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="transferlab's training.precision (the plain loop is fp32, as the docs write it)")
    parser.add_argument("--output", default="runs/bench-vision")
    args = parser.parse_args()
    torch.manual_seed(0)
    plain_speed, plain_acc = plain_loop(args)
    ours_speed, ours_acc = transferlab_run(args)
    print(f"{args.mode}: {args.train} images x {args.epochs} epochs at {args.resolution}px, batch {args.batch_size}, "
          f"{torch.get_num_threads()} threads")
    print(f"  plain PyTorch loop: {plain_speed:8.1f} images/s, held-out accuracy {plain_acc:.4f}")
    print(f"  transferlab:        {ours_speed:8.1f} images/s, held-out accuracy {ours_acc:.4f}")
    print(f"  ratio (transferlab / plain): {ours_speed / plain_speed:.2f}x; accuracy difference "
          f"{100 * (ours_acc - plain_acc):+.1f} points")
    print(f"one training step, batch {args.batch_size} at {args.resolution}px, every layer learning:")
    times = step_times(args)
    for name, seconds in times.items():
        print(f"  {name:<30} {1000 * seconds:7.0f} ms  ({times['fp32, contiguous'] / seconds:.2f}x fp32 contiguous)")


if __name__ == "__main__":
    main()
