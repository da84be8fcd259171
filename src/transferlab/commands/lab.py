"""The strategy lab on the command line: compare, search, k-fold cross-validation (`train --folds`), and the
doctor's warnings."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from transferlab.commands.common import Opt, console, resolve_config
from transferlab.config import RunConfig
from transferlab.errors import UserError

# Data, model and training options shared with `train` (same flags, same config fields).
ConfigOpt = Opt[Path | None, typer.Option("--config", help="YAML run config (see examples/)")]
ModelOpt = Opt[str | None, typer.Option("--model", help="'minilm' or a local HF model directory")]
DataOpt = Opt[str | None, typer.Option("--data", help="bundled dataset name or CSV/JSONL/Parquet file")]
EvalDataOpt = Opt[str | None, typer.Option("--eval-data", help="separate eval file (default: stratified split)")]
TextColumnOpt = Opt[str | None, typer.Option("--text-column")]
LabelColumnOpt = Opt[str | None, typer.Option("--label-column")]
PairColumnOpt = Opt[str | None, typer.Option("--text-pair-column", help="second text column for sentence pairs")]
MaxTrainOpt = Opt[int | None, typer.Option("--max-train-examples", help="stratified subset of the train split")]
MaxEvalOpt = Opt[int | None, typer.Option("--max-eval-examples")]
MaxLengthOpt = Opt[int | None, typer.Option("--max-length")]
PoolingOpt = Opt[str | None, typer.Option("--pooling", help="mean | cls | pooler | max")]
EvalEveryOpt = Opt[int | None, typer.Option("--eval-every", help="evaluate every N steps (and each epoch)")]
PatienceOpt = Opt[int | None, typer.Option("--patience", help="early stopping: evaluations without improvement")]
SeedOpt = Opt[int | None, typer.Option("--seed", help="first seed")]
OutputOpt = Opt[str | None, typer.Option("--output", help="parent directory of the results")]
SetOpt = Opt[list[str] | None, typer.Option("--set", help="any config field: --set training.warmup=0.1")]
OverwriteOpt = Opt[bool, typer.Option("--overwrite", help="replace earlier results of the same name")]
# Flags passed through to the run config (commands/common.py FLAG_FIELDS); search owns lr, epochs... as its space.
_SEARCH_FLAGS = {"model", "data", "eval_data", "text_column", "label_column", "text_pair_column",
                 "max_train_examples", "max_eval_examples", "max_length", "pooling", "eval_every", "patience",
                 "seed", "name", "output"}
_COMPARE_FLAGS = _SEARCH_FLAGS | {"lr", "head_lr", "epochs", "batch_size"}


def _split(text: str, option: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise UserError(f"{option} '{text}' lists nothing.", f"Pass a comma-separated list to {option}.")
    return items


def parse_train_sizes(text: str) -> list[int | None]:
    """`100,1000,all` -> [100, 1000, None] (None = every training example)."""
    sizes: list[int | None] = []
    for item in _split(text, "--train-sizes"):
        if item.lower() == "all":
            sizes.append(None)
        elif item.isdigit() and int(item) > 0:
            sizes.append(int(item))
        else:
            raise UserError(f"--train-sizes: '{item}' is neither a positive whole number nor 'all'.",
                            "Write e.g. --train-sizes 100,1000,all.")
    return sizes


def parse_inits(text: str) -> list[str]:
    """`pretrained,random` -> the initialisations to compare."""
    inits = _split(text, "--init")
    bad = [i for i in inits if i not in ("pretrained", "random")]
    if bad:
        raise UserError(f"--init: unknown initialisation {', '.join(bad)}.",
                        "Use pretrained, random, or both: --init pretrained,random.")
    return inits


def _scores(evals: dict) -> str:
    from transferlab.lab.compare import shown_metrics

    return ", ".join(f"{name} {evals[name]:.4f}" for name in shown_metrics(evals))


# ---- k-fold -------------------------------------------------------------------------------------------
def _mean_std(stats: dict) -> str:
    return f"{stats['mean']:.4f} ± {stats['std']:.4f}"


def cross_validate_and_show(cfg: RunConfig, folds: int, overwrite: bool) -> dict:
    """`train --folds K`: one run per fold, then the mean ± std of each metric (saved as cv.json)."""
    from transferlab.lab.cross_validation import cross_validate

    def show_fold(i: int, doc: dict) -> None:
        console.print(f"fold {i}/{folds}: {doc['train_examples']} train / {doc['eval_examples']} eval, "
                      f"{_scores(doc['eval'])}, {doc['train_time_s']:.1f}s")

    result = cross_validate(cfg, folds, overwrite=overwrite, on_fold=show_fold)
    table = Table(title=f"{folds}-fold cross-validation of {cfg.strategy.name} ({result['examples']} examples)",
                  title_justify="left")
    table.add_column("metric")
    table.add_column("mean ± std", justify="right")
    for name, stats in result["metrics"].items():
        table.add_row(name, _mean_std(stats))
    console.print(table)
    console.print(f"per-fold runs and cv.json in [bold]{cfg.run_dir}[/]")
    return result


# ---- compare ------------------------------------------------------------------------------------------
def compare_table(result, title: str) -> Table:
    """strategy | trainable % | metric mean ± std ... | train time | peak memory (+ train examples if varied); the
    spread of a single seed is n/a."""
    from transferlab.lab.compare import NO_SPREAD, trainable_text

    rows = result.rows
    sizes = len({r["train_size"] for r in rows}) > 1
    table = Table(title=title, title_justify="left")
    table.add_column("strategy", overflow="fold")  # wrapped, never cut: it names the run
    table.add_column("trainable %", justify="right")
    if sizes:
        table.add_column("train examples", justify="right")
    for name in result.metrics:
        table.add_column(f"{name} (mean ± std)", justify="right")
    table.add_column("train time", justify="right")
    table.add_column("peak memory", justify="right")
    for r in rows:
        cells = [r["variant"], trainable_text(r)] + ([f"{r['train_size']:,}"] if sizes else [])
        cells += [f"{r[m]:.4f} ± " + (NO_SPREAD if r[f"{m}_std"] is None else f"{r[f'{m}_std']:.4f}")
                  for m in result.metrics]
        cells += [f"{r['train_time_s']:.1f}s", f"{r['peak_memory_mb']:,.0f} MB"]
        table.add_row(*cells)
    return table


def compare(
    strategies: Opt[str, typer.Option(help="comma-separated strategies, e.g. full,feature-extraction,llrd")]
    = "full,feature-extraction,freeze-bottom:4,freeze-attention,progressive,llrd",
    seeds: Opt[int, typer.Option(help="runs per strategy (seeds --seed, --seed + 1, ...): mean ± std")] = 1,
    init: Opt[str, typer.Option(help="pretrained, random (same architecture, fresh weights), or both")]
    = "pretrained",
    train_sizes: Opt[str, typer.Option(help="learning curve: training-set sizes, e.g. 100,1000,all")] = "all",
    augment: Opt[bool, typer.Option("--augment", help="run each variant without and with augmentation")] = False,
    config: ConfigOpt = None, model: ModelOpt = None, data: DataOpt = None, eval_data: EvalDataOpt = None,
    text_column: TextColumnOpt = None, label_column: LabelColumnOpt = None, text_pair_column: PairColumnOpt = None,
    max_train_examples: MaxTrainOpt = None, max_eval_examples: MaxEvalOpt = None,
    lr: Opt[float | None, typer.Option(help="base lr for every strategy (default: each strategy's own)")] = None,
    head_lr: Opt[float | None, typer.Option()] = None,
    epochs: Opt[float | None, typer.Option()] = None, batch_size: Opt[int | None, typer.Option()] = None,
    max_length: MaxLengthOpt = None, pooling: PoolingOpt = None, eval_every: EvalEveryOpt = None,
    patience: PatienceOpt = None, seed: SeedOpt = None,
    name: Opt[str, typer.Option(help="results directory under --output")] = "compare",
    output: OutputOpt = None, set_: SetOpt = None, overwrite: OverwriteOpt = False,
) -> None:
    """Compare strategies on the same data: trainable %, accuracy, F1, train time, peak memory."""
    from transferlab.lab.compare import run_compare

    flags = {k: v for k, v in locals().items() if k in _COMPARE_FLAGS}
    cfg = resolve_config(config, flags, set_ or [])
    names = _split(strategies, "--strategies")

    def show_run(variant, run_seed: int, run: dict) -> None:
        console.print(f"{variant.label} (seed {run_seed}): {_scores(run['eval'])}, {run['train_time_s']:.1f}s, "
                      f"{run['peak_memory_mb']:,.0f} MB")

    result = run_compare(cfg, names, seeds, parse_inits(init), parse_train_sizes(train_sizes), augment,
                         overwrite=overwrite, on_run=show_run)
    console.print(compare_table(result, f"compare on {cfg.data.train} ({seeds} seed{'s' if seeds > 1 else ''})"))
    console.print(f"results in [bold]{cfg.run_dir}[/]: " + ", ".join(p.name for p in result.files))


# ---- search -------------------------------------------------------------------------------------------
def trials_table(rows: list[dict], metric: str, best: int) -> Table:
    """One row per trial; the best one marked."""
    table = Table(title=f"trials ({metric})", title_justify="left")
    columns = list(dict.fromkeys(k for r in rows for k in r))
    for column in columns:
        table.add_column(column, justify="right" if column != "state" else "left")
    for r in rows:
        cells = ["—" if r.get(c) is None else f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c])
                 for c in columns]
        table.add_row(*cells, style="bold green" if r["trial"] == best else None)
    return table


def search(
    trials: Opt[int, typer.Option(help="trials this process runs (per worker with --storage; with --resume the "
                                       "trials the study already finished count)")] = 20,
    timeout: Opt[float | None, typer.Option(help="stop starting trials after this many seconds")] = None,
    space: Opt[Path | None, typer.Option(help="YAML search space: name: a list of choices or {low, high, log, step}")]
    = None,
    lr: Opt[str | None, typer.Option(help="range low:high (log scale) or choices a,b")] = None,
    head_lr: Opt[str | None, typer.Option(help="range or choices")] = None,
    batch_size: Opt[str | None, typer.Option(help="choices, e.g. 16,32")] = None,
    epochs: Opt[str | None, typer.Option(help="range, e.g. 1:3, or choices")] = None,
    weight_decay: Opt[str | None, typer.Option(help="range, e.g. 0:0.1, or choices")] = None,
    warmup: Opt[str | None, typer.Option(help="range, e.g. 0:0.2, or choices")] = None,
    dropout: Opt[str | None, typer.Option(help="head dropout: range, e.g. 0:0.3, or choices")] = None,
    strategies: Opt[str | None, typer.Option(help="strategy choices, e.g. full,freeze-attention,llrd")] = None,
    pruning_startup: Opt[int, typer.Option(help="trials that run in full before pruning starts")] = 3,
    config: ConfigOpt = None, model: ModelOpt = None, data: DataOpt = None, eval_data: EvalDataOpt = None,
    text_column: TextColumnOpt = None, label_column: LabelColumnOpt = None, text_pair_column: PairColumnOpt = None,
    max_train_examples: MaxTrainOpt = None, max_eval_examples: MaxEvalOpt = None,
    max_length: MaxLengthOpt = None, pooling: PoolingOpt = None, eval_every: EvalEveryOpt = None,
    patience: PatienceOpt = None, seed: SeedOpt = None,
    name: Opt[str, typer.Option(help="results directory under --output")] = "search",
    output: OutputOpt = None, set_: SetOpt = None, overwrite: OverwriteOpt = False,
    resume: Opt[bool, typer.Option("--resume", help="continue the search stored in the run directory (study.db) "
                                   "where it stopped; an interrupted trial runs again")] = False,
    storage: Opt[str | None, typer.Option(help="Optuna database URL shared by several workers, e.g. "
                                          "postgresql://user@host/db (default: study.db in the run directory)")]
    = None,
) -> None:
    """Search hyper-parameters and strategy with Optuna (seeded TPE, median pruning); write best.yaml.

    The study is stored as it goes: a killed search continues with the same command plus --resume, and workers
    started with the same --storage and --name share one study."""
    import optuna

    from transferlab.lab.search import DEFAULT_SPACE, load_space, parse_flag, run_search

    flags = {k: v for k, v in locals().items() if k in _SEARCH_FLAGS}
    cfg = resolve_config(config, flags, set_ or [])
    given = {"lr": lr, "head_lr": head_lr, "batch_size": batch_size, "epochs": epochs, "weight_decay": weight_decay,
             "warmup": warmup, "dropout": dropout, "strategy": strategies}
    chosen = {k: parse_flag(k, v) for k, v in given.items() if v is not None}
    if space is not None:
        search_space, origin = {**load_space(space), **chosen}, str(space)
    elif chosen:
        search_space, origin = chosen, "the command-line options"
    else:
        search_space, origin = dict(DEFAULT_SPACE), "the default space"
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def show_trial(row: dict) -> None:
        value = "—" if row["value"] is None else f"{row['value']:.4f}"
        params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                           if k not in ("trial", "state", "value", "duration_s") and v is not None)
        console.print(f"trial {row['trial']}: {row['state']} {value} ({params})", highlight=False)

    result = run_search(cfg, search_space, trials, timeout, pruning_startup, overwrite, origin, on_trial=show_trial,
                        resume=resume, storage=storage)
    best = result.study.best_trial
    console.print(trials_table(result.rows, result.metric, best.number))
    console.print(f"best: trial {best.number}, {result.metric} {best.value:.4f}; re-run it with "
                  f"[bold]transferlab train --config {result.files[-1]}[/]")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the CLI."""
    for command in (compare, search):
        app.command()(command)
