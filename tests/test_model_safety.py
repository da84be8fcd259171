"""Models that would give silently wrong results, or fail with a traceback, through the CLI as a user hits them:
a tokenizer that is missing or not the model's, --max-length beyond the position embeddings, a pickle with more
than tensors, a truncated safetensors file, and predict --output into a folder that does not exist."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import MINILM_TOKENIZER_FILES
from test_cli_errors import assert_user_error

from transferlab.config import build_config
from transferlab.deploy.predictor import Predictor
from transferlab.errors import UserError
from transferlab.pipeline import train_run


@pytest.fixture
def cli(cli_in_tmp):
    return cli_in_tmp


@pytest.fixture(scope="module")
def tiny_trained(tmp_path_factory, tiny_bert, review_csv) -> Path:
    """A finished run of the tiny backbone."""
    root = tmp_path_factory.mktemp("runs")
    cfg = build_config({"name": "tiny", "output_dir": str(root), "model": {"name": str(tiny_bert),
                        "max_length": 32}, "data": {"train": str(review_csv)}, "doctor": {"enabled": False},
                        "training": {"epochs": 1, "batch_size": 8}})
    train_run(cfg, show_progress=False)
    return cfg.run_dir


@pytest.fixture
def run_copy(tiny_trained, tmp_path) -> Path:
    """A copy of the finished run, to damage."""
    return Path(shutil.copytree(tiny_trained, tmp_path / "copy"))


def backbone_copy(tiny_bert: Path, where: Path, tokenizer: bool = True) -> Path:
    path = Path(shutil.copytree(tiny_bert, where, ignore=None if tokenizer else
                                shutil.ignore_patterns(*MINILM_TOKENIZER_FILES)))
    return path


def train_on(cli, model: Path | str, data: Path, *extra):
    return cli("train", "--model", model, "--data", data, "--max-length", "32", "--epochs", "1", "--batch-size", "8",
               "--output", "runs", *extra)


# --- tokenizers ---------------------------------------------------------------------------------------------

def test_a_backbone_without_tokenizer_files_is_refused(cli, tiny_bert, review_csv, tmp_path):
    model = backbone_copy(tiny_bert, tmp_path / "no-tokenizer", tokenizer=False)
    assert_user_error(train_on(cli, model, review_csv), str(model), "knows 5 tokens", "30522 rows",
                      "tokenizer files")
    assert not (tmp_path / "runs").exists()  # no run, and the lock is released with the folder made for it


def test_a_saved_run_without_tokenizer_json_is_refused(cli, run_copy):
    assert cli("predict", run_copy, "A fine film.")[0] == 0
    (run_copy / "model" / "tokenizer.json").unlink()
    assert_user_error(cli("predict", run_copy, "A fine film."), "knows 5 tokens", "30522 rows")


def edit_json(path: Path, change) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def swap_good_and_bad(tokenizer: dict) -> None:
    vocab = tokenizer["model"]["vocab"]
    vocab["good"], vocab["bad"] = vocab["bad"], vocab["good"]


@pytest.mark.parametrize(("file", "change"), [
    ("tokenizer.json", swap_good_and_bad),  # another tokenizer of the same size
    ("tokenizer_config.json", lambda config: config.update(do_lower_case=False)),  # "Great" is no longer "great"
])
def test_a_saved_run_whose_tokenizer_changed_is_refused(cli, run_copy, review_csv, file, change):
    edit_json(run_copy / "model" / file, change)
    for args in (("predict", run_copy, "A fine film."), ("evaluate", run_copy, "--data", review_csv)):
        assert_user_error(cli(*args), "not the one its model was trained with", "tokenizer.sha256",
                          "silently wrong")
    with pytest.raises(UserError, match="not the one its model was trained with"):
        Predictor(run_copy)  # what `serve`, `export` and `benchmark` load


def test_max_length_beyond_the_position_embeddings_is_refused_before_any_work(cli, review_csv, tmp_path):
    assert_user_error(cli("train", "--data", review_csv, "--max-length", "1024", "--output", "runs"),
                      "--max-length 1024", "position embeddings stop at 512 tokens", "--max-length 512 or less")
    assert not (tmp_path / "runs").exists()


# --- weight files -------------------------------------------------------------------------------------------

def test_a_pickle_with_more_than_tensors_is_refused(cli, tiny_bert, review_csv, tmp_path):
    model = backbone_copy(tiny_bert, tmp_path / "pickled")
    (model / "model.safetensors").unlink()
    torch.save({"embeddings.word_embeddings.weight": torch.zeros(2, 2), "extra": argparse.Namespace(x=1)},
               model / "pytorch_model.bin")
    code, out, err = train_on(cli, model, review_csv)
    assert_user_error((code, out, err), "pytorch_model.bin", "holds more than tensors", "never unpickles")
    assert "weights_only" not in err


@pytest.mark.parametrize("keep", [0.5, 0.99])
def test_a_truncated_safetensors_backbone_is_refused(cli, tiny_bert, review_csv, tmp_path, keep):
    model = backbone_copy(tiny_bert, tmp_path / "cut")
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:int(weights.stat().st_size * keep)])
    assert_user_error(train_on(cli, model, review_csv), str(weights), "is truncated", "Copy the model directory again")


def test_a_saved_run_with_a_truncated_model_is_refused(cli, run_copy):
    weights = run_copy / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5])
    assert_user_error(cli("predict", run_copy, "A fine film."), "model.safetensors", "not a readable safetensors")


# --- predict --output ---------------------------------------------------------------------------------------

def test_predict_output_into_a_new_folder_is_created(cli, tiny_trained, tmp_path):
    out = tmp_path / "new" / "deeper" / "predictions.csv"
    code, _, err = cli("predict", tiny_trained, "A fine film.", "A dull one.", "--output", out)
    assert code == 0, err
    assert len(pd.read_csv(out)) == 2


@pytest.mark.parametrize(("output", "fragment"), [("preds.txt", "unknown format '.txt'"),
                                                  ("a-file/preds.csv", "cannot create its folder"),
                                                  ("folder.csv", "is a directory")])
def test_a_bad_predict_output_is_refused_before_predicting(cli, tiny_trained, tmp_path, monkeypatch,
                                                           output, fragment):
    (tmp_path / "a-file").write_text("not a folder")
    (tmp_path / "folder.csv").mkdir()
    monkeypatch.setattr(Predictor, "__init__", lambda *a, **k: pytest.fail("predicted before checking --output"))
    assert_user_error(cli("predict", tiny_trained, "A fine film.", "--output", output), fragment)


def test_a_run_saved_under_an_old_style_name_still_predicts(cli, run_copy):
    config = run_copy / "config.yaml"
    config.write_text(config.read_text().replace("name: tiny", "name: my first run", 1))
    code, out, err = cli("predict", run_copy, "A fine film.")
    assert code == 0, err
    assert "A fine film." in out
