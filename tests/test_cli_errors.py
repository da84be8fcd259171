"""Bad input through the real CLI entry point: exit code 2 and one paragraph naming the culprit and the fix."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from transferlab.cli import main
from transferlab.data.sources import load_labelled

TRANSFERLAB = Path(sys.executable).parent / "transferlab"


@pytest.fixture(scope="module")
def reviews(tmp_path_factory) -> Path:
    """40 bundled reviews as a user CSV with non-default column names."""
    frame = load_labelled("rotten-tomatoes").groupby("label").head(20)
    path = tmp_path_factory.mktemp("data") / "reviews.csv"
    frame.rename(columns={"text": "review", "label": "sentiment"}).to_csv(path, index=False)
    return path


@pytest.fixture
def cli(capsys, monkeypatch, tmp_path):
    """Run `transferlab ARGS` in-process through `transferlab.cli.main`; return (exit code, stdout, stderr)."""
    monkeypatch.chdir(tmp_path)
    # main() attaches a log handler to the current stderr; drop it with this test's captured stream
    monkeypatch.setattr(logging.getLogger("transferlab"), "handlers", [])

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["transferlab", *map(str, args)])
        try:
            main()
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 0 if exit_.code is None else 1
        out, err = capsys.readouterr()
        return code, out, err

    return run


def train_args(data: Path, *extra: str) -> list[str]:
    return ["train", "--data", data, "--text-column", "review", "--label-column", "sentiment",
            "--max-length", "32", "--epochs", "1", "--batch-size", "16", "--output", "runs", *extra]


def assert_user_error(result: tuple[int, str, str], *fragments: str) -> None:
    """Exit code 2; stderr ends with one paragraph (after any warnings), no traceback, naming every fragment."""
    code, out, err = result
    assert code == 2, (code, out, err)
    assert err.count("Error:") == 1, err
    message = err[err.index("Error:"):].strip()
    assert "Traceback" not in err + out
    assert len(message.splitlines()) == 1, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def write(path: Path, content: str | bytes) -> Path:
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


# --- data ----------------------------------------------------------------------------------------------

def test_missing_file(cli):
    assert_user_error(cli(*train_args(Path("nope.csv"))), "nope.csv", "neither a data file")


def test_square_brackets_in_a_message_are_shown_not_read_as_markup(cli):
    code, _, err = cli("train", "--strategy", "lora", "--set", "strategy.lora.target=[embeddings]")
    assert code == 2 and "(e.g. target: [attention, ffn])" in " ".join(err.split())


def test_missing_file_through_console_script(tmp_path):
    """The installed `transferlab` script itself: exit status 2, message on stderr, no traceback."""
    proc = subprocess.run([str(TRANSFERLAB), "train", "--data", "nope.csv"], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300)
    assert_user_error((proc.returncode, proc.stdout, proc.stderr), "nope.csv", "neither a data file")


def test_non_utf8_file(cli, tmp_path):
    path = write(tmp_path / "latin.csv", b"review,sentiment\ncaf\xe9 au lait,positive\nbad,negative\n")
    assert_user_error(cli(*train_args(path)), "latin.csv", "not UTF-8", "line 2", "iconv")


def test_unreadable_parquet(cli, tmp_path):
    path = write(tmp_path / "broken.parquet", b"this is not parquet at all")
    assert_user_error(cli(*train_args(path)), "broken.parquet", "Could not parse", "PARQUET")


def test_unknown_format(cli, tmp_path):
    path = write(tmp_path / "reviews.xlsx", b"PK\x03\x04")
    assert_user_error(cli(*train_args(path)), "reviews.xlsx", "'.xlsx'", ".csv", ".parquet")


@pytest.mark.parametrize(("option", "role"), [("--text-column", "text"), ("--label-column", "label")])
def test_missing_column_lists_columns(cli, reviews, option, role):
    args = train_args(reviews)
    args[args.index(option) + 1] = "body"
    assert_user_error(cli(*args), str(reviews), f"no {role} column 'body'", "review, sentiment", option)


def test_empty_dataset(cli, tmp_path):
    path = write(tmp_path / "empty.csv", "review,sentiment\n")
    assert_user_error(cli(*train_args(path)), "empty.csv", "has no rows")


def test_only_one_class(cli, reviews, tmp_path):
    frame = pd.read_csv(reviews)
    path = tmp_path / "one.csv"
    frame[frame["sentiment"] == "positive"].to_csv(path, index=False)
    assert_user_error(cli(*train_args(path)), "one.csv", "only one class", "'positive'", "--label-column")


def test_eval_label_never_seen_in_training(cli, reviews, tmp_path):
    path = tmp_path / "eval.csv"
    pd.DataFrame({"review": ["a plot summary", "great", "awful"],
                  "sentiment": ["plot", "positive", "negative"]}).to_csv(path, index=False)
    assert_user_error(cli(*train_args(reviews, "--eval-data", path)), "eval.csv", "never seen in training",
                      "'plot'", "'negative', 'positive'")


def test_rows_without_text_or_label_are_dropped_with_a_warning(reviews, tmp_path):
    """Through the console script: the warning reaches the user's terminal and training goes on."""
    frame = pd.read_csv(reviews)
    bad = pd.DataFrame({"review": ["", "   ", "a fine film"], "sentiment": ["positive", "negative", None]})
    path = tmp_path / "holes.csv"
    pd.concat([frame, bad]).to_csv(path, index=False)
    args = [str(a) for a in train_args(path, "--max-eval-examples", "8", "--set", "doctor.enabled=false")]
    proc = subprocess.run([str(TRANSFERLAB), *args], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "dropped 3 of 43 rows" in proc.stderr
    assert "41, 42, 43" in proc.stderr  # which rows
    metrics = json.loads((tmp_path / "runs" / "run" / "metrics.json").read_text())
    assert metrics["train_examples"] + metrics["eval_examples"] == 40


# --- model and strategy --------------------------------------------------------------------------------

def test_unknown_strategy(cli, reviews):
    assert_user_error(cli(*train_args(reviews, "--strategy", "bogus")), "Unknown strategy 'bogus'",
                      "freeze-attention")


def test_freeze_bottom_beyond_depth(cli, reviews):
    assert_user_error(cli(*train_args(reviews, "--strategy", "freeze-bottom:9")), "freeze-bottom:9",
                      "6 encoder layers", "0 <= N <= 6")


def test_unknown_model_name(cli, reviews):
    assert_user_error(cli(*train_args(reviews, "--model", "bert-base-uncased")), "'bert-base-uncased'",
                      "minilm", "never downloads")


def test_model_dir_without_config(cli, reviews, tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    write(model / "model.safetensors", b"")
    assert_user_error(cli(*train_args(reviews, "--model", model)), str(model), "no config.json",
                      "model.safetensors")


def test_model_dir_without_weights(cli, reviews, tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    write(model / "config.json", json.dumps({"model_type": "bert"}))
    assert_user_error(cli(*train_args(reviews, "--model", model)), str(model), "no weights", "config.json")


def test_model_path_is_a_file(cli, reviews, tmp_path):
    path = write(tmp_path / "model.safetensors", b"")
    assert_user_error(cli(*train_args(reviews, "--model", path)), str(path), "is a file, not a directory")


# --- run directory, resume and configuration -----------------------------------------------------------

def test_resume_without_any_run(cli):
    assert_user_error(cli("train", "--resume", "--name", "ghost", "--output", "runs"), "--resume",
                      "ghost", "--name")


def test_resume_without_checkpoint(cli, reviews, tmp_path):
    run_dir = tmp_path / "runs" / "fresh"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(f"name: fresh\noutput_dir: runs\ndata:\n  train: {reviews}\n"
                                         "  text_column: review\n  label_column: sentiment\n")
    assert_user_error(cli("train", "--resume", "--name", "fresh", "--output", "runs"), "--resume",
                      "no checkpoint", "checkpoints")


@pytest.mark.parametrize(("override", "fragments"), [
    ("training.epochs=-1", ("training.epochs", "greater than 0", "-1")),
    ("training.schedule=sideways", ("training.schedule", "'sideways'")),
    ("training.bogus=3", ("training.bogus", "Extra inputs")),
    ("epochs", ("'epochs'", "section.field=value")),
])
def test_bad_override(cli, reviews, override, fragments):
    assert_user_error(cli(*train_args(reviews, "--set", override)), *fragments)


def test_invalid_value_in_config_file(cli, tmp_path):
    config = write(tmp_path / "run.yaml", "training:\n  batch_size: zero\n")
    assert_user_error(cli("train", "--config", config), "run.yaml", "training.batch_size", "'zero'")


def test_existing_run_dir_needs_overwrite(cli, reviews, tmp_path):
    run_dir = tmp_path / "runs" / "run"
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.json").write_text("{}")
    assert_user_error(cli(*train_args(reviews)), "'runs/run'", "already holds a run", "--overwrite", "--resume")
    assert (run_dir / "metrics.json").read_text() == "{}"  # nothing lost
