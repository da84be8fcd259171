"""`search` studies outlive their process: a killed search resumes where it stopped, an existing study is never
silently reused, and several workers share one study in a real PostgreSQL server."""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pandas as pd
import pytest
from conftest import tiny_config

from transferlab.config import build_config
from transferlab.errors import UserError
from transferlab.lab import search
from transferlab.lab.search import Range, run_search
from transferlab.lab.study_store import STUDY_FILE, WORKER

# seconds-long trials: a few examples, short texts, only the head learns (on cached features)
TINY = ["--lr", "1e-4:1e-2", "--dropout", "0,0.2", "--strategies", "feature-extraction",
        "--max-train-examples", "16", "--max-eval-examples", "8", "--max-length", "16",
        "--set", "training.epochs=1", "--set", "training.batch_size=8", "--set", "doctor.enabled=false",
        "--pruning-startup", "10"]
SPACE = {"lr": Range(low=1e-4, high=1e-2, log=True), "strategy": ["feature-extraction"]}


def tiny_cfg(root: Path, name: str = "s", epochs: int = 1):
    return build_config(tiny_config(root, name=name, data={"max_train_examples": 16, "max_eval_examples": 8},
                                    model={"max_length": 16}, strategy={"name": "feature-extraction"},
                                    training={"epochs": epochs, "batch_size": 8}, doctor={"enabled": False}))


def start_search(*args: str, log: Path, threads: int | None = None) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads else None
    with log.open("w") as out:
        return subprocess.Popen([sys.executable, "-m", "transferlab.cli", "search", *TINY, *args],
                                stdout=out, stderr=subprocess.STDOUT, env=env)


def trial_states(db: Path) -> list[str]:
    """The trials' states as the running search stored them (read-only: a watcher must not write)."""
    if not db.is_file():
        return []
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as connection:
            return [state for (state,) in connection.execute("SELECT state FROM trials ORDER BY number")]
    except sqlite3.OperationalError:  # the tables are not created yet
        return []


def kill_when(proc: subprocess.Popen, ready: Callable[[], bool], log: Path) -> None:
    """SIGKILL the search as soon as `ready()` holds."""
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"the search ended (code {proc.returncode}) before it could be killed:\n" \
                                        f"{log.read_text()[-3000:]}"
            if ready():
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return
            time.sleep(0.1)
        pytest.fail("the search did not reach the point to kill it in time")
    finally:
        if proc.poll() is None:
            proc.kill()


def test_killed_search_resumes_where_it_stopped(tmp_path):
    run_dir, log = tmp_path / "s", tmp_path / "search.log"
    db, resume_point = run_dir / STUDY_FILE, run_dir / "trial-001" / "checkpoints" / "latest"
    args = ("--trials", "2", "--name", "s", "--output", str(tmp_path), "--set", "training.save_every=1")
    # killed in the middle of trial 1: trial 0 done, trial 1 running and a checkpoint of it written
    kill_when(start_search(*args, log=log), lambda: trial_states(db) == ["COMPLETE", "RUNNING"]
              and resume_point.is_file(), log)
    assert trial_states(db) == ["COMPLETE", "RUNNING"]
    before = optuna.load_study(study_name="s", storage=f"sqlite:///{db}").trials
    resumed = start_search(*args, "--resume", log=log)
    assert resumed.wait(timeout=600) == 0, log.read_text()[-3000:]

    after = optuna.load_study(study_name="s", storage=f"sqlite:///{db}").trials
    # 2 finished, as asked: the first one kept, the killed one run again as trial 2
    assert [t.state.name for t in after] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert after[0].value == before[0].value and after[0].params == before[0].params
    assert after[2].params == before[1].params and after[2].system_attrs["failed_trial"] == 1
    assert not resume_point.parent.exists()  # the killed trial's checkpoints are dropped, not left to fill the disk
    rows = pd.read_csv(run_dir / "trials.csv")
    assert list(rows["trial"]) == [0, 1, 2] and rows["retry_of"].tolist()[2] == 1
    assert "trial 1 was interrupted" in log.read_text()


def test_interrupted_trial_runs_again_on_resume(tmp_path, monkeypatch):
    """Ctrl-C inside a trial: Optuna marks it failed, --resume re-runs it (not a trial that failed on its own)."""
    cfg = tiny_cfg(tmp_path)
    real_train_run = search.train_run

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(search, "train_run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_search(cfg, SPACE, trials=1)
    monkeypatch.setattr(search, "train_run", real_train_run)
    trials = run_search(cfg, SPACE, trials=1, resume=True).study.trials
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]
    assert trials[1].params == trials[0].params and trials[1].system_attrs["failed_trial"] == 0
    # a finished search resumed again has nothing left to run, and its re-run trial is not queued twice
    assert len(run_search(cfg, SPACE, trials=1, resume=True).study.trials) == 2


def test_an_existing_study_is_never_reused_or_deleted_without_a_flag(tmp_path, transferlab_cli, capsys):
    cfg = tiny_cfg(tmp_path)
    cfg.run_dir.mkdir()
    optuna.create_study(storage=f"sqlite:///{cfg.run_dir / STUDY_FILE}", study_name="s")
    kept = (cfg.run_dir / STUDY_FILE).read_bytes()
    with pytest.raises(UserError, match="already holds a search.*--resume.*--overwrite"):
        run_search(cfg, SPACE, trials=1)
    assert transferlab_cli("search", "--name", "s", "--output", tmp_path) == 2
    assert "Pass --resume to continue it" in capsys.readouterr().err
    assert (cfg.run_dir / STUDY_FILE).read_bytes() == kept
    with pytest.raises(UserError, match="no search to resume"):
        run_search(tiny_cfg(tmp_path, name="other"), SPACE, trials=1, resume=True)


def test_resume_refuses_to_fail_a_trial_still_running(tmp_path):
    cfg = tiny_cfg(tmp_path)
    cfg.run_dir.mkdir()
    study = optuna.create_study(storage=f"sqlite:///{cfg.run_dir / STUDY_FILE}", study_name="s", direction="maximize")
    running = study.ask()
    running.set_user_attr("worker", WORKER)  # this test's process: alive, and started before the trial
    with pytest.raises(UserError, match=f"trial 0 of this search is still running \\(process {os.getpid()}\\)"):
        run_search(cfg, SPACE, trials=1, resume=True)
    assert study.trials[0].state == optuna.trial.TrialState.RUNNING


def test_resume_with_other_settings_is_refused(tmp_path):
    cfg = tiny_cfg(tmp_path)
    run_search(cfg, SPACE, trials=1)
    with pytest.raises(UserError, match=r"other settings \(space.lr.high: 0.01 in the study, 0.1 now"):
        run_search(cfg, {**SPACE, "lr": Range(low=1e-4, high=0.1, log=True)}, trials=2, resume=True)
    with pytest.raises(UserError, match=r"config.training.epochs: 1.0 in the study, 2.0 now"):
        run_search(tiny_cfg(tmp_path, epochs=2), SPACE, trials=2, resume=True)
    moved = tmp_path / "moved"
    cfg.run_dir.rename(moved)  # a renamed run directory still finds its study
    result = run_search(tiny_cfg(tmp_path, name="moved"), SPACE, trials=1, resume=True)
    assert result.study.study_name == "s" and len(result.study.trials) == 1
    assert pd.read_csv(moved / "trials.csv")["state"].tolist() == ["complete"]


@pytest.mark.parametrize(("storage", "overwrite", "message"), [
    ("postgresql://search@127.0.0.1:1/studies", False, "Cannot open the study storage"),
    ("postgresql://search:secret@127.0.0.1:1/studies", False, r"search:\*\*\*@127.0.0.1"),
    ("nosuchdb://x/y", False, "Cannot open the study storage"),
    pytest.param("mysql://search@127.0.0.1:1/studies", False, "driver for this URL is not installed",
                 marks=pytest.mark.skipif(importlib.util.find_spec("MySQLdb") is not None,
                                          reason="a MySQL driver is installed")),
    ("not a url", False, "is not a database URL"),
    ("sqlite:///shared.db", True, "no worker deletes it"),
])
def test_bad_storage_options_are_user_errors(tmp_path, storage, overwrite, message):
    with pytest.raises(UserError, match=message) as err:
        run_search(tiny_cfg(tmp_path), SPACE, trials=1, storage=storage, overwrite=overwrite)
    assert "secret" not in str(err.value)


# ---- a real PostgreSQL server --------------------------------------------------------------------------
def postgres_bin() -> Path | None:
    """The directory of initdb and pg_ctl: on PATH, or where Debian's postgresql packages put them."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return candidates[-1].parent if candidates else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def postgres_url(tmp_path) -> Iterator[str]:
    """A throw-away PostgreSQL cluster on a free port; its URL (trust authentication, user `search`)."""
    bindir = postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (initdb, pg_ctl): `apt-get install postgresql`, which "
                    "`make setup` does where apt exists")
    as_root = os.geteuid() == 0
    # the server refuses to run as root: then it runs as an unprivileged user, in a directory that user can
    # reach (pytest's tmp_path sits below a directory only root may enter)
    user = pwd.getpwnam("postgres" if _has_user("postgres") else "nobody") if as_root else None
    base = Path(tempfile.mkdtemp(prefix="transferlab-pg-")) if as_root else tmp_path / "pg"
    base.mkdir(exist_ok=True)
    if user is not None:
        os.chown(base, user.pw_uid, user.pw_gid)
    run_as = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []} if user else {}
    port = free_port()

    def pg(*args: str) -> None:
        subprocess.run([str(bindir / args[0]), *args[1:]], check=True, capture_output=True, cwd=base, **run_as)

    try:
        pg("initdb", "-D", str(base / "data"), "-U", "search", "--auth=trust", "--no-sync", "--no-locale",
           "--encoding=UTF8")
        pg("pg_ctl", "start", "-w", "-D", str(base / "data"), "-l", str(base / "server.log"),
           "-o", f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off")
        yield f"postgresql://search@127.0.0.1:{port}/postgres"
    finally:
        if (base / "data" / "postmaster.pid").exists():
            pg("pg_ctl", "stop", "-m", "immediate", "-D", str(base / "data"))
        if as_root:
            shutil.rmtree(base, ignore_errors=True)


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def test_two_workers_share_one_postgresql_study(tmp_path, postgres_url):
    args = ("--trials", "2", "--name", "shared", "--output", str(tmp_path), "--storage", postgres_url)
    logs = [tmp_path / f"worker{i}.log" for i in (1, 2)]
    workers = [start_search(*args, log=log, threads=1) for log in logs]  # two processes on a small machine
    for worker, log in zip(workers, logs, strict=True):
        assert worker.wait(timeout=600) == 0, log.read_text()[-3000:]

    trials = optuna.load_study(study_name="shared", storage=postgres_url).trials
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    by_worker: dict[str, list] = {}
    for t in trials:
        by_worker.setdefault(t.user_attrs["worker"], []).append(t)
    assert sorted(len(ts) for ts in by_worker.values()) == [2, 2]  # --trials is per worker
    first, second = ([min(t.datetime_start for t in ts), max(t.datetime_complete for t in ts)]
                     for ts in by_worker.values())
    assert first[0] < second[1] and second[0] < first[1], "the two workers did not run at the same time"
    run_dir = tmp_path / "shared"
    for number in range(4):  # one run directory per trial, named by the shared study's trial number
        assert (run_dir / f"trial-{number:03d}" / "metrics.json").is_file()
    # each worker writes the study's summary when it ends (through a rename: whole, whichever wrote last)
    assert set(pd.read_csv(run_dir / "trials.csv")["trial"]) <= {0, 1, 2, 3}
