"""Peak memory of full fine-tuning on all bundled reviews, measured in a child process, with where it grows.

The training runs as `transferlab train` runs it (default config, strategy full, every bundled review) in a child
process; the parent reads the child's peak resident set size from the kernel (`getrusage(RUSAGE_CHILDREN)`), so
nothing the benchmark itself imports is counted. The child also samples its RSS at the trainer's events and prints
where memory grew, stage by stage.

    .venv/bin/python benchmarks/train_memory.py [--epochs 0.5] [--limit N] [--env MALLOC_ARENA_MAX=4]

The goal (issue 13) is a peak of at most 1.2 GB; `--epochs` shortens the run (the peak is reached in the first
epoch: every buffer that lives through the run exists after the first evaluation and checkpoint).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

GOAL_BYTES = 1.2e9


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=float, default=0.5, help="training epochs (the peak comes in the first)")
    parser.add_argument("--limit", type=int, default=None, help="training examples (default: all bundled reviews)")
    parser.add_argument("--strategy", default="full")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the child, e.g. MALLOC_ARENA_MAX=2")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override, e.g. "
                        "training.eval_batch_size=64")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args()


def child(args: argparse.Namespace) -> None:
    """Train in this process and print one JSON line per RSS sample (stage, bytes)."""
    import psutil

    process = psutil.Process()
    samples: list[tuple[str, int]] = []

    def sample(stage: str) -> None:
        samples.append((stage, process.memory_info().rss))

    sample("python started")
    from transferlab.config import apply_override, build_config
    from transferlab.pipeline import train_run
    from transferlab.training.events import Callback

    sample("transferlab imported")

    class RssProbe(Callback):
        """RSS at the trainer's events: where memory grows during training."""

        def on_fit_start(self, trainer) -> None:
            sample("data encoded, model built")

        def on_phase_start(self, trainer, phase) -> None:
            sample("phase started")

        def on_step_end(self, trainer, record) -> None:
            if trainer.state.global_step in (1, 10, 50) or trainer.state.global_step % 100 == 0:
                sample(f"step {trainer.state.global_step}")

        def on_evaluate(self, trainer, record) -> None:
            sample(f"evaluated at step {trainer.state.global_step}")

        def on_checkpoint(self, trainer, path) -> None:
            sample(f"checkpoint at step {trainer.state.global_step}")

        def on_fit_end(self, trainer) -> None:
            sample("training ended")

    with tempfile.TemporaryDirectory() as tmp:
        data = {"name": "memory", "output_dir": tmp, "strategy": {"name": args.strategy},
                "training": {"epochs": args.epochs}, "data": {"max_train_examples": args.limit}}
        for assignment in args.overrides:
            apply_override(data, assignment)
        cfg = build_config(data, "the benchmark")
        start = time.perf_counter()
        doc = train_run(cfg, overwrite=True, show_progress=False, callbacks=(RssProbe(),))
        sample("run saved")
    print(json.dumps({"samples": samples, "train_examples": doc["train_examples"], "steps": doc["steps"],
                      "wall_s": time.perf_counter() - start, "accuracy": doc["eval"]["accuracy"],
                      "samples_per_s": doc["train_samples_per_s"], "precision": doc["precision"]}))


def main() -> None:
    args = parse_args()
    if args.child:
        child(args)
        return
    env = dict(os.environ, **dict(kv.split("=", 1) for kv in args.env))
    command = [sys.executable, __file__, "--child", "--epochs", str(args.epochs), "--strategy", args.strategy]
    command += ["--limit", str(args.limit)] if args.limit else []
    for assignment in args.overrides:
        command += ["--set", assignment]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"the training child failed:\n{done.stderr[-4000:]}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # kilobytes on Linux
    report = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"full config: strategy {args.strategy}, {report['train_examples']:,} training reviews, {args.epochs:g} "
          f"epoch(s) ({report['steps']} steps), {report['precision']}, {os.cpu_count()} cores; "
          f"child env: {' '.join(args.env) or '(inherited)'}; {' '.join(args.overrides)}")
    print(f"\n{'stage':34}{'RSS MB':>9}{'growth':>9}")
    previous = 0
    for stage, rss in report["samples"]:
        print(f"{stage:34}{rss / 1e6:>9.0f}{(rss - previous) / 1e6:>+9.0f}")
        previous = rss
    print(f"\npeak RSS of the training process: {peak / 1e9:.2f} GB (goal <= {GOAL_BYTES / 1e9:.1f} GB: "
          f"{'met' if peak <= GOAL_BYTES else 'not met'}); {report['samples_per_s']:.1f} samples/s, held-out "
          f"accuracy {report['accuracy']:.4f}, {report['wall_s']:.0f} s end to end")


if __name__ == "__main__":
    main()
