"""Where a search's Optuna study lives: SQLite in the run directory by default, or any Optuna RDB URL
(PostgreSQL, MySQL, ...) that several worker processes share.

A local study (`<run dir>/study.db`) belongs to one search: a second search of the same name is refused unless it
resumes (--resume) or replaces (--overwrite) it, and resuming fails the trials the dead process left behind and
queues their parameters again. A shared study is joined by every worker started with the same --storage and
--name; heartbeats let the surviving workers re-run the trial of a worker that died.
"""

from __future__ import annotations

import os
import socket
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import psutil
import sqlalchemy.exc
from optuna.exceptions import ExperimentalWarning
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import make_url

from transferlab.errors import UserError

STUDY_FILE = "study.db"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
HEARTBEAT_S = 10  # a running trial of a shared study records a heartbeat this often...
GRACE_S = 60  # ...and is taken for dead (failed, then queued again) after this long without one
MAX_RETRIES = 2  # a trial that keeps killing its worker (out of memory, say) is not re-run for ever
WORKER = f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class StudyPlace:
    """The storage URL of a study, its name, whether other workers share it, and how it is shown to the user
    (the study file as the user named it, or the URL without its password)."""

    url: str
    name: str
    shared: bool
    shown: str


def study_place(run_dir: Path, name: str, storage: str | None, resume: bool, overwrite: bool) -> StudyPlace:
    """Check --storage, --resume and --overwrite against what is on disk, before any work is done."""
    if storage is None:
        db = run_dir / STUDY_FILE
        if resume and not db.is_file():
            raise UserError(f"--resume: '{run_dir}' holds no search to resume (no {STUDY_FILE}).",
                            "Start the search without --resume, or check --name and --output.")
        if db.is_file() and not (resume or overwrite):
            raise UserError(f"'{run_dir}' already holds a search ({STUDY_FILE}).",
                            "Pass --resume to continue it, --overwrite to replace it, or choose another --name.")
        return StudyPlace(f"sqlite:///{db.resolve()}", name, shared=False, shown=str(db))
    if overwrite:
        raise UserError(f"--overwrite with --storage: the study '{name}' may be shared by other workers, so no worker "
                        "deletes it.", "Choose another --name for a new study, or delete this one with `optuna "
                        "delete-study --storage URL --study-name NAME` once no worker uses it.")
    try:
        shown = make_url(storage).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError as err:
        raise UserError(f"--storage '{storage}' is not a database URL.",
                        "Write it as dialect://user:password@host:port/database, e.g. "
                        "postgresql://search@db-host/studies or sqlite:///studies.db.") from err
    return StudyPlace(storage, name, shared=True, shown=shown)


def open_study(place: StudyPlace, storage: RDBStorage, direction: str, seed: int,
               pruner: optuna.pruners.BasePruner, signature: dict[str, Any]) -> optuna.Study:
    """Create the study or reopen it; refuse one made by a search with other settings (`signature`).

    A local study samples with seed + the number of trials it holds, so a resumed search does not replay its
    random start-up trials; workers of a shared study sample unseeded, so they do not propose the same trials.
    """
    existing = optuna.get_all_study_names(storage)
    # a study file of our own holds one study: found whatever its name, so a renamed run directory still resumes
    name = existing[0] if not place.shared and len(existing) == 1 else place.name
    study = optuna.create_study(storage=storage, study_name=name, direction=direction, pruner=pruner,
                                load_if_exists=True)
    stored = study.user_attrs.get("search")
    if stored is None:
        study.set_user_attr("search", signature)
    elif stored != signature:
        changes = "; ".join(_differences(stored, signature)[:6])
        raise UserError(f"The study '{name}' in {place.shown} was made by a search with other settings ({changes}).",
                        "Run it with the options it was started with, or choose another --name for a new search.")
    study.sampler = optuna.samplers.TPESampler(seed=None if place.shared else seed + len(study.trials))
    return study


def requeue_interrupted(study: optuna.Study) -> list[int]:
    """Fail the trials a killed or interrupted process left unfinished and queue their parameters again.

    For a study of one process at a time: a trial still running in a live process of this machine is an error.
    """
    retried = {n for t in study.trials for n in t.system_attrs.get("retry_history", [])}
    left = [t for t in study.trials if t.number not in retried and (
        t.state == TrialState.RUNNING or (t.state == TrialState.FAIL and t.user_attrs.get("interrupted")))]
    for trial in left:
        if trial.state == TrialState.RUNNING:
            _refuse_if_alive(trial)
    for trial in left:
        if trial.state == TrialState.RUNNING:
            study.tell(trial.number, state=TrialState.FAIL)
        _retry()(study, study.trials[trial.number])
    return [t.number for t in left]


def _refuse_if_alive(trial: FrozenTrial) -> None:
    host, _, pid = str(trial.user_attrs.get("worker", "")).rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return  # run elsewhere: only the user knows that process is gone
    try:
        process = psutil.Process(int(pid))
        # a process started after the trial only reuses the dead search's process id
        alive = process.status() != psutil.STATUS_ZOMBIE and process.create_time() <= trial.datetime_start.timestamp()
    except psutil.NoSuchProcess:
        return
    if alive:
        raise UserError(f"--resume: trial {trial.number} of this search is still running (process {pid}).",
                        "Let that search finish or stop it first; --resume continues a search that has ended.")


def retried_from(trial: FrozenTrial) -> int | None:
    """The number of the interrupted trial this one re-runs, if any."""
    return trial.system_attrs.get("failed_trial")


def _retry() -> RetryHeartbeatStaleTrialCallback:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        return RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)


def connect(place: StudyPlace) -> RDBStorage:
    """The Optuna storage at the place (its tables created if new); a driver missing or a server down is a UserError.

    Shared studies record heartbeats: a trial whose worker died is failed and queued again by the others.
    """
    if place.shared:
        options: dict[str, Any] = {"heartbeat_interval": HEARTBEAT_S, "grace_period": GRACE_S,
                                   "heartbeat_stale_trial_callback": _retry()}
    else:
        # the heartbeat-free writer and a reader (a test, a second terminal) may briefly lock the file
        options = {"engine_kwargs": {"connect_args": {"timeout": 30}}}
    try:
        return _connect(place.url, options)
    except ImportError as err:
        raise UserError(f"--storage {place.shown}: the database driver for this URL is not installed "
                        f"({err.__cause__ or err}).", "Install it (PostgreSQL: pip install 'psycopg[binary]'), or "
                        "name an installed one in the URL (postgresql+psycopg2://...).") from err
    except sqlalchemy.exc.SQLAlchemyError as err:
        reason = str(getattr(err, "orig", None) or err).strip().splitlines()[0]
        raise UserError(f"Cannot open the study storage {place.shown}: {reason}.",
                        "Check that the database server is running and that the URL's host, port, user and "
                        "database are right.") from err


def _connect(url: str, options: dict[str, Any]) -> RDBStorage:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        for _ in range(2):
            try:
                return RDBStorage(url, **options)
            except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
                pass  # workers starting together on an empty database race to create Optuna's tables: try again
        return RDBStorage(url, **options)


def _differences(old: Any, new: Any, path: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for key in sorted(set(old) | set(new), key=str)
                for d in _differences(old.get(key), new.get(key), f"{path}.{key}" if path else str(key))]
    return [] if old == new else [f"{path}: {old!r} in the study, {new!r} now"]
