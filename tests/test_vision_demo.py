"""`transferlab demo --vision`, shrunk to a few dozen Fashion-MNIST images at 32 px: both runs saved, the side-by-side
table, the confusion matrix and the predictions printed, and an earlier demo kept."""

from __future__ import annotations

import json

import pytest
import yaml

from transferlab.commands import vision_demo
from transferlab.data.images import FASHION_MNIST_DIR

pytestmark = pytest.mark.skipif(not (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file(),
                                reason="Debian's dataset-fashion-mnist is not installed")


@pytest.fixture
def small_demo(monkeypatch):
    monkeypatch.setattr(vision_demo, "TRAIN_IMAGES", 64)
    monkeypatch.setattr(vision_demo, "HELD_OUT_IMAGES", 40)
    monkeypatch.setattr(vision_demo, "RESOLUTION", 32)


def test_the_vision_demo_trains_both_sides_and_prints_them_side_by_side(small_demo, tmp_path, transferlab_cli,
                                                                      capsys):
    assert transferlab_cli("demo", "--vision", "--output", tmp_path) == 0
    out = capsys.readouterr().out
    for shown in ("freeze bottom 5", "confusion matrix", "predictions on Fashion-MNIST test images",
                  "ImageNet weights, freeze-bottom:5", "random init, full, 0.25 epoch", "demo finished in"):
        assert shown in out, shown
    transfer, scratch = (json.loads((tmp_path / name / "metrics.json").read_text())
                         for name in ("demo-vision", "demo-vision-scratch"))
    assert transfer["train_examples"] == scratch["train_examples"] == 64
    assert transfer["eval_examples"] == scratch["eval_examples"] == 40
    assert transfer["strategy"] == "freeze-bottom:5" and scratch["strategy"] == "full"
    scratch_model = yaml.safe_load((tmp_path / "demo-vision-scratch" / "config.yaml").read_text())["model"]
    assert scratch_model["init"] == "random"
    # a second demo keeps the first
    assert transferlab_cli("demo", "--vision", "--output", tmp_path) == 0
    assert (tmp_path / "demo-vision-2" / "metrics.json").is_file()
    assert (tmp_path / "demo-vision" / "metrics.json").is_file()
