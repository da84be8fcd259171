"""The image-classification task: image folders and tables of paths in, every strategy, predictions and evaluation
of a saved run, bad input as one clear error (tiny random ResNet on generated pictures); one end-to-end run with
the real EfficientNet-Lite0 weights on MNIST digits."""

from __future__ import annotations

import logging
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from transformers import ResNetConfig, ResNetForImageClassification

from transferlab.config import build_config
from transferlab.errors import UserError
from transferlab.pipeline import prepare_run, train_run
from transferlab.tasks.images import read_images

SIZE = 32
CLASSES = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (40, 40, 230)}


def picture(colour: tuple[int, int, int], seed: int, size: int = 20) -> Image.Image:
    """A noisy square of one colour (the classes differ by colour, which a tiny network learns at once)."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour) + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def image_tree(root: Path, per_class: int = 8) -> Path:
    for name, colour in CLASSES.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            seed = zlib.crc32(f"{name}/{i}".encode())  # not hash(): a str hash differs per process
            picture(colour, seed).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny random ResNet image classifier saved as a user's downloaded checkpoint would be."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "resnet"
    ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1],
                                              layer_type="basic", num_labels=3)).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return image_tree(tmp_path_factory.mktemp("images") / "colours")


def config(tmp_path: Path, model: Path, data: str, **sections) -> dict:
    base = {"name": "run", "output_dir": str(tmp_path), "seed": 3, "task": "image-classification",
            "model": {"name": str(model)}, "data": {"train": data, "eval_fraction": 0.25},
            "image": {"resolution": SIZE}, "strategy": {"name": "full", "lr": 3e-3, "head_lr": 3e-3},
            "training": {"epochs": 2, "batch_size": 6, "log_every": 1},
            "doctor": {"enabled": False}}
    return {**base, **sections}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_model, tree) -> Path:
    root = tmp_path_factory.mktemp("runs")
    # random features keep an image's colour: a head on them (cached: computed once) learns the classes at once
    cfg = build_config(config(root, tiny_model, str(tree), training={"epochs": 20, "batch_size": 6},
                              strategy={"name": "feature-extraction", "head_lr": 0.05}))
    train_run(cfg, show_progress=False)
    return cfg.run_dir


# ---- data --------------------------------------------------------------------------------------------------
def test_every_image_mode_and_size_is_read_and_other_files_are_skipped_and_counted(tmp_path, tiny_model, caplog):
    root = image_tree(tmp_path / "tree", per_class=2)
    odd = root / "red"
    picture((200, 0, 0), 1).convert("L").save(odd / "grey.png")
    picture((200, 0, 0), 2).convert("RGBA").save(odd / "alpha.png")
    picture((200, 0, 0), 3).convert("CMYK").save(odd / "cmyk.jpg")
    picture((200, 0, 0), 4).convert("P").save(odd / "palette.gif")
    Image.fromarray(np.full((20, 20), 40000, dtype=np.uint16)).save(odd / "sixteen-bit.png")
    Image.new("RGB", (1, 1), (255, 0, 0)).save(odd / "one-pixel.bmp")
    (odd / "notes.txt").write_text("not a picture")
    with caplog.at_level(logging.WARNING, logger="transferlab"):
        prep = prepare_run(build_config(config(tmp_path, tiny_model, str(root))))
    frame = pd.concat([prep.data.train, prep.data.eval])
    assert len(frame) == 12 and "red/notes.txt" not in set(frame["path"])
    assert "skipped 1 file(s) that are not images" in caplog.text and "notes.txt" in caplog.text
    batch = prep.task.collate(prep.task.encode(frame))
    assert batch["pixel_values"].shape == (12, 3, SIZE, SIZE) and torch.isfinite(batch["pixel_values"]).all()
    assert sorted(prep.data.labels) == sorted(CLASSES)


def test_a_table_of_paths_relative_to_the_table_reads_like_the_folder(tmp_path, tree):
    rows = [{"file": str(p.relative_to(tree)), "kind": p.parent.name} for p in sorted(tree.rglob("*.png"))]
    pd.DataFrame(rows).to_csv(tree / "index.csv", index=False)
    pd.DataFrame(rows).to_parquet(tree / "index.parquet")
    cfg = build_config({"task": "image-classification", "data": {"label_column": "kind"},
                        "image": {"path_column": "file"}})
    for table in ("index.csv", "index.parquet"):
        frame = read_images(str(tree / table), cfg)
        assert len(frame) == 24 and set(frame["label"]) == set(CLASSES)
        assert all(Path(p).is_file() for p in frame["image"])


def bomb(path: Path, side: int = 20_000) -> Path:
    """A 1-bit PNG of side x side pixels: tens of KB on disk, 400 million pixels once decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer = zlib.compressobj(9)
    row = b"\x00" * (1 + side // 8)
    body = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


def _no_class_folders(root: Path) -> tuple[Path, str]:
    root.mkdir()
    picture((1, 2, 3), 0).save(root / "a.png")
    return root, "no class sub-folders"


def _empty_class(root: Path) -> tuple[Path, str]:
    image_tree(root, per_class=2)
    (root / "purple").mkdir()
    (root / "purple" / "readme.md").write_text("todo")
    return root, "purple holds no images"


def _corrupt(root: Path) -> tuple[Path, str]:
    image_tree(root, per_class=2)
    (root / "red" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is no JPEG")
    return root, "broken.jpg is not a readable image"


def _truncated(root: Path) -> tuple[Path, str]:
    image_tree(root, per_class=2)
    data = (root / "green" / "0.png").read_bytes()
    (root / "green" / "0.png").write_bytes(data[: len(data) // 2])
    return root, "0.png is not a readable image"


def _decompression_bomb(root: Path) -> tuple[Path, str]:
    image_tree(root, per_class=2)
    bomb(root / "blue" / "huge.png")
    return root, "huge.png is too large to decode safely (20000 x 20000"


def _single_class(root: Path) -> tuple[Path, str]:
    (root / "only").mkdir(parents=True)
    for i in range(3):
        picture((5, 5, 5), i).save(root / "only" / f"{i}.png")
    return root, "a single class ('only')"


def _missing_path(root: Path) -> tuple[Path, str]:
    image_tree(root, per_class=2)
    table = root / "labels.csv"
    pd.DataFrame({"path": ["red/0.png", "red/nowhere.png"], "label": ["red", "blue"]}).to_csv(table, index=False)
    return table, "data row 2, column 'path': image 'red/nowhere.png' does not exist"


@pytest.mark.parametrize("case", [_no_class_folders, _empty_class, _corrupt, _truncated, _decompression_bomb,
                                  _single_class, _missing_path])
def test_bad_image_data_stops_with_exit_2_and_names_the_file(case, tmp_path, tiny_model, transferlab_cli, capsys):
    data, expected = case(tmp_path / "data")
    code = transferlab_cli("train", "--task", "image-classification", "--model", tiny_model, "--data", data,
                           "--output", tmp_path / "runs", "--set", f"image.resolution={SIZE}")
    err = capsys.readouterr().err
    assert code == 2, err
    assert expected in " ".join(err.split()), err
    assert "Traceback" not in err and not (tmp_path / "runs").exists()  # stopped before anything was written


def test_a_trusted_large_image_loads_when_the_limit_is_raised(tmp_path):
    path = tmp_path / "wide.png"
    Image.new("L", (3000, 40), 128).save(path)
    from transferlab.data.images import open_image

    with pytest.raises(UserError, match="raise the limit with --set image.max_pixels"):
        open_image(str(path), max_pixels=100_000)
    assert open_image(str(path), max_pixels=200_000).size == (3000, 40)


# ---- training: every strategy ----------------------------------------------------------------------------
@pytest.mark.parametrize("strategy, cached", [("feature-extraction", "pooled features"),
                                              ("freeze-bottom:2", "hidden states after stage.1"),
                                              ("progressive", "pooled features"), ("gradual", "pooled features"),
                                              ("llrd", None), ("full", None)])
def test_every_strategy_trains_the_image_task(strategy, cached, tmp_path, tiny_model, tree):
    cfg = build_config(config(tmp_path, tiny_model, str(tree), strategy={"name": strategy, "lr": 3e-3,
                                                                          "head_lr": 3e-3}))
    prep_groups = prepare_run(cfg).groups
    assert [g.name for g in prep_groups] == ["stem", "stage.0", "stage.1", "stage.2", "stage.3", "head"]
    doc = train_run(cfg, show_progress=False)
    assert doc["task"] == "image-classification" and doc["steps"] > 0
    assert 0 <= doc["eval"]["accuracy"] <= 1 and len(doc["eval"]["confusion_matrix"]) == 3
    cache_lines = [r["message"] for r in _history(cfg.run_dir) if r["kind"] == "cache"]
    if cached is None:
        assert not cache_lines
    else:
        assert cached in cache_lines[0]


def _history(run_dir: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]


def test_freeze_bottom_keeps_the_frozen_stages_and_their_batch_norm_statistics(tmp_path, tiny_model, tree):
    cfg = build_config(config(tmp_path, tiny_model, str(tree), strategy={"name": "freeze-bottom:2", "lr": 3e-3}))
    before = prepare_run(cfg).model.state_dict()
    train_run(cfg, show_progress=False)
    from transferlab.tasks.images import ImageClassificationTask

    after = ImageClassificationTask.load_model(None, cfg.run_dir / "model").state_dict()  # type: ignore[arg-type]
    frozen = [k for k in before if k.startswith(("backbone.embedder.", "backbone.encoder.stages.0.",
                                                 "backbone.encoder.stages.1."))]
    trained = [k for k in before if k.startswith("backbone.encoder.stages.3.") and k.endswith("weight")]
    assert any("running_mean" in k for k in frozen)
    assert all(torch.equal(before[k], after[k]) for k in frozen)
    assert any(not torch.equal(before[k], after[k]) for k in trained)



@pytest.mark.parametrize("examples", [0, 1024])
def test_batch_norm_statistics_of_learning_layers_are_re_estimated_before_each_evaluation(examples, tmp_path,
                                                                                          tiny_model, tree):
    """18 training images: with recalibration the running statistics are the average of one batch (all of them)
    under the final weights; without it, the running average of the 6 training steps."""
    cfg = build_config(config(tmp_path, tiny_model, str(tree), training={"epochs": 2, "batch_size": 6,
                                                                         "bn_recalibration": examples}))
    train_run(cfg, show_progress=False)
    from transferlab.tasks.images import ImageClassificationTask

    state = ImageClassificationTask.load_model(None, cfg.run_dir / "model").state_dict()  # type: ignore[arg-type]
    tracked = {int(v) for k, v in state.items() if k.endswith("num_batches_tracked")}
    assert tracked == ({1} if examples else {6})

# ---- a saved run ------------------------------------------------------------------------------------------
def test_predict_on_a_folder_writes_path_label_probability(trained_run, tree, tmp_path, transferlab_cli, capsys):
    out = tmp_path / "predictions.csv"
    assert transferlab_cli("predict", trained_run, tree / "red", tree / "blue" / "0.png", "--output", out) == 0
    table = pd.read_csv(out)
    assert list(table.columns[:3]) == ["path", "label", "score"] and len(table) == 9
    assert set(table.columns) >= {f"p({c})" for c in CLASSES}
    assert np.allclose(table[[f"p({c})" for c in CLASSES]].sum(axis=1), 1, atol=1e-4)
    assert (table["label"][:8] == "red").mean() >= 0.75  # a colour is easy: the tiny model has learnt it
    assert transferlab_cli("predict", trained_run, tree / "red" / "1.png") == 0  # one file: the same answer
    label, score, path = capsys.readouterr().out.strip().splitlines()[-1].split()
    row = table[table["path"].str.endswith("red/1.png")].iloc[0]
    assert path.endswith("red/1.png") and label == row["label"]
    assert float(score) == pytest.approx(row["score"], abs=1e-3)


def test_evaluate_on_a_labelled_folder_and_the_pipeline_agree(trained_run, tree, tmp_path, transferlab_cli):
    import json

    from transformers import pipeline

    from transferlab.deploy.predictor import Predictor

    out = tmp_path / "metrics.json"
    assert transferlab_cli("evaluate", trained_run, "--data", tree, "--output", out) == 0
    metrics = json.loads(out.read_text())
    assert metrics["accuracy"] >= 0.8 and np.array(metrics["confusion_matrix"]).sum() == 24
    ours = Predictor(trained_run).predict([{"image": str(tree / "blue" / "3.png")}])[0]
    theirs = pipeline("image-classification", model=str(trained_run / "model"))(str(tree / "blue" / "3.png"))
    assert theirs[0]["label"] == ours["label"] and abs(theirs[0]["score"] - ours["score"]) < 1e-4


# ---- the real thing ---------------------------------------------------------------------------------------
def test_real_efficientnet_lite0_learns_mnist_digits_from_200_images(tmp_path, monkeypatch):
    """ImageNet features transfer: a head on frozen Lite0 features of 200 digits classifies held-out digits, also
    in bf16, auto precision's choice on a CPU with native bf16 (depthwise convolutions stay fp32 there)."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    cfg = build_config({"name": "lite0", "output_dir": str(tmp_path), "task": "image-classification",
                        "model": {"name": "efficientnet-lite0"},
                        "data": {"train": "mnist-5k", "max_train_examples": 200, "max_eval_examples": 100},
                        "image": {"resolution": 64}, "strategy": {"name": "feature-extraction", "head_lr": 1e-2},
                        "training": {"epochs": 15, "batch_size": 16}, "doctor": {"train_eval_examples": 0}})
    doc = train_run(cfg, show_progress=False)
    assert doc["eval"]["accuracy"] >= 0.7, doc["eval"]["accuracy"]  # chance: 0.1
    assert doc["precision"] == "bfloat16"


# ---- the lab ------------------------------------------------------------------------------------------------
def test_compare_with_random_init_and_train_sizes_and_folds_run_the_image_task(tmp_path, tiny_model, tree,
                                                                                transferlab_cli, capsys):
    import json

    common = ["--model", tiny_model, "--data", tree, "--output", tmp_path, "--epochs", "1", "--batch-size", "6",
              "--set", "task=image-classification", "--set", f"image.resolution={SIZE}",
              "--set", "doctor.enabled=false"]
    assert transferlab_cli("compare", "--strategies", "feature-extraction", "--init", "pretrained,random",
                           "--train-sizes", "9,all", *common) == 0, capsys.readouterr().err
    rows = json.loads((tmp_path / "compare" / "compare.json").read_text())["rows"]
    assert {(r["init"], r["train_size"]) for r in rows} == {(i, n) for i in ("pretrained", "random")
                                                            for n in (9, 19)}  # all: 24 - 5 held out
    assert transferlab_cli("train", "--folds", "2", "--strategy", "feature-extraction", "--name", "cv", *common) == 0
    folds = json.loads((tmp_path / "cv" / "cv.json").read_text())
    assert len(folds["per_fold"]) == 2 and 0 <= folds["metrics"]["accuracy"]["mean"] <= 1


# ---- deploy -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_keeps_the_predictions_of_the_image_model(fmt, trained_run, tree):
    from transferlab.deploy.export import export_model
    from transferlab.deploy.predictor import Predictor

    result = export_model(trained_run, fmt)
    assert result.max_abs_diff <= 1e-4 and result.path.is_file()
    rows = [{"image": str(p)} for p in sorted(tree.rglob("*.png"))[:7]]
    ours = [p["label"] for p in Predictor(trained_run).predict(rows)]
    assert [p["label"] for p in Predictor(result.path).predict(rows)] == ours


def test_the_service_takes_base64_images_and_refuses_paths_and_broken_files(trained_run, tree, tmp_path):
    import base64
    import io
    import sys

    import httpx

    sys.path.insert(0, str(Path(__file__).parent))
    from serve_helpers import ServerThread

    from transferlab.deploy.served_model import ModelSpec, ServedModel
    from transferlab.deploy.service import Limits, create_app
    from transferlab.deploy.workers import InProcessRunner

    def encoded(image: Image.Image) -> str:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return base64.b64encode(buffer.getvalue()).decode()

    model = ServedModel(ModelSpec(str(trained_run)))
    assert model.info.inputs == ["image"]
    files = [tree / "red" / "2.png", tree / "blue" / "2.png"]
    expected = [p["label"] for p in model.predict([{"image": str(f)} for f in files])]
    with ServerThread(create_app(InProcessRunner(model), Limits(max_body_bytes=2_000_000))) as server, \
            httpx.Client(base_url=server.url, timeout=60) as client:
        body = {"image": [encoded(Image.open(f)) for f in files]}
        answer = client.post("/predict", json=body)
        assert answer.status_code == 200, answer.text
        assert [p["label"] for p in answer.json()["predictions"]] == expected
        for value, message in ((str(files[0]), "is not base64"),
                               (base64.b64encode(b"not an image at all").decode(), "is not a readable image"),
                               (base64.b64encode(bomb(tmp_path / "bomb.png").read_bytes()).decode(),
                                "too large to decode safely")):
            refused = client.post("/predict", json={"image": value})
            assert refused.status_code == 422 and message in refused.text, refused.text
