"""An image run through the deploy chain: static int8 (calibrated on training images) with its accuracy delta
recorded, the torch int8 refusal, multipart uploads to the service (and each refusal, naming the item), and the
benchmark; a tiny random ResNet on generated pictures at 32 px (the classes differ by colour: its random features
separate them, so a prediction that int8 flips is a real error, not a coin toss near chance)."""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
import torch
from transformers import ResNetConfig, ResNetForImageClassification

from transferlab.config import build_config
from transferlab.deploy.evalset import load_eval_set, score
from transferlab.deploy.predictor import Predictor
from transferlab.deploy.served_model import ModelSpec, ServedModel
from transferlab.deploy.service import Limits, create_app
from transferlab.deploy.workers import InProcessRunner
from transferlab.errors import UserError
from transferlab.pipeline import train_run

sys.path.insert(0, str(Path(__file__).parent))
from deploy_helpers import run_cli  # noqa: E402
from serve_helpers import ServerThread  # noqa: E402
from test_vision_task import bomb, image_tree  # noqa: E402


@pytest.fixture(scope="module")
def image_run(tmp_path_factory) -> Path:
    """A head trained on the features of a tiny random ResNet: 36 pictures of 3 colours at 32 px, 9 held out."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("vision-deploy")
    backbone = root / "resnet"
    ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1],
                                              layer_type="basic", num_labels=3)).save_pretrained(backbone)
    cfg = build_config({"name": "colours", "output_dir": str(root), "seed": 3, "task": "image-classification",
                        "model": {"name": str(backbone)},
                        "data": {"train": str(image_tree(root / "pictures", per_class=12)), "eval_fraction": 0.25},
                        "image": {"resolution": 32}, "strategy": {"name": "feature-extraction", "head_lr": 0.05},
                        "training": {"epochs": 20, "batch_size": 6}, "doctor": {"enabled": False}})
    train_run(cfg, show_progress=False)
    return cfg.run_dir


# ---- int8 ---------------------------------------------------------------------------------------------------
def test_static_int8_is_calibrated_predicts_and_records_its_accuracy_delta(image_run, monkeypatch, capsys):
    from transferlab.deploy.quantize import int8_notes

    code, out, err = run_cli(monkeypatch, capsys, "quantize", str(image_run), "--calibration", "20", "--repeats", "2")
    assert code == 0, err
    assert "static int8, activation ranges calibrated on 20 training examples" in out
    fp32, int8 = image_run / "model" / "model.onnx", image_run / "model" / "model.int8.onnx"
    assert int8_notes(int8) == {"method": "static", "calibration_examples": 20}
    ops = {node.op_type for node in onnx.load(str(int8)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops  # the convolutions' inputs and weights are int8
    weights = [t for t in onnx.load(str(int8)).graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert sum(int(np.prod(t.dims)) for t in weights) > 10_000  # the conv weights themselves, not only the head
    assert int8.stat().st_size < 0.75 * fp32.stat().st_size

    evalset = load_eval_set(image_run)
    reference, quantized = Predictor(fp32), Predictor(int8)
    record = json.loads((image_run / "quantize.json").read_text())
    assert record["method"] == "static" and record["calibration_examples"] == 20
    assert [v["variant"] for v in record["variants"]] == ["onnx fp32", "onnx int8"]
    expected = 100 * (score(quantized, evalset) - score(reference, evalset))
    assert record["delta_points"] == pytest.approx(expected, abs=0.01)
    assert score(reference, evalset) == 1.0  # the colours are easy: int8 must keep every prediction
    assert record["delta_points"] == 0.0
    rows = [{"image": path} for path in evalset.frame["image"]]
    assert [p["label"] for p in quantized.predict(rows)] == evalset.frame["label"].tolist()
    logits = reference.outputs(evalset.frame)["logits"]
    error = np.abs(quantized.outputs(evalset.frame)["logits"] - logits)
    # int8 changed the numbers, a little: on average (the largest single error of a tiny random net depends on the CPU)
    assert 0 < error.mean() < 0.1 * np.abs(logits).mean()


def test_torch_int8_of_a_convolutional_model_points_to_the_onnx_int8_file(image_run, monkeypatch, capsys):
    with pytest.raises(UserError, match="model.int8.onnx"):
        Predictor(image_run, "torch", int8=True)
    code, _out, err = run_cli(monkeypatch, capsys, "quantize", str(image_run), "--backend", "torch")
    assert code == 2 and "convolutions would stay fp32" in err


# ---- benchmark ----------------------------------------------------------------------------------------------
def test_benchmark_measures_torch_onnx_and_int8_of_an_image_run(image_run, monkeypatch, capsys):
    from transferlab.deploy.quantize import quantize

    if not (image_run / "model" / "model.int8.onnx").is_file():  # run alone, without the int8 test
        quantize(image_run)
    code, out, err = run_cli(monkeypatch, capsys, "benchmark", str(image_run), "--repeats", "3", "--warmup", "1",
                             "--batches", "1", "--eval-limit", "6")
    assert code == 0, err
    doc = json.loads((image_run / "benchmark.json").read_text())
    names = [v["variant"] for v in doc["variants"]]
    assert {"torch fp32", "onnx fp32", "onnx int8"} <= set(names)
    for variant in doc["variants"]:
        assert variant["latency_p50_ms"] > 0 and variant["throughput_per_s"] > 0 and variant["metric"] == "accuracy"
        assert 0 <= variant["score"] <= 1
        assert variant["variant"] in out
    assert doc["eval_examples"] == 6 and (image_run / "plots" / "benchmark.png").is_file()


# ---- multipart uploads --------------------------------------------------------------------------------------
BOUNDARY = "transferlab-test-boundary"
LIMITS = Limits(max_items=3, max_body_bytes=200_000)


def multipart(*parts: tuple[str, str | None, str | None, bytes]) -> tuple[bytes, dict]:
    """A multipart/form-data body of (field, filename, content type, data) parts, written out by hand so a test
    can send what clients get wrong (a text field for a file, a part without a content type)."""
    body = b""
    for field, filename, media, data in parts:
        disposition = f'form-data; name="{field}"' + (f'; filename="{filename}"' if filename is not None else "")
        head = f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n"
        head += f"Content-Type: {media}\r\n" if media else ""
        body += head.encode() + b"\r\n" + data + b"\r\n"
    return body + f"--{BOUNDARY}--\r\n".encode(), {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}


@pytest.fixture(scope="module")
def service(image_run):
    """(client, served model, three picture files of the run) with the service running on a loopback port."""
    model = ServedModel(ModelSpec(str(image_run)))
    files = sorted((image_run.parent / "pictures").rglob("*.png"))[::12]  # one of each colour
    with ServerThread(create_app(InProcessRunner(model), LIMITS)) as server, \
            httpx.Client(base_url=server.url, timeout=60) as client:
        yield client, model, files


def test_multipart_takes_one_or_several_image_files_as_json_takes_base64(service):
    client, model, files = service
    expected = model.predict([{"image": str(f)} for f in files])
    one = client.post("/predict", files={"image": (files[0].name, files[0].read_bytes(), "image/png")})
    assert one.status_code == 200, one.text
    answer = one.json()["predictions"][0]
    assert answer["label"] == expected[0]["label"] and answer["score"] == pytest.approx(expected[0]["score"])
    # a part without a content type, and one sent as octet-stream, are files too
    body, headers = multipart(("image", files[0].name, "image/png", files[0].read_bytes()),
                              ("image", files[1].name, None, files[1].read_bytes()),
                              ("image", "photo", "application/octet-stream", files[2].read_bytes()))
    several = client.post("/predict", content=body, headers=headers)
    assert several.status_code == 200, several.text
    assert [p["label"] for p in several.json()["predictions"]] == [p["label"] for p in expected]
    assert len({p["label"] for p in expected}) == 3  # three colours, three labels: the order is checked
    as_json = client.post("/predict", json={"image": [base64.b64encode(f.read_bytes()).decode() for f in files]})
    assert as_json.json()["predictions"] == several.json()["predictions"]
    described = client.get("/openapi.json").json()["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert described.keys() == {"application/json", "multipart/form-data"}


def _parts(picture: bytes, tmp_path: Path) -> dict:
    return {
        "not an image": ([("image", "notes.png", "image/png", b"just some text")], 422,
                         "image[0] (notes.png) is not a readable image"),
        "too many pixels": ([("image", "bomb.png", "image/png", bomb(tmp_path / "bomb.png").read_bytes())], 422,
                            "image[0] (bomb.png) is too large to decode safely"),
        "too many files": ([("image", f"{i}.png", "image/png", picture) for i in range(4)], 422,
                           "4 inputs in one request; the limit is 3"),
        "empty part": ([("image", "a.png", "image/png", picture), ("image", "empty.png", "image/png", b"")], 422,
                       "image[1] (empty.png) is empty"),
        "wrong content type": ([("image", "a.txt", "text/plain", picture)], 415,
                               "image[0] (a.txt) is sent as text/plain"),
        "a path, not a file": ([("image", None, None, b"/etc/passwd")], 422,
                               "image[0] is a text field, not a file"),
        "unknown field": ([("images", "a.png", "image/png", picture)], 422, "'images' is not a field of this model"),
        "no image": ([], 422, "no 'image' part"),
    }


@pytest.mark.parametrize("case", ["not an image", "too many pixels", "too many files", "empty part",
                                  "wrong content type", "a path, not a file", "unknown field", "no image"])
def test_multipart_refusals_name_the_item(case, service, tmp_path):
    client, _model, files = service
    parts, status, message = _parts(files[0].read_bytes(), tmp_path)[case]
    body, headers = multipart(*parts)
    answer = client.post("/predict", content=body, headers=headers)
    assert answer.status_code == status and message in answer.json()["detail"], answer.text


def test_a_body_that_is_neither_json_nor_multipart_or_too_large_is_refused(service):
    client, _model, files = service
    plain = client.post("/predict", content=files[0].read_bytes(), headers={"content-type": "image/png"})
    assert plain.status_code == 415 and "multipart/form-data with one 'image' part per file" in plain.text
    body, headers = multipart(("image", "big.png", "image/png", files[0].read_bytes() + b"\0" * 250_000))
    assert client.post("/predict", content=body, headers=headers).status_code == 413
