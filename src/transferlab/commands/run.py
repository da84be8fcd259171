"""Commands that train, evaluate and use a run: demo, train, plan, evaluate, predict."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pandas as pd
import typer

from transferlab.commands.common import FLAG_FIELDS, Opt, console, print_warnings, resolve_config
from transferlab.config import RunConfig
from transferlab.console import metrics_table, plan_table
from transferlab.deploy.predictor import Predictor
from transferlab.errors import UserError
from transferlab.strategies.named import strategy_usage

STRATEGY_HELP = strategy_usage().replace(", ", " | ")
DEMO_REVIEWS = [
    "Best movie ever!",
    "A tedious, overlong mess with nothing to say.",
    "The performances are wonderful and the script is sharp and funny.",
    "I wanted to walk out after twenty minutes.",
]


def _train_and_show(cfg: RunConfig, resume: bool, overwrite: bool) -> dict:
    from accelerate import PartialState

    from transferlab.pipeline import train_run

    def show_plan(prep) -> None:
        d = prep.data
        console.print(f"[bold]{cfg.model.name}[/] on [bold]{cfg.data.train}[/]: {len(d.train):,} train / "
                      f"{len(d.eval):,} eval examples" + (f", labels {', '.join(d.labels)}" if d.labels else ""))
        console.print(plan_table(prep.phases, f"plan: {cfg.strategy.name}"))

    doc = train_run(cfg, resume=resume, overwrite=overwrite, on_prepared=show_plan)
    if not PartialState().is_main_process:  # the other processes of `accelerate launch` stay quiet
        return doc
    console.print(metrics_table(doc["eval"]))
    console.print(f"trained {doc['steps']} steps in {doc['train_time_s']:.1f}s "
                  f"({doc['train_samples_per_s']:.1f} samples/s, {doc['precision']}); "
                  f"run saved to [bold]{cfg.run_dir}[/] (model in {cfg.run_dir / 'model'})")
    print_warnings(doc.get("warnings", []))
    return doc


def train(
    config: Opt[Path | None, typer.Option(help="YAML run config (see examples/)")] = None,
    model: Opt[str | None, typer.Option(help="'minilm' or a local HF model directory")] = None,
    data: Opt[str | None, typer.Option(help="bundled dataset name or CSV/JSONL/Parquet file")] = None,
    eval_data: Opt[str | None, typer.Option(help="separate eval file (default: stratified split)")] = None,
    text_column: Opt[str | None, typer.Option()] = None,
    label_column: Opt[str | None, typer.Option()] = None,
    text_pair_column: Opt[str | None, typer.Option(help="second text column for sentence pairs")] = None,
    max_train_examples: Opt[int | None, typer.Option(help="stratified subset of the train split")] = None,
    max_eval_examples: Opt[int | None, typer.Option()] = None,
    strategy: Opt[str | None, typer.Option(help=STRATEGY_HELP)] = None,
    lr: Opt[float | None, typer.Option(help="base learning rate (default: the strategy's)")] = None,
    head_lr: Opt[float | None, typer.Option()] = None,
    epochs: Opt[float | None, typer.Option()] = None,
    batch_size: Opt[int | None, typer.Option()] = None,
    max_length: Opt[int | None, typer.Option()] = None,
    pooling: Opt[str | None, typer.Option(help="mean | cls | pooler | max (default: the backbone's own)")] = None,
    task: Opt[str | None, typer.Option(help="classification | tokens | qa | pairs | text2text")] = None,
    crf: Opt[bool | None, typer.Option("--crf/--no-crf", help="tokens: a CRF layer with BIO constraints")] = None,
    eval_every: Opt[int | None, typer.Option(help="evaluate every N steps (and each epoch)")] = None,
    patience: Opt[int | None, typer.Option(help="early stopping: evaluations without improvement")] = None,
    seed: Opt[int | None, typer.Option()] = None,
    name: Opt[str | None, typer.Option(help="run name (directory under --output)")] = None,
    output: Opt[str | None, typer.Option(help="parent directory of runs")] = None,
    set_: Opt[list[str] | None, typer.Option("--set", help="any config field: --set training.warmup=0.1")] = None,
    resume: Opt[bool, typer.Option(help="continue the run --name from its last checkpoint")] = False,
    overwrite: Opt[bool, typer.Option(help="replace an existing run of the same name")] = False,
    folds: Opt[int | None, typer.Option(help="stratified k-fold cross-validation: one run per fold, mean ± std "
                                             "per metric (cv.json)")] = None,
) -> None:
    """Fine-tune a pretrained model on labelled data with a transfer-learning strategy."""
    flags = {k: v for k, v in locals().items() if k in FLAG_FIELDS}
    if resume:
        run_dir = Path(output or "runs") / (name or "run")
        if not (run_dir / "config.yaml").is_file():
            raise UserError(f"--resume: '{run_dir}' holds no run (no config.yaml).",
                            "Pass the --name (and --output) of the interrupted run.")
        cfg = resolve_config(run_dir / "config.yaml", {}, [])
    else:
        cfg = resolve_config(config, flags, set_ or [])
    if folds is not None:
        from transferlab.commands.lab import cross_validate_and_show

        cross_validate_and_show(cfg, folds, overwrite)
        return
    _train_and_show(cfg, resume, overwrite)


def demo(
    full: Opt[bool, typer.Option("--full", help="all the data and more epochs (slower)")] = False,
    output: Opt[str, typer.Option(help="parent directory of runs")] = "runs",
) -> None:
    """Fine-tune the bundled MiniLM on bundled Rotten Tomatoes reviews (freeze attention, train MLP)."""
    base = {"name": "demo-full" if full else "demo", "output_dir": output,
            "strategy": {"name": "freeze-attention"},
            "training": {"epochs": 3 if full else 2, "eval_every": 200}}
    if not full:
        base["data"] = {"max_train_examples": 6000, "max_eval_examples": 1000}
    cfg = resolve_config(None, {}, [], base=base)
    _train_and_show(cfg, resume=False, overwrite=True)
    console.print("[bold]predictions on new reviews[/]")
    for text, pred in zip(DEMO_REVIEWS, Predictor(cfg.run_dir).predict(DEMO_REVIEWS), strict=True):
        console.print(f"  {pred['label']:>9} ({pred['score']:.2f})  {text}")


def plan(
    strategy: Opt[str | None, typer.Option(help=STRATEGY_HELP)] = None,
    model: Opt[str | None, typer.Option(help="'minilm' or a local HF model directory")] = None,
    config: Opt[Path | None, typer.Option(help="YAML run config (e.g. a custom plan in strategy.phases)")] = None,
    lr: Opt[float | None, typer.Option(help="base learning rate (default: the strategy's)")] = None,
    head_lr: Opt[float | None, typer.Option()] = None,
    epochs: Opt[float | None, typer.Option(help="total epochs (multi-phase plans split them)")] = None,
    set_: Opt[list[str] | None, typer.Option("--set", help="any config field: --set strategy.decay=0.9")] = None,
) -> None:
    """Print the plan a strategy compiles to (what learns, when, at what lr), without training."""
    from transferlab.pipeline import prepare_run
    from transferlab.training.feature_cache import cache_point

    flags = {"strategy": strategy, "model": model, "lr": lr, "head_lr": head_lr, "epochs": epochs}
    cfg = resolve_config(config, flags, set_ or [])
    prep = prepare_run(cfg)
    console.print(plan_table(prep.phases, f"plan: {cfg.strategy.name} on {cfg.model.name}"))
    for i, phase in enumerate(prep.phases):
        point = cache_point(prep.model, prep.groups, phase.lrs) if cfg.training.feature_cache else None
        if point is not None:
            console.print(f"phase {i + 1}: frozen-feature cache: {point.describe()}, computed once")


def evaluate(
    run: Opt[Path, typer.Argument(help="run directory (or model directory)")],
    data: Opt[str, typer.Option(help="labelled CSV/JSONL/Parquet file or bundled dataset")],
    text_column: Opt[str, typer.Option()] = "text",
    label_column: Opt[str, typer.Option()] = "label",
    output: Opt[Path | None, typer.Option(help="write metrics JSON here")] = None,
    tokens_column: Opt[str, typer.Option(help="NER models, JSONL data: the token-list column")] = "tokens",
    tags_column: Opt[str, typer.Option(help="NER models, JSONL data: the tag-list column")] = "tags",
) -> None:
    """Evaluate a trained model on labelled data (NER: CoNLL/JSONL tagged sentences; QA: SQuAD JSON; pairs and
    text2text: files with the columns their run was trained on)."""
    from transferlab.deploy.predictor import model_dir_of
    from transferlab.tasks import saved_task

    model_dir = model_dir_of(run)
    kind = saved_task(model_dir)
    if kind in ("tokens", "qa", "pairs", "text2text"):
        if kind in ("pairs", "text2text"):  # the file's columns as the model's run config names them
            metrics = importlib.import_module(f"transferlab.tasks.{kind}").evaluate_file(model_dir, data)
        elif kind == "tokens":
            from transferlab.tasks.tokens import EntityPredictor

            metrics = EntityPredictor(model_dir).evaluate(data, tokens_column, tags_column)
        else:
            from transferlab.tasks.qa import QaPredictor

            metrics = QaPredictor(model_dir).evaluate(data)
        console.print(metrics_table(metrics, f"metrics on {data}"))
        if output:
            output.write_text(json.dumps(metrics, indent=2))
        return
    from transferlab.data.sources import check_eval_labels, load_labelled
    from transferlab.evaluation.metrics import classification_metrics

    predictor = Predictor(run)
    frame = load_labelled(data, text_column, label_column)
    check_eval_labels(predictor.labels, frame["label"], data)
    preds = predictor.predict(frame["text"].tolist())
    probs = [[p["probabilities"][label] for label in predictor.labels] for p in preds]
    ids = [predictor.labels.index(label) for label in frame["label"]]
    import numpy as np

    metrics = classification_metrics(ids, np.array(probs), predictor.labels)
    console.print(metrics_table(metrics, f"metrics on {data} ({len(frame):,} examples)"))
    if output:
        output.write_text(json.dumps(metrics, indent=2))


def predict(
    run: Opt[Path, typer.Argument(help="run directory (or model directory)")],
    texts: Opt[list[str] | None, typer.Argument(help="texts to classify")] = None,
    input: Opt[Path | None, typer.Option("--input", help="file of texts (CSV/JSONL/Parquet)")] = None,
    text_column: Opt[str, typer.Option()] = "text",
    output: Opt[Path | None, typer.Option(help="write predictions to .csv or .jsonl")] = None,
    question: Opt[list[str] | None, typer.Option(help="QA models: a question about --context (repeatable)")] = None,
    context: Opt[str | None, typer.Option(help="QA models: the text the answers are taken from")] = None,
) -> None:
    """Predict labels for texts given as arguments or in a file (pairs: scores or labels; text2text: generated
    text; NER: entity spans; QA: the answer to --question in --context, or question/context columns of --input)."""
    from transferlab.data.sources import load_table, refuse_blank_texts
    from transferlab.deploy.predictor import model_dir_of
    from transferlab.tasks import require_saved_task, saved_task

    kind = saved_task(model_dir_of(run))
    if question or context is not None or kind == "qa":
        require_saved_task(model_dir_of(run), "qa", "predict --question/--context")
        from transferlab.tasks.qa import answer_line, predict_rows

        questions, contexts = _questions(question, context, input)
        _write_rows(predict_rows(model_dir_of(run), questions, contexts), output, answer_line)
        return
    if kind == "pairs":  # pairs come from two columns, or the texts two by two
        from transferlab.tasks.pairs import predict_rows

        _write_rows(predict_rows(run, texts, input), output, _tab_separated)
        return
    if input is not None:
        frame = load_table(input)
        if text_column not in frame:
            raise UserError(f"{input}: no column '{text_column}' (columns: {', '.join(map(str, frame.columns))}).",
                            "Pass --text-column with the name of the text column.")
        texts = frame[text_column].fillna("").astype(str).tolist()
    if not texts:
        raise UserError("predict: no texts given.", "Pass texts as arguments or a file with --input.")
    refuse_blank_texts(texts, f"{input}: column {text_column!r}, data row" if input else "predict: text argument")
    if kind == "text2text":
        from transferlab.tasks.text2text import predict_rows

        _write_rows(predict_rows(run, texts), output, _tab_separated)
        return
    if kind == "tokens":
        from transferlab.tasks.tokens import entity_line, predict_rows

        _write_rows(predict_rows(model_dir_of(run), texts), output, entity_line)
        return
    preds = Predictor(run).predict(texts)
    rows = [{"text": t, "label": p["label"], "score": round(p["score"], 6)} for t, p in zip(texts, preds, strict=True)]
    _write_rows(rows, output, lambda row: f"{row['label']}\t{row['score']:.4f}\t{row['text']}")


def _questions(questions: list[str] | None, context: str | None, input: Path | None) -> tuple[list[str], list[str]]:
    """(questions, contexts) for a QA model: --question(s) about one --context, or the columns of --input."""
    from transferlab.data.sources import read_text_columns

    if input is not None:
        return read_text_columns(input, ("question", "context"), "A QA model")
    if not questions or context is None:
        raise UserError("predict: a QA model needs --question and --context (or --input with question and "
                        "context columns).", 'Pass e.g. --question "Who directed it?" --context "..."')
    return list(questions), [context] * len(questions)


def _tab_separated(row: dict) -> str:
    return "\t".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row.values())


def _write_rows(rows: list[dict], output: Path | None, line) -> None:
    """Print each prediction row as `line(row)`, or write the rows to a .csv / .jsonl file."""
    if output is None:
        for row in rows:
            console.print(line(row), highlight=False, markup=False)  # texts may hold [brackets]
    elif output.suffix == ".csv":
        pd.DataFrame(rows).to_csv(output, index=False)
    elif output.suffix in (".jsonl", ".json"):
        output.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        raise UserError(f"--output '{output}': unknown format '{output.suffix}'.", "Use a .csv or .jsonl file name.")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the CLI."""
    for command in (demo, train, plan, evaluate, predict):
        app.command()(command)
