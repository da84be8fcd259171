"""Run directories through the CLI as a user hits them: names stay inside --output, --overwrite replaces a run only
once the new one has finished, --resume writes where it is pointed, one process at a time holds a run, and a full
disk stops with what was kept and how to go on."""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections import namedtuple
from pathlib import Path

import pytest
from test_cli_errors import assert_user_error

from transferlab.training.trainer import Trainer

TRANSFERLAB = Path(sys.executable).parent / "transferlab"


@pytest.fixture
def cli(cli_in_tmp):
    return cli_in_tmp


@pytest.fixture
def train(cli, tiny_bert, review_csv):
    """`train(*extra)` runs a seconds-long `transferlab train` of the tiny backbone into ./runs."""
    def run(*extra):
        return cli("train", "--model", tiny_bert, "--data", review_csv, "--max-length", "32", "--epochs", "1",
                   "--batch-size", "8", "--output", "runs", "--set", "doctor.enabled=false", *extra)
    return run


def fake_run(path: Path, marker: str = "the user's run") -> Path:
    """A run directory a user cares about (its metrics.json says `marker`)."""
    path.mkdir(parents=True)
    (path / "config.yaml").write_text("name: old\n")
    (path / "metrics.json").write_text(json.dumps({"marker": marker}))
    return path


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# --- run names ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["../escape", "../../escape", "/tmp/absolute-run", ".", "..", "a/../../b",
                                  ".hidden", "a//b", "a\\b", "", "runs/"])
def test_a_name_that_leaves_output_is_refused_before_anything_is_touched(train, tmp_path, name):
    before = listing(tmp_path)
    assert_user_error(train("--name", name), repr(name), "not a plain name", "--output")
    assert listing(tmp_path) == before
    assert not Path("/tmp/absolute-run").exists()


def test_overwrite_of_dot_keeps_the_output_directory(train, tmp_path):
    keep = tmp_path / "runs" / "notes.txt"
    keep.parent.mkdir()
    keep.write_text("mine")
    for name in (".", ".."):
        assert_user_error(train("--name", name, "--overwrite"), "not a plain name")
    assert keep.read_text() == "mine"


def test_resume_refuses_an_escaping_name(cli):
    assert_user_error(cli("train", "--resume", "--name", "../x", "--output", "runs"), "'../x'", "not a plain name")


def test_a_sub_folder_name_trains_inside_output(train, tmp_path):
    code, out, err = train("--name", "exp/a")
    assert code == 0, err
    run = tmp_path / "runs" / "exp" / "a"
    assert (run / "model" / "model.safetensors").is_file()
    assert json.loads((run / "metrics.json").read_text())["steps"] > 0
    # nothing but the run is left behind: no lock, no staging, no temporary files
    assert sorted(p.name for p in run.parent.iterdir()) == ["a"]
    assert not [p for p in run.rglob(".*tmp*")]


# --- --overwrite -------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("extra", "fragment"), [
    (("--data", "nope.csv"), "nope.csv"),
    (("--model", "no-such-model"), "no-such-model"),
    (("--strategy", "freeze-bottom:99"), "freeze-bottom"),
    (("--set", "training.epochs=[1"), "not valid YAML"),
])
def test_overwrite_checks_everything_before_touching_the_old_run(train, tmp_path, extra, fragment):
    old = fake_run(tmp_path / "runs" / "good1")
    assert_user_error(train("--name", "good1", "--overwrite", *extra), fragment)
    assert json.loads((old / "metrics.json").read_text()) == {"marker": "the user's run"}
    assert sorted(p.name for p in old.parent.iterdir()) == ["good1"]


def test_a_failed_overwrite_leaves_the_old_run_intact(train, tmp_path, monkeypatch):
    old = fake_run(tmp_path / "runs" / "good")

    def dies(self, resume=False):
        assert self.run_dir.name == "good.staging"  # the new run trains beside the old one
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "train", dies)
    assert train("--name", "good", "--overwrite")[0] not in (0, 2)  # Ctrl-C mid-training
    assert json.loads((old / "metrics.json").read_text()) == {"marker": "the user's run"}
    assert not (tmp_path / "runs" / ".good.lock").exists()


def test_an_overwrite_replaces_the_old_run_once_finished(train, tmp_path):
    old = fake_run(tmp_path / "runs" / "good")
    (tmp_path / "runs" / "good.staging").mkdir()  # left by an earlier overwrite that was killed: ours to clear
    code, _, err = train("--name", "good", "--overwrite")
    assert code == 0, err
    assert "marker" not in json.loads((old / "metrics.json").read_text())
    assert (old / "model" / "model.safetensors").is_file()
    assert sorted(p.name for p in old.parent.iterdir()) == ["good"]


def test_a_killed_overwrite_leaves_the_old_run_and_its_lock_is_reported(train, tiny_bert, review_csv, tmp_path):
    old = fake_run(tmp_path / "runs" / "good")
    args = ["train", "--model", tiny_bert, "--data", review_csv, "--max-length", "32", "--epochs", "50",
            "--batch-size", "8", "--output", "runs", "--name", "good", "--overwrite", "--set", "training.save_every=1"]
    with (tmp_path / "train.log").open("w") as log:
        process = subprocess.Popen([TRANSFERLAB, *map(str, args)], cwd=tmp_path, stdout=log, stderr=log)
    pointer = tmp_path / "runs" / "good.staging" / "checkpoints" / "latest"
    deadline = time.monotonic() + 300
    while not pointer.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    process.kill()  # SIGKILL mid-training: no handler runs
    process.wait()
    assert pointer.exists(), (tmp_path / "train.log").read_text()
    assert json.loads((old / "metrics.json").read_text()) == {"marker": "the user's run"}
    assert_user_error(train("--name", "good", "--overwrite"), "stale lock", f"process {process.pid}")
    (tmp_path / "runs" / ".good.lock").unlink()  # the fix the message gives
    code, _, err = train("--name", "good", "--overwrite")
    assert code == 0, err
    assert "marker" not in json.loads((old / "metrics.json").read_text())
    assert sorted(p.name for p in old.parent.iterdir()) == ["good"]


def test_a_failed_cross_validation_overwrite_puts_the_old_results_back(train, tmp_path, monkeypatch):
    old = fake_run(tmp_path / "runs" / "cv")
    real = Trainer.train

    def fails(self, resume=False):
        raise OSError("device lost")

    monkeypatch.setattr(Trainer, "train", fails)
    with pytest.raises(OSError, match="device lost"):
        train("--name", "cv", "--folds", "2", "--overwrite")
    assert json.loads((old / "metrics.json").read_text()) == {"marker": "the user's run"}
    assert sorted(p.name for p in old.parent.iterdir()) == ["cv"]
    monkeypatch.setattr(Trainer, "train", real)
    code, _, err = train("--name", "cv", "--folds", "2", "--overwrite")
    assert code == 0, err
    assert not (old / "metrics.json").exists() and (old / "cv.json").is_file()
    assert sorted(p.name for p in old.parent.iterdir()) == ["cv"]


def test_without_overwrite_an_existing_run_is_kept(train, tmp_path):
    old = fake_run(tmp_path / "runs" / "good")
    assert_user_error(train("--name", "good"), "already holds a run", "--overwrite", "--resume")
    assert json.loads((old / "metrics.json").read_text()) == {"marker": "the user's run"}


def test_a_run_an_interrupted_swap_set_aside_is_reported(train, tmp_path):
    fake_run(tmp_path / "runs" / "good", "new")
    previous = fake_run(tmp_path / "runs" / "good.previous", "old")
    assert_user_error(train("--name", "good", "--overwrite"), "good.previous", "interrupted --overwrite",
                      "rename")
    assert json.loads((previous / "metrics.json").read_text()) == {"marker": "old"}


def test_demo_never_replaces_an_earlier_demo(cli, tmp_path, monkeypatch):
    earlier = fake_run(tmp_path / "runs" / "demo")
    chosen = []

    def record(cfg, resume, overwrite):
        chosen.append((cfg.name, overwrite))
        raise SystemExit(0)

    monkeypatch.setattr("transferlab.commands.run._train_and_show", record)
    code, out, _ = cli("demo")
    assert code == 0 and chosen == [("demo-2", False)]
    assert "runs/demo-2" in " ".join(out.split())
    cli("demo", "--overwrite")
    assert chosen[-1] == ("demo", True)
    assert json.loads((earlier / "metrics.json").read_text()) == {"marker": "the user's run"}


# --- --resume ----------------------------------------------------------------------------------------------

def test_resume_of_a_copied_run_writes_to_the_copy(train, cli, tmp_path):
    assert train("--name", "orig", "--set", "training.save_every=2")[0] == 0
    orig = tmp_path / "runs" / "orig"
    shutil.copytree(orig, tmp_path / "elsewhere" / "copy")
    before = {p: p.read_bytes() for p in orig.rglob("*") if p.is_file()}
    stale = {"pid": dead_pid(), "host": socket.gethostname(), "started": time.time() - 60, "command": "train"}
    (tmp_path / "elsewhere" / ".copy.lock").write_text(json.dumps(stale))  # the copied run had been killed
    code, _, err = cli("train", "--resume", "--name", "copy", "--output", "elsewhere")
    assert code == 0, err
    assert "taking over the lock" in err
    copy = tmp_path / "elsewhere" / "copy"
    assert "name: copy" in (copy / "config.yaml").read_text()
    assert "output_dir: elsewhere" in (copy / "config.yaml").read_text()
    assert {p: p.read_bytes() for p in orig.rglob("*") if p.is_file()} == before
    assert not (tmp_path / "elsewhere" / ".copy.lock").exists()


# --- the lock ----------------------------------------------------------------------------------------------

def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_a_second_run_into_a_locked_directory_names_the_holder(train, tmp_path):
    holder = subprocess.Popen(["sleep", "60"])
    try:
        lock = tmp_path / "runs" / ".busy.lock"
        lock.parent.mkdir()
        lock.write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(), "started": time.time(),
                                    "command": "transferlab train --name busy"}))
        assert_user_error(train("--name", "busy"), "'runs/busy' is in use", f"process {holder.pid}",
                          socket.gethostname(), "transferlab train --name busy", "another --name")
        assert not (tmp_path / "runs" / "busy").exists()
        assert lock.is_file()
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_is_reported_with_its_fix_and_kept(train, tmp_path):
    lock = tmp_path / "runs" / ".crashed.lock"
    lock.parent.mkdir()
    pid = dead_pid()
    lock.write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "started": time.time() - 5,
                                "command": "transferlab train"}))
    assert_user_error(train("--name", "crashed"), "stale lock", f"process {pid}", "no longer running",
                      "--resume", "delete runs/.crashed.lock")
    assert json.loads(lock.read_text())["pid"] == pid  # never silently broken


# --- disk space --------------------------------------------------------------------------------------------

Usage = namedtuple("Usage", "total used free")


def test_too_little_free_space_is_refused_before_training(train, tmp_path, monkeypatch):
    monkeypatch.setattr("transferlab.run_dir.shutil.disk_usage", lambda path: Usage(10**9, 10**9 - 2**20, 2**20))
    assert_user_error(train("--name", "big"), "Not enough disk space", "'runs/big'", "1.0 MB is free", "--output")
    assert not (tmp_path / "runs" / "big").exists()


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_mid_checkpoint_keeps_the_last_good_one(train, tmp_path, monkeypatch):
    import transferlab.training.checkpoint as checkpoint

    real, calls = checkpoint.save_model, []

    def fills_up(*args, **kwargs):
        calls.append(1)
        return enospc() if len(calls) == 2 else real(*args, **kwargs)

    monkeypatch.setattr(checkpoint, "save_model", fills_up)
    assert_user_error(train("--name", "full", "--set", "training.save_every=2"), "disk filled up",
                      "runs/full/checkpoints/step-00000002", "--resume --name full --output runs")
    ckpt = tmp_path / "runs" / "full" / "checkpoints"
    assert sorted(p.name for p in ckpt.iterdir()) == ["latest", "step-00000002"]  # no half-written one
    monkeypatch.setattr(checkpoint, "save_model", real)
    code, _, err = train("--resume", "--name", "full")
    assert code == 0, err
    assert (tmp_path / "runs" / "full" / "model" / "model.safetensors").is_file()


def test_disk_full_while_saving_the_model_leaves_no_half_model(train, tmp_path, monkeypatch):
    monkeypatch.setattr("transferlab.pipeline.save_model", enospc)
    assert_user_error(train("--name", "full"), "disk filled up", "checkpoints/step-", "--resume --name full")
    run = tmp_path / "runs" / "full"
    assert not (run / "model").exists() and not (run / ".model.tmp").exists()
    assert not (run / "metrics.json").exists()
    assert (run / "config.yaml").is_file()


def test_disk_full_during_an_overwrite_keeps_the_old_run(train, tmp_path, monkeypatch):
    old = fake_run(tmp_path / "runs" / "good")
    monkeypatch.setattr("transferlab.pipeline.save_model", enospc)
    assert_user_error(train("--name", "good", "--overwrite"), "disk filled up", "'runs/good'",
                      "untouched", "run the same command again")
    assert json.loads((old / "metrics.json").read_text()) == {"marker": "the user's run"}
