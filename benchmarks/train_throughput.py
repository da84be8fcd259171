"""Training throughput: transformers.Trainer (plain and tuned) vs transferlab, and the share of the machine's peak.

Every side trains the same freshly built model (bundled MiniLM + transferlab's mean-pooling head, so the accuracies
are comparable) on the same examples with the same trainable parameters (the strategy's plan), lr, warmup, weight
decay, gradient clipping, batch size and epochs, and each does one evaluation and one checkpoint per epoch inside
its timed loop. The three sides:

- `Trainer`: transformers.Trainer as users run it (fp32, random batches padded to their longest example);
- `Trainer tuned`: the same with the two levers any Trainer user can switch on, bf16 and `group_by_length`;
- `transferlab`: `transferlab train` with its defaults.

The script also times a large bf16 matmul (the machine's practical peak) and prints each side's useful training
FLOP/s as a share of it: 2 FLOPs per weight per real token forward, 2 more for the input gradient where something
below still learns, 2 more for the weight gradient of a trainable weight (6·N·T for full fine-tuning; padding,
attention scores and embedding lookups do not count; the head counts once per example). Evaluation forwards count
too, since they are inside the timed loop.

    .venv/bin/python benchmarks/train_throughput.py [--strategy freeze-attention,full] [--repeats 1] [--threads N]

Sides run interleaved (A, B, C, A, B, C...) so that a machine shared with other jobs slows them alike; with
`--repeats` > 1 the table shows medians.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import DataCollatorWithPadding, PrinterCallback, Trainer, TrainingArguments
from transformers import set_seed as hf_set_seed

from transferlab.config import RunConfig, apply_override, build_config
from transferlab.pipeline import PreparedRun, prepare_run, train_run

SIDES = ("Trainer", "Trainer tuned", "transferlab")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=int, default=2000, help="training examples (bundled reviews)")
    parser.add_argument("--eval", type=int, default=500, help="held-out examples")
    parser.add_argument("--epochs", type=float, default=2, help="1 epoch leaves accuracy at the mercy of batch order")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--strategy", default="freeze-attention,full", help="comma-separated one-lr strategies")
    parser.add_argument("--lr", type=float, default=1e-4, help="one lr for body and head (Trainer has one)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved runs of each side (medians shown)")
    parser.add_argument("--sides", default=",".join(SIDES), help=f"comma-separated subset of {', '.join(SIDES)}")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="config override (transferlab side only), e.g. training.precision=fp32")
    return parser.parse_args()


def bench_config(args: argparse.Namespace, strategy: str, output: Path, overrides: list[str]) -> RunConfig:
    data = {
        "name": "transferlab", "output_dir": str(output), "seed": args.seed,
        "data": {"max_train_examples": args.train, "max_eval_examples": args.eval},
        "model": {"max_length": args.max_length},
        "strategy": {"name": strategy, "lr": args.lr, "head_lr": args.lr},  # Trainer has one lr
        "training": {"epochs": args.epochs, "batch_size": args.batch_size},
        "doctor": {"enabled": False},  # its extra scoring pass is not part of the comparison
    }
    for assignment in overrides:
        apply_override(data, assignment)
    return build_config(data, "the benchmark")


def run_transferlab(cfg: RunConfig) -> dict:
    doc = train_run(cfg, overwrite=True, show_progress=False)
    return {"samples_per_s": doc["train_samples_per_s"], "train_s": doc["train_time_s"],
            "accuracy": doc["eval"]["accuracy"], "precision": doc["precision"]}


def freeze_as_planned(prep: PreparedRun) -> float:
    """Make exactly the plan's parameters trainable (Trainer has no plans); return the one lr they share."""
    (phase,) = prep.phases  # a one-phase strategy: Trainer has no notion of phases
    lrs = set(phase.lrs.values())
    assert len(lrs) == 1, "Trainer has a single lr; use a strategy whose groups share one"
    for p in prep.model.parameters():
        p.requires_grad_(False)
    for group in phase.lrs:
        for _, p in prep.groups[group].params:
            p.requires_grad_(True)
    return lrs.pop()


def run_hf(cfg: RunConfig, tuned: bool, output: Path) -> dict:
    """transformers.Trainer on the same examples, model and trainable parameters as the transferlab run."""
    hf_set_seed(cfg.seed)
    prep = prepare_run(cfg)
    lr = freeze_as_planned(prep)
    t = cfg.training
    train = prep.task.encode(prep.data.train)
    evaluation = prep.task.encode(prep.data.eval)
    training_args = TrainingArguments(
        output_dir=str(output / "hf"), per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.eval_batch_size or prep.task.eval_batch_size,
        num_train_epochs=t.epochs, learning_rate=lr,
        weight_decay=t.weight_decay, warmup_steps=t.warmup, lr_scheduler_type=t.schedule,
        max_grad_norm=t.max_grad_norm, eval_strategy="epoch", save_strategy="epoch", logging_strategy="no",
        report_to="none", seed=cfg.seed, disable_tqdm=True, use_cpu=not torch.cuda.is_available(),
        bf16=tuned, train_sampling_strategy="group_by_length" if tuned else "random",
    )
    trainer = Trainer(model=prep.model, args=training_args, train_dataset=train, eval_dataset=evaluation,
                      data_collator=DataCollatorWithPadding(prep.task.processor.tokenizer))
    trainer.remove_callback(PrinterCallback)  # its per-epoch log lines would interleave with the table
    result = trainer.train()
    # with group_by_length, Trainer 5.x also length-groups the *evaluation* sampler: predictions come back in
    # that order, not the dataset's, so they are scored against the label_ids returned beside them
    predicted = trainer.predict(evaluation)
    return {"samples_per_s": result.metrics["train_samples_per_second"], "train_s": result.metrics["train_runtime"],
            "accuracy": float((predicted.predictions.argmax(-1) == predicted.label_ids).mean()),
            "precision": "bfloat16" if tuned else "fp32"}


def run_side(side: str, cfg: RunConfig, output: Path) -> dict:
    if side == "transferlab":
        return run_transferlab(cfg)
    return run_hf(cfg, tuned=side == "Trainer tuned", output=output)


def bf16_matmul_peak(threads: int, size: int = 2048, seconds: float = 3.0) -> float:
    """FLOP/s of the best of repeated square bf16 matmuls: what this machine's cores reach on dense work."""
    a = torch.randn(size, size, dtype=torch.bfloat16)
    b = torch.randn(size, size, dtype=torch.bfloat16)
    torch.matmul(a, b)  # warm-up: kernel selection, page faults
    best, deadline = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def flops_per_pass(prep: PreparedRun, trainable: set[int]) -> tuple[float, float, float, float]:
    """(training FLOPs per token, per example; evaluation FLOPs per token, per example) of the Linear layers.

    Forward 2 per weight; backward 2 for the input gradient where a trainable parameter sits below (earlier in the
    forward pass), 2 for the weight gradient of a trainable weight. Backbone layers run per token, the head per
    example."""
    body_ids = {id(m) for m in prep.model.backbone.modules()}
    train_tok = train_ex = eval_tok = eval_ex = 0.0
    below_learns = False
    for module in prep.model.modules():
        own = [p for p in module.parameters(recurse=False)]
        if isinstance(module, torch.nn.Linear):
            n = module.weight.numel()
            train = 2 * n + (2 * n if below_learns else 0) + (2 * n if id(module.weight) in trainable else 0)
            if id(module) in body_ids:
                train_tok, eval_tok = train_tok + train, eval_tok + 2 * n
            else:
                train_ex, eval_ex = train_ex + train, eval_ex + 2 * n
        below_learns = below_learns or any(id(p) in trainable for p in own)
    return train_tok, train_ex, eval_tok, eval_ex


def useful_flops(cfg: RunConfig) -> tuple[float, dict]:
    """Useful FLOPs of one training run (training passes + one evaluation per epoch) and what they rest on."""
    prep = prepare_run(cfg)
    freeze_as_planned(prep)
    trainable = {id(p) for p in prep.model.parameters() if p.requires_grad}
    train_tok, train_ex, eval_tok, eval_ex = flops_per_pass(prep, trainable)
    tokens = lambda frame: sum(len(f["input_ids"]) for f in prep.task.encode(frame))  # noqa: E731
    t_train, t_eval = tokens(prep.data.train), tokens(prep.data.eval)
    n_train, n_eval = len(prep.data.train), len(prep.data.eval)
    epochs, evaluations = cfg.training.epochs, int(np.ceil(cfg.training.epochs))
    total = epochs * (train_tok * t_train + train_ex * n_train) + evaluations * (eval_tok * t_eval + eval_ex * n_eval)
    matmul_params = sum(m.weight.numel() for m in prep.model.modules() if isinstance(m, torch.nn.Linear))
    return total, {"tokens_per_example": t_train / n_train, "linear_params": matmul_params,
                   "trainable": sum(p.numel() for p in prep.model.parameters() if p.requires_grad)}


def main() -> None:
    args = parse_args()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # its bars would interleave with the table
    if args.threads:
        torch.set_num_threads(args.threads)
    strategies = [s.strip() for s in args.strategy.split(",") if s.strip()]
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    assert set(sides) <= set(SIDES), f"--sides takes a subset of {SIDES}"
    threads = torch.get_num_threads()
    peak = bf16_matmul_peak(threads)
    print(f"{args.train} train / {args.eval} held-out bundled reviews, max_length {args.max_length}, batch "
          f"{args.batch_size}, {args.epochs:g} epoch(s), lr {args.lr:g}, {threads} torch threads, {args.repeats} "
          f"interleaved run(s) per side; bf16 matmul peak of this machine: {peak / 1e9:.0f} GFLOP/s")
    with tempfile.TemporaryDirectory() as tmp:
        for strategy in strategies:
            report_strategy(args, strategy, sides, peak, Path(tmp))
    print(f"\nbf16 matmul peak re-measured at the end: {bf16_matmul_peak(threads) / 1e9:.0f} GFLOP/s")


def report_strategy(args: argparse.Namespace, strategy: str, sides: list[str], peak: float, tmp: Path) -> None:
    cfg = bench_config(args, strategy, tmp, args.overrides)
    flops, basis = useful_flops(cfg)
    runs: dict[str, list[dict]] = {side: [] for side in sides}
    for _ in range(args.repeats):
        for side in sides:
            runs[side].append(run_side(side, cfg, tmp))
    print(f"\nstrategy {strategy}: {basis['trainable'] / 1e6:.1f} M trainable parameters, "
          f"{basis['linear_params'] / 1e6:.1f} M in matmuls, {basis['tokens_per_example']:.1f} real tokens per "
          f"review; {flops / 1e12:.2f} TFLOP of useful work per run")
    print(f"{'':15}{'samples/s':>10}{'train s':>9}{'held-out acc':>14}{'GFLOP/s':>9}{'of peak':>9}  precision")
    medians = {}
    for side, results in runs.items():
        sps = statistics.median(r["samples_per_s"] for r in results)
        train_s = statistics.median(r["train_s"] for r in results)
        acc = statistics.median(r["accuracy"] for r in results)
        medians[side] = (sps, acc)
        spread = f" ({min(r['samples_per_s'] for r in results):.1f}-{max(r['samples_per_s'] for r in results):.1f})" \
            if len(results) > 1 else ""
        print(f"{side:15}{sps:>10.1f}{train_s:>9.1f}{acc:>14.4f}{flops / train_s / 1e9:>9.0f}"
              f"{flops / train_s / peak:>9.0%}  {results[0]['precision']}{spread}")
    if "transferlab" in medians:
        tl_sps, tl_acc = medians["transferlab"]
        for side in ("Trainer", "Trainer tuned"):
            if side in medians:
                sps, acc = medians[side]
                print(f"transferlab / {side}: {tl_sps / sps:.2f}x samples/s, accuracy {100 * (tl_acc - acc):+.1f} "
                      f"points")


if __name__ == "__main__":
    main()
