"""The HTTP service, started for real on a loopback port and called over HTTP: predictions, validation at the
edge, micro-batching, public metadata, graceful shutdown."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import typer
import yaml
from deploy_helpers import copy_run
from serve_helpers import JSON, ServerThread, json_body, post_concurrently

from transferlab.commands import deploy
from transferlab.deploy.served_model import ModelSpec, ServedModel
from transferlab.deploy.service import Limits, create_app
from transferlab.deploy.workers import InProcessRunner

LIMITS = Limits(max_items=8, max_chars=200, max_body_bytes=4_000, max_batch=32, max_wait_ms=20)


@pytest.fixture(scope="module")
def model(tiny_run) -> ServedModel:
    return ServedModel(ModelSpec(str(tiny_run)))


@pytest.fixture(scope="module")
def server(model):
    with ServerThread(create_app(InProcessRunner(model), LIMITS)) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as http:
        yield http


def labels_of(model: ServedModel, texts: list[str]) -> list[str]:
    return [p["label"] for p in model.predict([{"text": t} for t in texts])]


def test_health_and_metadata(client, model):
    assert client.get("/health").json()["status"] == "ok"
    meta = client.get("/metadata").json()
    assert meta["labels"] == model.predictor.labels and meta["task"] == "classification"
    assert meta["backbone"] == "bert" and meta["version"] and meta["limits"]["max_items"] == LIMITS.max_items
    assert meta["inputs"] == ["text"] and meta["workers"] == 0
    assert client.get("/openapi.json").json()["paths"].keys() >= {"/predict", "/health", "/metadata", "/metrics"}


def test_metadata_shows_no_filesystem_path(client, tiny_run):
    meta = client.get("/metadata").json()

    def strings(value) -> list[str]:
        if isinstance(value, dict):
            return [s for v in value.values() for s in strings(v)]
        if isinstance(value, list):
            return [s for v in value for s in strings(v)]
        return [value] if isinstance(value, str) else []

    assert not [s for s in strings(meta) if s.startswith("/") or "\\" in s]
    assert str(tiny_run.parent) not in json.dumps(meta)


def test_predict_one_text_and_a_list(client, model):
    texts = ["A triumph.", "Boring and far too long."]
    one = client.post("/predict", json={"text": texts[0]})
    assert one.status_code == 200
    assert [p["label"] for p in one.json()["predictions"]] == labels_of(model, texts[:1])
    many = client.post("/predict", json={"text": texts}).json()["predictions"]
    expected = model.predict([{"text": t} for t in texts])
    assert [p["label"] for p in many] == [p["label"] for p in expected]
    assert [p["score"] for p in many] == pytest.approx([p["score"] for p in expected], abs=1e-5)


@pytest.mark.parametrize(("body", "message"), [
    ({"text": "   "}, "text[0] is empty"),
    ({"text": ""}, "text[0] is empty"),
    ({"text": []}, "empty list"),
    ({"text": ["ok"] * 9}, "9 inputs in one request; the limit is 8"),
    ({"text": ["fine", "x" * 201]}, "text[1] has 201 characters"),
    ({"text": ["fine", "bad \ud800 half"]}, "text[1] is not valid Unicode (a lone surrogate at character 4)"),
])
def test_invalid_requests_get_422_with_a_message(client, body, message):
    response = client.post("/predict", content=json_body(body), headers=JSON)
    assert response.status_code == 422 and message in response.json()["detail"]


def test_malformed_requests_get_422_naming_the_field(client):
    for body, field in (({"text": 5}, "text"), ({"texts": ["typo in the field name"]}, "texts"),
                        ({"text": "A film.", "text_pair": "A second text, which this model does not read."},
                         "text_pair")):
        response = client.post("/predict", json=body)
        assert response.status_code == 422
        assert ["body", field] in [error["loc"][:2] for error in response.json()["detail"]]


def test_oversized_body_gets_413(client):
    big = {"text": ["y" * 150] * 40}
    assert client.post("/predict", json=big).status_code == 413

    def chunks():  # streamed without Content-Length: counted as it arrives
        yield b'{"text": ["'
        for _ in range(50):
            yield b"z" * 100
        yield b'"]}'

    response = client.post("/predict", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_concurrent_requests_are_micro_batched(server, client, model):
    before = client.get("/health").json()
    texts = [f"Review number {i}: {'great' if i % 2 else 'dreadful'} film." for i in range(16)]
    responses = post_concurrently(server.url, [{"text": t} for t in texts])
    assert all(r.status_code == 200 for r in responses)
    assert [r.json()["predictions"][0]["label"] for r in responses] == labels_of(model, texts)
    after = client.get("/health").json()
    assert after["inputs"] - before["inputs"] == 16
    assert after["batches"] - before["batches"] < 16  # several requests shared a forward pass


def test_a_surrogate_request_gets_422_and_its_batch_neighbours_200(server, model):
    texts = [f"Neighbour {i}: {'lovely' if i % 2 else 'awful'} acting." for i in range(6)]
    bodies = [{"text": t} for t in texts[:3]] + [{"text": "\ud800"}] + [{"text": t} for t in texts[3:]]
    responses = post_concurrently(server.url, bodies)
    assert [r.status_code for r in responses] == [200, 200, 200, 422, 200, 200, 200]
    valid = responses[:3] + responses[4:]
    assert [r.json()["predictions"][0]["label"] for r in valid] == labels_of(model, texts)


def test_a_pair_model_takes_text_pairs_and_requires_them(tmp_path, tiny_run):
    # a classification run trained with data.text_pair_column: its config.yaml says it reads pairs
    run = copy_run(tiny_run, tmp_path / "pair-run")
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["data"]["text_pair_column"] = "hypothesis"
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    pair_model = ServedModel(ModelSpec(str(run)))
    assert pair_model.info.inputs == ["text", "text_pair"]
    rows = [{"text": "A film.", "text_pair": "It moved me."}, {"text": "Dull.", "text_pair": "Yes."}]
    with ServerThread(create_app(InProcessRunner(pair_model), LIMITS)) as running:
        alone = httpx.post(f"{running.url}/predict", json={"text": "A film."}, timeout=60)
        uneven = httpx.post(f"{running.url}/predict", json={"text": ["a", "b"], "text_pair": ["c"]}, timeout=60)
        mixed = httpx.post(f"{running.url}/predict", json={"text": ["a"], "text_pair": "c"}, timeout=60)
        paired = httpx.post(f"{running.url}/predict", json={"text": [r["text"] for r in rows],
                                                             "text_pair": [r["text_pair"] for r in rows]}, timeout=60)
    assert alone.status_code == 422 and ["body", "text_pair"] in [e["loc"] for e in alone.json()["detail"]]
    assert uneven.status_code == 422 and "2 'text' values but 1 'text_pair' values" in uneven.json()["detail"]
    assert mixed.status_code == 422 and "as one value, or every field as a list" in mixed.json()["detail"]
    assert paired.status_code == 200
    expected = pair_model.predict(rows)
    assert [p["score"] for p in paired.json()["predictions"]] == pytest.approx([p["score"] for p in expected])


class NumpyScores:
    """The real model, with its scores as numpy scalars (as some task decoders leave them)."""

    def __init__(self, model: ServedModel):
        self.model, self.info = model, model.info

    def predict(self, rows: list[dict]) -> list[dict]:
        return [{**p, "score": np.float32(p["score"]), "rank": np.int64(1)} for p in self.model.predict(rows)]


def test_numpy_scalars_in_predictions_are_sent_as_numbers(model):
    with ServerThread(create_app(InProcessRunner(NumpyScores(model)), LIMITS)) as running:
        response = httpx.post(f"{running.url}/predict", json={"text": "A film."}, timeout=60)
    assert response.status_code == 200
    prediction = response.json()["predictions"][0]
    assert prediction["rank"] == 1 and prediction["score"] == pytest.approx(model.predict([{"text": "A film."}])[0]
                                                                            ["score"], abs=1e-6)


def test_shutdown_finishes_requests_in_flight(model):
    # a long batching window keeps the request queued while shutdown starts
    slow = Limits(max_wait_ms=1500)
    with ServerThread(create_app(InProcessRunner(model), slow)) as running:
        result: dict = {}

        def call() -> None:
            result["response"] = httpx.post(f"{running.url}/predict", json={"text": "Still answered."}, timeout=60)

        caller = threading.Thread(target=call)
        caller.start()
        time.sleep(0.5)
        running.server.should_exit = True
        caller.join(60)
    assert result["response"].status_code == 200
    assert result["response"].json()["predictions"][0]["label"] in model.predictor.labels
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{running.url}/health", timeout=5)


def test_every_serve_flag_is_documented():
    app = typer.Typer()
    deploy.register(app)
    serve = typer.main.get_command(app).commands["serve"]
    flags = {opt for param in serve.params for opt in param.opts if opt.startswith("--")}
    text = (Path(__file__).resolve().parents[1] / "docs" / "service.md").read_text(encoding="utf-8")
    assert len(flags) > 15
    assert not sorted(f for f in flags if not re.search(re.escape(f) + r"(?![\w-])", text))
