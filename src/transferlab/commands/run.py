"""Commands that train, evaluate and use a run: demo, train, plan, evaluate, predict."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from transferlab.commands.common import (
    FLAG_FIELDS,
    Opt,
    console,
    free_run_name,
    print_warnings,
    resolve_config,
    with_augment,
)
from transferlab.config import RunConfig
from transferlab.console import adapter_summary, auto_table, metrics_table, plan_table
from transferlab.errors import UserError
from transferlab.run_dir import check_run_name
from transferlab.strategies.named import AUTO, strategy_usage

log = logging.getLogger("transferlab")

if TYPE_CHECKING:  # heavy libraries load inside the commands that use them: `--help` answers at once
    import pandas as pd

STRATEGY_HELP = strategy_usage().replace(", ", " | ")
PREDICTION_FORMATS = (".csv", ".jsonl", ".json", ".parquet")
DEMO_REVIEWS = [
    "Best movie ever!",
    "A tedious, overlong mess with nothing to say.",
    "The performances are wonderful and the script is sharp and funny.",
    "I wanted to walk out after twenty minutes.",
]


def _train_and_show(cfg: RunConfig, resume: bool, overwrite: bool) -> dict:
    from accelerate import PartialState

    from transferlab.pipeline import train_run

    title = f"plan: {cfg.strategy.name}"

    def show_plan(prep) -> None:
        d = prep.data
        console.print(f"[bold]{cfg.model.name}[/] on [bold]{cfg.data.train}[/]: {len(d.train):,} train / "
                      f"{len(d.eval):,} eval examples" + (f", labels {', '.join(d.labels)}" if d.labels else ""))
        console.print(plan_table(prep.phases, title))

    if cfg.strategy.name == AUTO and not resume:
        from transferlab.lab.auto import run_auto

        def show_decision(decision) -> None:
            console.print(f"[bold]auto[/]: {decision.train_examples:,} train examples, {decision.classes} classes, "
                          f"{decision.model_params:,} parameters, budget {decision.budget or 'none'}; probes took "
                          f"{decision.probe_time_s:.0f}s on {decision.probe_train_examples:,} + "
                          f"{decision.probe_eval_examples:,} training examples"
                          + (f", {decision.probe_folds} folds" if decision.probe_folds > 1 else "")
                          + (f"; probe score = {decision.probe_metric}" if decision.probe_metric else ""))
            console.print(auto_table(decision.candidates, f"auto: {decision.chosen} chosen"))
            nonlocal title
            title = f"plan: {decision.chosen} (chosen by auto)"

        doc = run_auto(cfg, overwrite=overwrite, on_decided=show_decision, on_prepared=show_plan)
    else:
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
    warmup: Opt[float | None, typer.Option(help="fraction of each phase's steps spent warming up (0.06)")] = None,
    schedule: Opt[str | None, typer.Option(help="lr decay after warmup: linear | cosine | constant")] = None,
    weight_decay: Opt[float | None, typer.Option(help="AdamW weight decay of weight matrices (0.01)")] = None,
    grad_accum: Opt[int | None, typer.Option(help="batches per optimizer update (effective batch = batch-size x "
                                                  "grad-accum)")] = None,
    dropout: Opt[float | None, typer.Option(help="dropout of the head and every dropout rate inside the backbone "
                                                 "(default: head 0.1, the backbone's own)")] = None,
    augment: Opt[bool | None, typer.Option("--augment/--no-augment", help="add an augmented copy of each training "
                                           "text (synonyms, swaps, dropped words at 0.1; rates in the config's "
                                           "augment section)")] = None,
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
    keep_adapters: Opt[bool | None, typer.Option("--keep-adapters/--no-keep-adapters", help="also save the "
                                                 "adapters and head alone (peft format) in RUN/adapter/")] = None,
    budget: Opt[str | None, typer.Option(help="--strategy auto: time for the probes and the chosen run, e.g. 90s, "
                                              "10m, 1h, or 3ep (3 epochs of full fine-tuning)")] = None,
) -> None:
    """Fine-tune a pretrained model on labelled data with a transfer-learning strategy (or `--strategy auto`: probe
    the plans the data size suggests and train the best that fits --budget)."""
    flags = {k: v for k, v in locals().items() if k in FLAG_FIELDS}
    if resume:
        check_run_name(name or "run")
        run_dir = Path(output or "runs") / (name or "run")
        if not (run_dir / "config.yaml").is_file():
            raise UserError(f"--resume: '{run_dir}' holds no run (no config.yaml).",
                            "Pass the --name (and --output) of the interrupted run.")
        # the run is where the user points, wherever it was first trained (a copied or renamed run)
        cfg = resolve_config(run_dir / "config.yaml", {"name": name or "run", "output": output or "runs"}, [])
    else:
        cfg = with_augment(resolve_config(config, flags, set_ or []), augment)
    if folds is not None:
        from transferlab.commands.lab import cross_validate_and_show

        cross_validate_and_show(cfg, folds, overwrite)
        return
    _train_and_show(cfg, resume, overwrite)


def demo(
    full: Opt[bool, typer.Option("--full", help="all the data and more epochs (slower)")] = False,
    output: Opt[str, typer.Option(help="parent directory of runs")] = "runs",
    overwrite: Opt[bool, typer.Option(help="replace an earlier demo run (default: keep it and save this one "
                                           "as demo-2, demo-3, ...)")] = False,
    vision: Opt[bool, typer.Option("--vision", help="images instead: EfficientNet-Lite0 on Fashion-MNIST, beside "
                                                    "the same network from random weights")] = False,
) -> None:
    """Fine-tune the bundled MiniLM on bundled Rotten Tomatoes reviews (freeze attention, train MLP); --vision:
    the bundled EfficientNet-Lite0 on bundled Fashion-MNIST."""
    if vision:
        from transferlab.commands.vision_demo import run_vision_demo

        run_vision_demo(output, overwrite, _train_and_show)
        return
    name = "demo-full" if full else "demo"
    if not overwrite:
        name = free_run_name(Path(output), name)
    base = {"name": name, "output_dir": output,
            "strategy": {"name": "freeze-attention"},
            "training": {"epochs": 3 if full else 2, "eval_every": 200}}
    if not full:
        base["data"] = {"max_train_examples": 6000, "max_eval_examples": 1000}
    cfg = resolve_config(None, {}, [], base=base)
    _train_and_show(cfg, resume=False, overwrite=overwrite)
    from transferlab.deploy.predictor import Predictor

    console.print("[bold]predictions on new reviews[/]")
    predictions = Predictor(cfg.run_dir).predict([{"text": t} for t in DEMO_REVIEWS])
    for text, pred in zip(DEMO_REVIEWS, predictions, strict=True):
        console.print(f"  {pred['label']:>9} ({pred['score']:.2f})  {text}")


def plan(
    strategy: Opt[str | None, typer.Option(help=STRATEGY_HELP)] = None,
    model: Opt[str | None, typer.Option(help="'minilm' or a local HF model directory")] = None,
    config: Opt[Path | None, typer.Option(help="YAML run config (e.g. a custom plan in strategy.phases)")] = None,
    lr: Opt[float | None, typer.Option(help="base learning rate (default: the strategy's)")] = None,
    head_lr: Opt[float | None, typer.Option()] = None,
    epochs: Opt[float | None, typer.Option(help="total epochs (multi-phase plans split them)")] = None,
    warmup: Opt[float | None, typer.Option(help="fraction of each phase's steps spent warming up (0.06)")] = None,
    schedule: Opt[str | None, typer.Option(help="lr decay after warmup: linear | cosine | constant")] = None,
    set_: Opt[list[str] | None, typer.Option("--set", help="any config field: --set strategy.decay=0.9")] = None,
) -> None:
    """Print the plan a strategy compiles to (what learns, when, at what lr), without training."""
    from transferlab.pipeline import prepare_run
    from transferlab.training.feature_cache import cache_point

    flags = {"strategy": strategy, "model": model, "lr": lr, "head_lr": head_lr, "epochs": epochs, "warmup": warmup,
             "schedule": schedule}
    cfg = resolve_config(config, flags, set_ or [])
    if cfg.strategy.name == AUTO:
        _explain_auto(cfg)
        return
    prep = prepare_run(cfg)
    console.print(plan_table(prep.phases, f"plan: {cfg.strategy.name} on {cfg.model.name}"))
    adapters = adapter_summary(prep.groups)
    if adapters:
        console.print(adapters)
    for i, phase in enumerate(prep.phases):
        point = cache_point(prep.model, prep.groups, phase.lrs) if cfg.training.feature_cache else None
        variation = prep.task.training_variation()
        if point is not None and variation:
            console.print(f"phase {i + 1}: frozen-feature cache: {point.describe()} of the eval examples only: "
                          f"training runs uncached, since {variation} every epoch")
        elif point is not None:
            console.print(f"phase {i + 1}: frozen-feature cache: {point.describe()}, computed once")


def _explain_auto(cfg: RunConfig) -> None:
    """`plan --strategy auto`: what auto reads and which candidates it would probe, and why."""
    from rich.table import Table

    from transferlab.lab.auto import explain

    facts, found = explain(cfg)
    for key, value in facts.items():
        console.print(f"[bold]{key}[/]: {value}")
    table = Table(title="auto would probe", title_justify="left")
    table.add_column("candidate")
    table.add_column("considered because")
    for c in found:
        table.add_row(c.strategy, c.why)
    console.print(table)
    console.print("each probe's score and time per example decide: the best score whose full run fits in what is "
                  "left of the budget trains (see docs/strategies.md#auto)")


TTA_HELP = "test-time augmentation, image models: flip (mean class probabilities of each image and its mirror image) " \
    "or crops (those and the four corner crops)"


def _saved_run(run: Path, columns: dict[str, str | None], tta: str | None = None):
    """(predictor, run config with the command's column options applied) of a run or model directory."""
    from transferlab.deploy.artifacts import saved_run_config
    from transferlab.deploy.predictor import Predictor

    predictor = Predictor(run, tta=tta)
    if predictor.tta_note:
        log.info("test-time augmentation: %s (mean class probabilities over %s)", predictor.tta,
                 predictor.tta_note["averages"])
    doc = saved_run_config(predictor.model_dir).model_dump(mode="json")
    for field, value in columns.items():
        if value is not None:
            section, _, name = field.partition(".")
            doc[section][name] = value
    from transferlab.config import build_config

    return predictor, build_config(doc, "the command-line options")


def evaluate(
    run: Opt[Path, typer.Argument(help="run directory (or model directory)")],
    data: Opt[str, typer.Option(help="labelled data file (or bundled dataset), read as the run read its data")],
    text_column: Opt[str | None, typer.Option(help="default: the run's")] = None,
    label_column: Opt[str | None, typer.Option(help="default: the run's")] = None,
    output: Opt[Path | None, typer.Option(help="write metrics JSON here")] = None,
    tokens_column: Opt[str | None, typer.Option(help="NER models, JSONL data: the token-list column")] = None,
    tags_column: Opt[str | None, typer.Option(help="NER models, JSONL data: the tag-list column")] = None,
    tta: Opt[str | None, typer.Option(help=TTA_HELP)] = None,
) -> None:
    """Evaluate a trained model on labelled data (NER: CoNLL/JSONL tagged sentences; QA: SQuAD JSON; the other
    tasks: files with the columns their run was trained on)."""
    writable_output(output)
    predictor, run_cfg = _saved_run(run, {"data.text_column": text_column, "data.label_column": label_column,
                                          "ner.tokens_column": tokens_column, "ner.tags_column": tags_column}, tta)
    frame = predictor.task.read_labelled(data, run_cfg)
    metrics = predictor.evaluate(frame)
    console.print(metrics_table(metrics, f"metrics on {data} ({len(frame):,} examples"
                                + (f", test-time augmentation {tta})" if tta else ")")))
    if output:
        output.write_text(json.dumps(metrics, indent=2))


def predict(
    run: Opt[Path, typer.Argument(help="run directory (or model directory)")],
    texts: Opt[list[str] | None, typer.Argument(help="inputs (pairs models: the texts two by two)")] = None,
    input: Opt[Path | None, typer.Option("--input", help="file of inputs (CSV/JSONL/Parquet); every column is kept "
                                                         "in the output")] = None,
    text_column: Opt[str | None, typer.Option(help="the text column of --input (default: the run's)")] = None,
    output: Opt[Path | None, typer.Option(help="write predictions to .csv, .jsonl, .json or .parquet")] = None,
    question: Opt[list[str] | None, typer.Option(help="QA models: a question about --context (repeatable)")] = None,
    context: Opt[str | None, typer.Option(help="QA models: the text the answers are taken from")] = None,
    base: Opt[str | None, typer.Option(help="run the run's kept adapters (--keep-adapters) over this base model "
                                            "(bundled name or directory) instead of its merged model")] = None,
    tta: Opt[str | None, typer.Option(help=TTA_HELP)] = None,
) -> None:
    """Predict for inputs given as arguments or in a file (classification: label and probabilities; pairs: scores
    or labels; NER: entity spans; QA: the answer to --question in --context, or question/context columns of
    --input; text2text: generated text)."""
    writable_output(output, PREDICTION_FORMATS)
    predictor, run_cfg = _saved_run(run, {"data.text_column": text_column}, tta)
    if base is not None:
        from transferlab.deploy.adapters import MultiAdapterPredictor

        predictor = MultiAdapterPredictor(base, {"run": run})["run"]
        predictor.tta = tta  # checked against the run's task above
    task = predictor.task
    if (question or context is not None) and "question" not in task.input_fields:
        raise UserError(f"predict --question/--context needs a QA model, but {predictor.model_dir} holds a "
                        f"'{task.name}' model.", "Pass texts as arguments or --input, or use a QA model's run.")
    if input is not None:
        frame = task.read_inputs(input, run_cfg)
    else:
        frame = task.inputs_from_args(list(texts or []), {"question": question, "context": context})
    check_inputs(frame, task.input_fields, input)
    write_predictions(frame, predictor.predict_frame(frame), output, task.line)


def check_inputs(frame: pd.DataFrame, fields: list[str], source: Path | None) -> None:
    """Refuse an empty input text (the service does too): a model would still label it, confidently."""
    from transferlab.data.sources import refuse_blank_texts

    columns = frame.attrs.get("role_columns", {})
    for field in fields:
        where = f"{source}: column {columns.get(field, field)!r}, data row" if source else f"predict: {field} argument"
        refuse_blank_texts(frame[field].astype(str).tolist(), where)


def _flat(prediction: dict) -> dict:
    """A prediction as table cells: probabilities as one column per class, lists as JSON text."""
    cells = {}
    for key, value in prediction.items():
        if isinstance(value, dict):
            cells.update({f"p({name})": p for name, p in value.items()})
        elif isinstance(value, list):
            cells[key] = json.dumps(value)
        else:
            cells[key] = value
    return cells


def writable_output(output: Path | None, formats: tuple[str, ...] = ()) -> None:
    """Check an --output file (its format, when `formats` are given) before any work, creating its folder: never
    fail after computing everything."""
    if output is None:
        return
    if formats and output.suffix not in formats:
        raise UserError(f"--output '{output}': unknown format '{output.suffix}'.",
                        f"Use a file name ending in one of: {', '.join(sorted(formats))}.")
    if output.is_dir():
        raise UserError(f"--output '{output}' is a directory.",
                        f"Name a file inside it, e.g. {output / 'out'}{(formats or ('.json',))[0]}.")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"--output '{output}': cannot create its folder '{output.parent}' ({err.strerror}).",
                        "Choose a path in a folder you can write to.") from err


def write_predictions(frame: pd.DataFrame, predictions: list[dict], output: Path | None, line) -> None:
    """Print one line per prediction, or write the inputs' own columns + the predictions to `output`."""
    columns = frame.attrs.get("input_columns", list(frame.columns))
    rows = [{**{c: row[c] for c in columns}, **pred} for row, pred in zip(frame.to_dict("records"), predictions,
                                                                          strict=True)]
    import pandas as pd

    if output is None:
        for row, pred in zip(frame.to_dict("records"), predictions, strict=True):
            console.print(line(row, pred), highlight=False, markup=False)  # texts may hold [brackets]
        return
    if output.suffix == ".jsonl":
        output.write_text("".join(json.dumps(r, default=str) + "\n" for r in rows))
    elif output.suffix == ".json":
        output.write_text(json.dumps(rows, indent=1, default=str))
    else:
        table = pd.DataFrame([_flat(r) for r in rows])
        table.to_csv(output, index=False) if output.suffix == ".csv" else table.to_parquet(output, index=False)


def card(run: Opt[Path, typer.Argument(help="run directory")]) -> None:
    """(Re)write the model card RUN/model/README.md (Hugging Face format) from the run's files: base model, data,
    plan, held-out metrics with their spread, time and hardware, limitations, how to reproduce it."""
    from transferlab.evaluation.card import write_card

    path = write_card(run)
    console.print(f"wrote [bold]{path}[/]")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the CLI."""
    for command in (demo, train, plan, evaluate, predict, card):
        app.command()(command)
