"""Experiment tracking on the trainer's events, through accelerate's trackers (TensorBoard, MLflow).

Everything goes to local files inside the run directory: TensorBoard event files in `tb/`, an MLflow store in
`mlruns/` (a SQLite database, MLflow's local backend, plus an artifact folder). Logged: the resolved config and the
plan (as parameters), every train and eval record (loss, metrics, grad norm, the lr of every group) and the
weight change of every group, each at its step. A resumed run continues the same MLflow run.
"""

from __future__ import annotations

import logging
from pathlib import Path

from transferlab.training.events import Callback

TRACKERS = ("tensorboard", "mlflow")


def flatten(doc: dict, prefix: str = "") -> dict[str, str | int | float | bool]:
    """A nested config as `section.field` scalars (lists and None as text), what hyper-parameter tables take."""
    flat: dict[str, str | int | float | bool] = {}
    for key, value in doc.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value if isinstance(value, str | int | float | bool) else str(value)
    return flat


def record_values(record: dict) -> dict[str, float]:
    """The numbers of one history record under tracker names: train/loss, eval/accuracy, lr/head, ..."""
    kind = record.get("kind")
    values: dict[str, float] = {}
    if kind in ("train", "eval"):
        values[f"{kind}/loss"] = record["loss"]
        values.update({f"eval/{k}": v for k, v in (record.get("metrics") or {}).items()})
        if "grad_norm" in record:
            values["train/grad_norm"] = record["grad_norm"]
        values.update({f"lr/{group}": lr for group, lr in (record.get("lr") or {}).items()})
        values.update({f"grad_norm/{group}": n for group, n in (record.get("grad_norms") or {}).items()})
    elif kind == "monitor":
        values.update({f"weight_change/{group}": v for group, v in record["weight_change"].items()})
    return {k: float(v) for k, v in values.items() if isinstance(v, int | float) and not isinstance(v, bool)}


class Trackers(Callback):
    """Sends the run's config, plan and records to the trackers named in `training.report_to`."""

    order = 80
    main_process_only = True

    def __init__(self, names: list[str], run_dir: Path, run_name: str, config: dict, plan: list[dict]):
        self.names = names
        self.run_dir = run_dir
        self.run_name = run_name
        self.params = {**flatten(config), **{f"plan.phase_{p['phase']}": _phase_text(p) for p in plan}}
        self.trackers: list = []

    def on_fit_start(self, trainer) -> None:
        self.trackers = [self._start(name, trainer) for name in self.names]

    def _start(self, name: str, trainer):
        from accelerate.tracking import MLflowTracker, TensorBoardTracker

        if name == "tensorboard":
            tracker = TensorBoardTracker("", self.run_dir / "tb")
            tracker.start()
            tracker.store_init_configuration(self.params)
            return tracker
        import mlflow

        logging.getLogger("mlflow").setLevel(logging.WARNING)  # its schema migrations are not the user's news
        store = self.run_dir / "mlruns"
        store.mkdir(parents=True, exist_ok=True)
        mlflow.set_tracking_uri(f"sqlite:///{(store / 'mlflow.db').resolve()}")
        run_id = trainer.state.extra.get("mlflow_run_id")  # set when this is a resumed run
        tracker = MLflowTracker(experiment_name="transferlab", logging_dir=str((store / "artifacts").resolve()),
                                run_id=run_id, run_name=self.run_name)
        tracker.start()
        if run_id is None:
            tracker.store_init_configuration(self.params)
            trainer.state.extra["mlflow_run_id"] = tracker.active_run.info.run_id
        return tracker

    def on_record(self, trainer, record: dict) -> None:
        values = record_values(record)
        if values:
            for tracker in self.trackers:
                tracker.log(values, step=record.get("step"))

    def on_fit_end(self, trainer) -> None:
        self.close()

    def on_fit_abort(self, trainer) -> None:
        self.close()

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.finish()
        self.trackers = []


def _phase_text(phase: dict) -> str:
    groups = ", ".join(f"{g} @ {lr:.2g}" for g, lr in phase["groups"].items())
    return f"{phase['name']}: {phase['epochs']:g} epochs, {phase['schedule']}; {groups}"
