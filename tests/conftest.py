"""Shared fixtures: one tiny real training run on the bundled model and data, reused by many tests."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from transferlab.config import build_config
from transferlab.pipeline import train_run

# `make test` runs two pytest-xdist workers on a 2-core machine: one thread each, so they do not fight over cores
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)


_SESSION_DIRS: set[Path] = set()


def session_dir(tmp_path_factory, name: str) -> Path:
    """A temporary directory for a session-scoped fixture: the per-module clean-up below leaves it alone."""
    path = tmp_path_factory.mktemp(name)
    _SESSION_DIRS.add(path)
    return path


@pytest.fixture(scope="module", autouse=True)
def _module_dirs_go_at_module_end(tmp_path_factory, request):
    """Module fixtures' run directories (hundreds of MB each) go when their module has passed, not at the end of
    the session: a full run would otherwise hold ~15 GB at its peak (CI machines have had less free)."""
    base = tmp_path_factory.getbasetemp()
    before, failed = set(base.iterdir()), request.session.testsfailed
    yield
    if request.session.testsfailed == failed:
        for path in set(base.iterdir()) - before - _SESSION_DIRS:
            shutil.rmtree(path, ignore_errors=True)


def tiny_config(tmp_path, **overrides) -> dict:
    """A config dict for a seconds-long run on a stratified subset of the bundled reviews."""
    data = {
        "name": "tiny", "output_dir": str(tmp_path), "seed": 7,
        "data": {"max_train_examples": 200, "max_eval_examples": 100},
        "model": {"max_length": 64},
        "strategy": {"name": "freeze-attention", "lr": 3e-4},
        "training": {"epochs": 1, "batch_size": 16, "log_every": 2},
    }
    for key, value in overrides.items():
        section, _, field = key.partition("__")
        if field:
            data.setdefault(section, {})[field] = value
        else:
            data[section] = value
    return data


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A trained run directory (model/, metrics.json, history.jsonl, plots/, report.html)."""
    root = session_dir(tmp_path_factory, "runs")
    cfg = build_config(tiny_config(root))
    train_run(cfg, show_progress=False)
    return cfg.run_dir


@pytest.fixture(scope="session")
def transferlab_cli():
    """`run(*args)` runs `transferlab ARGS` in-process through the console entry point and returns its exit
    code (2 for a user error); read what it printed with capsys."""
    import sys

    from transferlab.cli import main

    def run(*args) -> int:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(sys, "argv", ["transferlab", *map(str, args)])
            try:
                main()
            except SystemExit as exit_:
                return exit_.code if isinstance(exit_.code, int) else 0 if exit_.code is None else 1
        return 0

    return run


MINILM_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide BERT (128 positions) with MiniLM's tokenizer: trains in seconds."""
    from transformers import BertConfig, BertModel

    from transferlab.backbones import resolve_model_dir

    path = session_dir(tmp_path_factory, "tiny-bert")
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=128)
    BertModel(config).save_pretrained(path)
    for name in MINILM_TOKENIZER_FILES:
        shutil.copy(resolve_model_dir("minilm") / name, path / name)
    return path


@pytest.fixture(scope="session")
def review_csv(tmp_path_factory) -> Path:
    """48 bundled reviews (24 per class) as a CSV with the default text and label columns."""
    from transferlab.data.sources import load_labelled

    path = session_dir(tmp_path_factory, "reviews") / "reviews.csv"
    load_labelled("rotten-tomatoes").groupby("label").head(24).to_csv(path, index=False)
    return path


@pytest.fixture
def cli_in_tmp(transferlab_cli, capsys, monkeypatch, tmp_path):
    """`cli_in_tmp(*args)` -> (exit code, stdout, stderr) of `transferlab ARGS`, run in tmp_path."""
    import logging

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(logging.getLogger("transferlab"), "handlers", [])  # main() adds one per call

    def run(*args):
        code = transferlab_cli(*args)
        out, err = capsys.readouterr()
        return code, out, err

    return run
