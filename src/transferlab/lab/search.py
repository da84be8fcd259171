"""Hyper-parameter search with Optuna: seeded TPE sampling, median pruning on the intermediate eval metric.

A search space maps parameters to a list of choices or a range ({low, high, log, step}). Parameters are the
short names of PARAM_FIELDS or any config field path such as `training.schedule`. Every trial is an ordinary
`train_run` (in out_dir/trial-<n>, its model and checkpoints removed once scored); the best trial's config is
written as best.yaml, which `transferlab train --config best.yaml` re-runs. The study is stored as it goes
(study_store.py), so a killed search resumes and several workers can share one study.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from transferlab.config import RunConfig, apply_override, build_config, load_yaml, save_yaml
from transferlab.errors import UserError
from transferlab.lab import study_store
from transferlab.lab.compare import compile_strategies
from transferlab.lab.cross_validation import drop_checkpoints
from transferlab.pipeline import load_run_data, prepare_run, results_dir, train_run

PARAM_FIELDS = {
    "lr": "strategy.lr", "head_lr": "strategy.head_lr", "strategy": "strategy.name",
    "batch_size": "training.batch_size", "epochs": "training.epochs", "weight_decay": "training.weight_decay",
    "warmup": "training.warmup", "dropout": "model.head_dropout",
}
# Ranges of these parameters are searched on a log scale when given as flags (orders of magnitude matter).
LOG_SCALE = {"lr", "head_lr"}


class Range(BaseModel):
    """A numeric range; integers at both ends (and an integer step) make an integer parameter."""

    model_config = ConfigDict(extra="forbid")

    low: int | float
    high: int | float
    log: bool = False
    step: int | float | None = Field(None, gt=0)

    @property
    def is_int(self) -> bool:
        return all(isinstance(v, int) for v in (self.low, self.high, self.step or 1))


Spec = list[Any] | Range

DEFAULT_SPACE: dict[str, Spec] = {
    "lr": Range(low=1e-5, high=1e-3, log=True),
    "batch_size": [16, 32],
    "epochs": Range(low=1, high=3),
    "weight_decay": Range(low=0.0, high=0.1),
    "warmup": Range(low=0.0, high=0.2),
    "dropout": Range(low=0.0, high=0.3),
    "strategy": ["full", "freeze-bottom:3", "freeze-attention", "feature-extraction"],
}
log = logging.getLogger("transferlab")


def _number(text: str) -> int | float | str:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text.strip()


def parse_flag(name: str, text: str) -> Spec:
    """`low:high` is a range (log scale for learning rates), `a,b,c` a list of choices, one value a fixed choice."""
    if name != "strategy" and text.count(":") == 1:
        low, high = (_number(t) for t in text.split(":"))
        return _range(name, {"low": low, "high": high, "log": name in LOG_SCALE}, f"--{name.replace('_', '-')}")
    return [_number(t) for t in text.split(",") if t.strip()]


def _range(name: str, raw: dict, origin: str) -> Range:
    try:
        return Range.model_validate(raw)
    except ValidationError as err:
        raise UserError(f"Search space ({origin}): '{name}' is not a valid range: {raw} "
                        f"({err.errors()[0]['msg']}).", "Write a range as low:high, or {low: .., high: ..} in YAML.") \
            from err


def load_space(path: Path) -> dict[str, Spec]:
    """A search space from YAML: `name: [choices]`, `name: {low, high, log, step}` or `name: value`."""
    raw = load_yaml(path)
    space: dict[str, Spec] = {}
    for name, value in raw.items():
        if isinstance(value, dict):
            space[name] = _range(name, value, str(path))
        else:
            space[name] = list(value) if isinstance(value, list) else [value]
    return space


def check_space(space: dict[str, Spec], base: dict, origin: str) -> None:
    """Every parameter must name a config field and every value (each choice, both ends of a range) be valid."""
    if not space:
        raise UserError(f"The search space ({origin}) is empty: there is nothing to search over.",
                        f"Give at least one parameter ({', '.join(PARAM_FIELDS)}, or a config field like "
                        "training.schedule) with a list of values or a low:high range.")
    for name, spec in space.items():
        if name not in PARAM_FIELDS and "." not in name:
            raise UserError(f"Search space ({origin}): unknown parameter '{name}'.",
                            f"Use one of {', '.join(PARAM_FIELDS)} or a config field path such as training.schedule.")
        if isinstance(spec, Range):
            if spec.low > spec.high:
                raise UserError(f"Search space ({origin}): '{name}' has no valid value, its range "
                                f"{spec.low}:{spec.high} is empty.", "Give the lower bound first: low:high.")
            if spec.log and spec.low <= 0:
                raise UserError(f"Search space ({origin}): '{name}' is searched on a log scale but its range starts "
                                f"at {spec.low}.", "Start the range above 0, or set log: false.")
            values = [spec.low, spec.high]
        else:
            values = spec
        if not values:
            raise UserError(f"Search space ({origin}): '{name}' has an empty list of values.",
                            "Give at least one value.")
        for value in values:
            try:
                config_for(base, {name: value}, f"search space {origin}")
            except UserError as err:
                raise UserError(f"Search space ({origin}): '{name}' = {value!r} is not a valid value. {err.what}",
                                "Change the range or choices so that every value is allowed.") from err


def config_for(base: dict, values: dict[str, Any], origin: str, **top: Any) -> RunConfig:
    """The base config with parameter values (and top-level fields such as name) applied, validated."""
    data = json.loads(json.dumps(base))
    data.update(top)
    for name, value in values.items():
        apply_override(data, f"{PARAM_FIELDS.get(name, name)}={json.dumps(value)}")
    return build_config(data, origin)


def _suggest(trial: optuna.Trial, name: str, spec: Spec) -> Any:
    if not isinstance(spec, Range):
        return trial.suggest_categorical(name, spec)
    if spec.is_int:
        return trial.suggest_int(name, spec.low, spec.high, step=spec.step or 1, log=spec.log)
    return trial.suggest_float(name, spec.low, spec.high, step=spec.step, log=spec.log)


class PruneOnEval:
    """Trainer callback: report each evaluation's metric to the trial and stop the run when the pruner says so."""

    def __init__(self, trial: optuna.Trial, metric: str):
        self.trial = trial
        self.metric = metric
        self.evals = 0

    def __call__(self, record: dict, trainer) -> None:
        if record.get("kind") != "eval":
            return
        value = record["loss"] if self.metric == "loss" else record["metrics"].get(self.metric)
        if value is None:
            return
        self.evals += 1
        # the eval count, not the optimizer step, so trials with other batch sizes line up epoch by epoch
        self.trial.report(value, step=self.evals)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"{self.metric} {value:.4f} after {self.evals} evaluations is below the median")


@dataclass
class SearchResult:
    """The finished study, the metric it optimised, the best run config and the files written."""

    study: optuna.Study
    metric: str
    best_config: RunConfig
    rows: list[dict]
    files: list[Path] = field(default_factory=list)


def _score(doc: dict, metric: str) -> float:
    value = doc["eval_loss"] if metric == "loss" else doc["eval"].get(metric)
    if value is None:
        names = ", ".join(k for k, v in doc["eval"].items() if isinstance(v, int | float))
        raise UserError(f"The search metric '{metric}' is not among this task's metrics ({names}, loss).",
                        "Set training.metric to one of them.")
    return float(value)


def trial_rows(study: optuna.Study) -> list[dict]:
    """One row per trial: number, state, value, parameters, the trial it re-runs (if any re-runs one), duration."""
    retries = {t.number: study_store.retried_from(t) for t in study.trials}
    with_retries = any(n is not None for n in retries.values())
    rows = []
    for t in study.trials:
        # a killed trial is failed only when the search resumes: its start-to-fail time means nothing
        finished = t.state in study_store.FINISHED
        duration = round((t.datetime_complete - t.datetime_start).total_seconds(), 1) if finished else None
        retry = {"retry_of": retries[t.number]} if with_retries else {}
        rows.append({"trial": t.number, "state": t.state.name.lower(), "value": t.value, **t.params, **retry,
                     "duration_s": duration})
    return rows


def run_search(cfg: RunConfig, space: dict[str, Spec], trials: int, timeout: float | None = None,
               startup_trials: int = 3, overwrite: bool = False, origin: str = "the command line",
               on_trial: Callable[[dict], None] | None = None, resume: bool = False,
               storage: str | None = None) -> SearchResult:
    """Run `trials` trials of an Optuna study in cfg.run_dir; write trials.csv, search.json and best.yaml.

    The study lives in cfg.run_dir/study.db, or in `storage` (an Optuna RDB URL) shared with other workers, each
    running its own `trials`. `resume` continues a local study: the trials it finished count toward `trials`.
    """
    if trials < 1:
        raise UserError(f"--trials {trials}: at least one trial is needed.", "Pass --trials 1 or more.")
    place = study_store.study_place(cfg.run_dir, cfg.name, storage, resume, overwrite)
    # a shared database is reached before any work, so that a wrong URL or a stopped server fails at once
    shared_storage = study_store.connect(place) if place.shared else None
    check_space(space, cfg.model_dump(mode="json"), origin)
    # single-valued parameters are set, not searched: they would only clutter the trials table
    fixed = {name: spec[0] for name, spec in space.items() if isinstance(spec, list) and len(spec) == 1}
    varied = {name: spec for name, spec in space.items() if name not in fixed}
    if not varied:
        raise UserError(f"Every parameter of the search space ({origin}) has a single value: there is nothing to "
                        "search.", "Give a low:high range or several choices for at least one parameter, or run "
                        "that one config with `transferlab train`.")
    base = config_for(cfg.model_dump(mode="json"), fixed, origin).model_dump(mode="json")
    data = load_run_data(cfg)
    prep = prepare_run(cfg, data)
    compile_strategies(cfg, prep, space.get("strategy", [cfg.strategy.name]))
    metric = cfg.training.metric or prep.task.metric
    maximize = metric != "loss" and prep.task.greater_is_better
    del prep  # its model is only needed for the check above: free it before the trials build their own
    # a shared study's directory is shared by the workers of this machine: trial numbers keep their runs apart
    claim = contextlib.nullcontext(cfg.run_dir) if place.shared else results_dir(cfg, overwrite, resume)
    with claim as out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
        # a study is continued only by a search of the same space, metric and settings (wherever its runs are kept)
        signature = {"metric": metric, "space": _space_doc(space),
                     "config": {k: v for k, v in base.items() if k not in ("name", "output_dir")}}
        study = study_store.open_study(place, shared_storage or study_store.connect(place),
                                       "maximize" if maximize else "minimize", cfg.seed,
                                       optuna.pruners.MedianPruner(n_startup_trials=startup_trials), signature)
        to_run = _trials_left(study, trials, out_dir) if resume and not place.shared else trials
        log.info("study '%s' in %s: %d trials finished, %d to run here", study.study_name, place.shown,
                 sum(t.state in study_store.FINISHED for t in study.trials), to_run)

        def objective(trial: optuna.Trial) -> float:
            values = {name: _suggest(trial, name, spec) for name, spec in varied.items()}
            run_cfg = config_for(base, values, f"trial {trial.number}", name=_trial_name(trial.number),
                                 output_dir=str(out_dir))
            trial.set_user_attr("run_dir", str(run_cfg.run_dir))
            trial.set_user_attr("worker", study_store.WORKER)
            trial.set_user_attr("interrupted", False)  # a re-run trial inherits its original's attributes
            try:
                doc = train_run(run_cfg, show_progress=False, data=data, callbacks=(PruneOnEval(trial, metric),))
            except KeyboardInterrupt:
                trial.set_user_attr("interrupted", True)  # Optuna fails it; --resume runs it again
                raise
            finally:
                drop_checkpoints(run_cfg.run_dir, keep_model=False)
            return _score(doc, metric)

        started = time.perf_counter()
        callbacks = [lambda s, t: on_trial(trial_rows(s)[t.number])] if on_trial else []
        if to_run:
            study.optimize(objective, n_trials=to_run, timeout=timeout, callbacks=callbacks)
        return _summarise(study, metric, base, cfg, space, place, out_dir, time.perf_counter() - started)


def _trials_left(study: optuna.Study, trials: int, out_dir: Path) -> int:
    """Resuming a local study: queue its interrupted trials again; the trials still to run to finish `trials`."""
    for number in study_store.requeue_interrupted(study):
        drop_checkpoints(out_dir / _trial_name(number), keep_model=False)
        log.info("trial %d was interrupted: it runs again", number)
    return max(0, trials - sum(t.state in study_store.FINISHED for t in study.trials))


def _summarise(study: optuna.Study, metric: str, base: dict, cfg: RunConfig, space: dict[str, Spec],
               place: study_store.StudyPlace, out_dir: Path, seconds: float) -> SearchResult:
    """The best trial's config and the trials table, written as best.yaml, trials.csv and search.json."""
    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not completed:
        raise UserError(f"No trial of the search finished ({len(study.trials)} pruned or failed).",
                        "Run more trials (--trials), or raise --pruning-startup so fewer are pruned early.")
    best = study.best_trial
    best_cfg = config_for(base, best.params, "the best trial", name=f"{cfg.name}-best", output_dir=cfg.output_dir)
    result = SearchResult(study, metric, best_cfg, trial_rows(study))
    result.files = [out_dir / "trials.csv", out_dir / "search.json", out_dir / "best.yaml"]
    doc = {"metric": metric, "direction": study.direction.name.lower(), "trials": len(study.trials),
           "seconds": round(seconds, 1), "space": _space_doc(space), "storage": place.shown,
           "study": study.study_name, "best": {"trial": best.number, "value": best.value, "params": best.params},
           "rows": result.rows}
    # nullable dtypes: a column with gaps (retry_of) keeps whole numbers whole
    _publish(result.files[0], lambda p: pd.DataFrame(result.rows).convert_dtypes().to_csv(p, index=False))
    _publish(result.files[1], lambda p: p.write_text(json.dumps(doc, indent=2, default=str)))
    _publish(result.files[2], lambda p: save_yaml(best_cfg, p))
    return result


def _trial_name(number: int) -> str:
    return f"trial-{number:03d}"


def _publish(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary file and rename it: workers sharing a run directory never leave a torn file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    os.replace(tmp, path)


def _space_doc(space: dict[str, Spec]) -> dict:
    return {k: v.model_dump() if isinstance(v, Range) else v for k, v in space.items()}

