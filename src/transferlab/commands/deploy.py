"""Commands that ship a trained model: export, quantize, prune, distill, benchmark, serve."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from transferlab.commands.common import Opt, console
from transferlab.errors import UserError

if TYPE_CHECKING:  # torch loads inside the commands that use it: `--help` answers at once
    from transferlab.deploy.artifacts import Variant
RunArg = Opt[Path, typer.Argument(help="run directory (or model directory)")]


def _with_spread(value: str, spread: float | None) -> str:
    return value if spread is None else f"{value} ±{100 * spread:.0f}%"


def measurement_table(rows: list, title: str, baseline: float | None = None) -> Table:
    """Size, latency, throughput (medians of repeats, ± their spread) and eval score of measured variants (Δ in
    points against `baseline`)."""
    table = Table(title=title, title_justify="left")
    metric = rows[0].metric if rows else "score"
    for col in ("variant", "size MB", "p50 ms (b=1)", "p95 ms (b=1)", "examples/s (b=32)", metric):
        table.add_column(col, justify="left" if col == "variant" else "right")
    if baseline is not None:
        table.add_column("Δ points", justify="right")
    for r in rows:
        cells = [r.variant, f"{r.size_mb:.1f}", _with_spread(f"{r.latency_p50_ms:.1f}", r.latency_spread),
                 f"{r.latency_p95_ms:.1f}", _with_spread(f"{r.throughput_per_s:.0f}", r.throughput_spread),
                 "-" if r.score is None else f"{r.score:.4f}"]
        if baseline is not None:
            cells.append("-" if r.score is None else f"{100 * (r.score - baseline):+.2f}")
        table.add_row(*cells)
    return table


def compare(variants: list[Variant], run_dir: Path, title: str, repeats: int = 20,
            eval_limit: int | None = None) -> list:
    """Measure a few variants quickly (fewer repeats than `benchmark`) and print them against the first."""
    from transferlab.deploy.benchmark import Settings, busy_warnings, measure
    from transferlab.deploy.evalset import load_eval_set

    evalset = load_eval_set(run_dir, eval_limit)
    settings = Settings(repeats=repeats, warmup=3, throughput_batches=1, throughput_repeats=3)
    with console.status("measuring size, latency and accuracy"):
        rows = [measure(v, evalset, settings) for v in variants]
    console.print(measurement_table(rows, f"{title} ({len(evalset):,} eval examples)", rows[0].score))
    print_busy(busy_warnings(rows, settings.busy_spread))
    return rows


def print_busy(lines: list[str]) -> None:
    """The benchmark's warnings that the machine was busy while it measured."""
    for line in lines:
        console.print(f"[yellow]! busy machine[/] {line}", highlight=False)


def export(
    model: RunArg,
    format: Opt[str, typer.Option("--format", "-f", help="onnx | torchscript")] = "onnx",
) -> None:
    """Export a model to ONNX or TorchScript (dynamic batch and sequence axes), checked against PyTorch."""
    from transferlab.deploy.export import PARITY_TOLERANCE, export_model

    with console.status(f"exporting to {format}"):
        result = export_model(model, format)
    console.print(f"wrote [bold]{result.path}[/] ({result.size_mb:.1f} MB) in {result.seconds:.1f}s; parity with "
                  f"PyTorch on real inputs: max |Δoutput| = {result.max_abs_diff:.1e} (limit {PARITY_TOLERANCE:g})")


def quantize(
    run: RunArg,
    backend: Opt[str, typer.Option(help="onnx (ONNX Runtime) | torch (PyTorch dynamic, saved as TorchScript)")]
    = "onnx",
    eval_limit: Opt[int | None, typer.Option(help="measure accuracy on the first N eval examples only")] = None,
    calibration: Opt[int, typer.Option(help="onnx, models with convolutions: training examples whose activation "
                                            "ranges the static int8 model is calibrated on", min=1)] = 256,
    repeats: Opt[int, typer.Option(help="timed batch-1 forward passes per variant for the latency", min=1)] = 20,
) -> None:
    """int8 quantization (static, calibrated on training examples, for convolutions; dynamic otherwise), with
    accuracy re-measured on the eval set beside the fp32 model; the comparison is saved as RUN/quantize.json."""
    import json
    from dataclasses import asdict

    from transferlab.deploy.artifacts import Variant, model_dir_of, require_run_dir
    from transferlab.deploy.predictor import load_saved_task
    from transferlab.deploy.quantize import StaticRecipe, int8_notes
    from transferlab.deploy.quantize import quantize as quantize_model

    model_dir = model_dir_of(run)
    run_dir = require_run_dir(run, "quantize")
    notes = {"method": "dynamic"}
    if backend == "torch" and not load_saved_task(model_dir).exportable:
        # a generating model stays eager: its int8 form is made at load time (serve / benchmark --int8)
        console.print("a text-generating model is quantized when loaded (--backend torch --int8): no file written")
        int8 = Variant(model_dir, "torch", True)
    else:
        with console.status(f"quantizing with {backend}"):
            path = quantize_model(model_dir, backend, static=StaticRecipe(calibration_examples=calibration))
        if backend == "onnx":
            notes = int8_notes(path)
        how = (f"static int8, activation ranges calibrated on {notes['calibration_examples']} training examples"
               if notes["method"] == "static" else "dynamic int8")
        console.print(f"wrote [bold]{path}[/] ({path.stat().st_size / 2**20:.1f} MB): {how}")
        int8 = Variant(model_dir, "onnx" if backend == "onnx" else "torchscript", True)
    rows = compare([Variant(model_dir, "onnx" if backend == "onnx" else "torch"), int8], run_dir, "fp32 vs int8",
                   repeats=repeats, eval_limit=eval_limit)
    record = {"backend": backend, **notes, "metric": rows[0].metric, "eval_limit": eval_limit,
              "delta_points": None if None in (rows[0].score, rows[1].score)
              else round(100 * (rows[1].score - rows[0].score), 2), "variants": [asdict(r) for r in rows]}
    (run_dir / "quantize.json").write_text(json.dumps(record, indent=2))
    console.print(f"wrote {run_dir / 'quantize.json'}")


def prune(
    run: RunArg,
    amount: Opt[float, typer.Option(help="fraction of weights (magnitude) or attention heads (heads) to remove")]
    = 0.3,
    method: Opt[str, typer.Option(help="magnitude (global, unstructured) | heads (structured)")] = "magnitude",
    finetune_epochs: Opt[float, typer.Option(help="recovery fine-tuning epochs after pruning (0 = none)")] = 0.0,
    lr: Opt[float, typer.Option(help="learning rate of the recovery fine-tuning")] = 5e-5,
) -> None:
    """Prune a run's model (saved as RUN/pruned-METHOD) and compare size, speed and accuracy."""
    from transferlab.deploy.artifacts import Variant, require_run_dir
    from transferlab.deploy.prune import prune_run

    run_dir = require_run_dir(run, "prune")
    result = prune_run(run_dir, method, amount, finetune_epochs, lr)
    if result.removed_heads is not None:
        heads = ", ".join(f"layer {k}: {v}" for k, v in sorted(result.removed_heads.items()))
        console.print(f"removed {sum(map(len, result.removed_heads.values()))} heads ({heads})")
    console.print(f"saved [bold]{result.model_dir}[/]: {result.parameters:,} parameters, {result.nonzero:,} non-zero; "
                  f"encoder Linear sparsity {100 * result.sparsity:.1f}%")
    compare([Variant(run_dir / "model", "torch"), Variant(result.model_dir, "torch")], run_dir,
            f"original vs pruned ({method} {amount:g})")


def distill(
    teacher: Opt[Path, typer.Option(help="run directory of the teacher")],
    student_layers: Opt[int, typer.Option(help="encoder layers of the student (a subset of the teacher's)")] = 3,
    epochs: Opt[float, typer.Option()] = 2.0,
    temperature: Opt[float, typer.Option(help="softening of the teacher's outputs")] = 2.0,
    alpha: Opt[float, typer.Option(help="weight of the soft targets (1 - alpha: the gold labels)")] = 0.5,
    lr: Opt[float, typer.Option()] = 1e-4,
) -> None:
    """Distil a run's model into a smaller student (saved as RUN/distilled) and compare it to the teacher."""
    from transferlab.deploy.artifacts import Variant, require_run_dir
    from transferlab.deploy.distill import distill_run

    run_dir = require_run_dir(teacher, "distill")
    out, layers, _metrics = distill_run(run_dir, student_layers, epochs, temperature, alpha, lr)
    console.print(f"saved student [bold]{out}[/] (teacher layers {', '.join(map(str, layers))})")
    compare([Variant(run_dir / "model", "torch"), Variant(out, "torch")], run_dir, "teacher vs student")


def benchmark(
    run: RunArg,
    repeats: Opt[int, typer.Option(help="timed batch-1 calls per variant (in 3 rounds: median and spread)")] = 100,
    warmup: Opt[int, typer.Option(help="untimed calls before measuring")] = 10,
    batches: Opt[int, typer.Option(help="batches of 32 per throughput measure (3 measures)")] = 4,
    threads: Opt[int | None, typer.Option(help="CPU threads for every backend (default: torch's)")] = None,
    eval_limit: Opt[int | None, typer.Option(help="accuracy on the first N eval examples only")] = None,
) -> None:
    """Measure every variant of a run (torch, TorchScript, ONNX, int8, pruned, distilled) side by side."""
    from transferlab.deploy.artifacts import require_run_dir
    from transferlab.deploy.benchmark import Measurement, Settings, benchmark_run

    run_dir = require_run_dir(run, "benchmark")
    settings = Settings(repeats=repeats, warmup=warmup, throughput_batches=batches, threads=threads,
                        eval_limit=eval_limit)
    with console.status("benchmarking") as status:
        doc = benchmark_run(run_dir, settings, on_result=lambda r: status.update(f"measured {r.variant}"))
    rows = [Measurement(**v) for v in doc["variants"]]
    console.print(measurement_table(rows, f"benchmark of {run_dir} ({doc['eval_examples']:,} eval examples, "
                                          f"{doc['machine']['torch_threads']} threads)", rows[0].score))
    print_busy(doc["warnings"])
    console.print(f"wrote {run_dir / 'benchmark.json'} and {run_dir / 'plots' / 'benchmark.png'}")


def serve(
    model: RunArg,
    host: Opt[str, typer.Option(help="interface to listen on (0.0.0.0 for every interface)")] = "127.0.0.1",
    port: Opt[int, typer.Option()] = 8000,
    backend: Opt[str, typer.Option(help="torch | onnx | torchscript")] = "torch",
    int8: Opt[bool, typer.Option("--int8", help="serve the int8 model of the backend")] = False,
    workers: Opt[int, typer.Option(help="inference worker processes, each with its own copy of the model "
                                        "(0: inference in a thread of the HTTP process)", min=0)] = 1,
    threads: Opt[int | None, typer.Option(help="CPU threads per worker (default: (cores - 1) / workers)")] = None,
    precision: Opt[str, typer.Option(help="torch fp32 backend: auto (bf16 autocast where the CPU runs it "
                                          "natively) | bf16 | fp32")] = "auto",
    max_batch: Opt[int, typer.Option(help="most inputs in one micro-batch", min=1)] = 64,
    forward_batch: Opt[int | None, typer.Option(help="inputs per forward pass inside a micro-batch, grouped by "
                                                     "length (default: 8 for onnx / torchscript, 32 for torch)",
                                                min=1)] = None,
    max_wait_ms: Opt[float, typer.Option(help="how long a request waits for others to batch with")] = 5.0,
    max_queue: Opt[int, typer.Option(help="most inputs waiting for the model; more get 503 + Retry-After",
                                     min=1)] = 1024,
    timeout_s: Opt[float, typer.Option(help="a request not answered in this many seconds gets 504")] = 10.0,
    max_items: Opt[int, typer.Option(help="most inputs in one request", min=1)] = 64,
    max_chars: Opt[int, typer.Option(help="longest value of any input field, in characters")] = 10_000,
    max_body_kb: Opt[int, typer.Option(help="largest request body, in KiB")] = 1024,
    adapter: Opt[list[str] | None, typer.Option(help="serve the adapter of a run trained with --keep-adapters "
                                                      "over MODEL (its base model): NAME=RUN, repeatable; a "
                                                      "request's `model` field picks one")] = None,
    token: Opt[str | None, typer.Option(envvar="TRANSFERLAB_TOKEN", show_default=False,
                                        help="require 'Authorization: Bearer TOKEN' on every endpoint but "
                                             "/health (prefer the env var: a flag shows in `ps`)")] = None,
) -> None:
    """Serve a model over HTTP: POST /predict, GET /health, /metadata, /metrics, docs at /docs."""
    import os

    from transferlab.deploy.served_model import ModelSpec, ServedModel
    from transferlab.deploy.service import Limits
    from transferlab.deploy.service import serve as run_server
    from transferlab.deploy.workers import InProcessRunner, WorkerPool

    if threads is None and workers:  # one core stays with the HTTP process
        threads = max(1, ((os.cpu_count() or 1) - 1) // workers)
    spec = ModelSpec(str(model), backend, int8, threads, precision, forward_batch, parse_adapters(adapter or []))
    limits = Limits(max_items=max_items, max_chars=max_chars, max_body_bytes=max_body_kb * 1024,
                    max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue, timeout_s=timeout_s)
    with console.status(f"loading the model in {workers or 'this'} process{'es' if workers > 1 else ''}"):
        runner = WorkerPool(spec, workers) if workers else InProcessRunner(ServedModel(spec))
    try:
        console.print(f"serving {model} ({runner.info.metadata['backend']}, {workers} worker process"
                      f"{'es' if workers != 1 else ''}{', token required' if token else ''}) "
                      f"on http://{host}:{port} - docs at /docs")
        run_server(runner, host, port, limits, token)
    finally:  # the workers ignore SIGTERM (see workers.py): they stop when their pipe closes
        runner.close()


def parse_adapters(items: list[str]) -> tuple[tuple[str, str], ...]:
    """`--adapter NAME=RUN` options as (name, run) pairs."""
    pairs = []
    for item in items:
        name, sep, run = item.partition("=")
        if not sep or not name or not run:
            raise UserError(f"--adapter '{item}' is not of the form NAME=RUN.",
                            "Write e.g. --adapter reviews=runs/lora-reviews (repeat it for each adapter).")
        pairs.append((name, run))
    return tuple(pairs)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the CLI."""
    for command in (export, quantize, prune, distill, benchmark, serve):
        app.command()(command)
