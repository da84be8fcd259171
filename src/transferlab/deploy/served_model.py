"""The model as the service sees it: how to load it (a picklable spec, so worker processes can load their own
copy), what the HTTP side knows of it, and the one adapter through which the service calls the Predictor.
"""

from __future__ import annotations

from dataclasses import dataclass

# examples per forward pass inside a micro-batch (the Predictor groups them by length). Measured on the demo
# model, 2 cores, CPU ms per text in calls of 64: ONNX int8 2.7 at 4-8 per pass vs 3.7 at 32 and 6.1 at 64
# (padding to the longest text costs more than the batching saves); torch bf16 3.5 at 32 vs 5.0 at 8.
FORWARD_BATCH = {"onnx": 8, "torchscript": 8, "torch": 32}


@dataclass(frozen=True)
class ModelSpec:
    """How to load the served model; picklable, so each worker process loads its own copy."""

    path: str
    backend: str = "torch"
    int8: bool = False
    threads: int | None = None
    precision: str = "auto"
    forward_batch: int | None = None  # None: FORWARD_BATCH of the backend
    adapters: tuple[tuple[str, str], ...] = ()  # (name, run) pairs: `path` is then their base model


@dataclass(frozen=True)
class ModelInfo:
    """What the HTTP side knows of the model without loading it: its task, the fields of one input row
    (["text"], ["text", "text_pair"], ["question", "context"]...) and the metadata clients may see."""

    task: str
    inputs: list[str]
    metadata: dict
    models: tuple[str, ...] = ()  # the adapters a request chooses from with its `model` field (none: one model)


class ServedModel:
    """The one adapter between the service and the Predictor: input rows in, one prediction dict per row out."""

    def __init__(self, spec: ModelSpec):
        # imported where a model is loaded: an HTTP process whose inference runs in workers needs neither
        # transformers nor ONNX Runtime
        from transferlab.deploy.predictor import Predictor

        forward_batch = spec.forward_batch or FORWARD_BATCH[spec.backend]
        if spec.adapters:
            from transferlab.deploy.adapters import MultiAdapterPredictor

            self.multi = MultiAdapterPredictor(spec.path, dict(spec.adapters), batch_size=forward_batch)
            names = tuple(name for name, _ in spec.adapters)
            first = self.multi[names[0]].metadata()
            metadata = {**first, "models": {name: self.multi[name].metadata() for name in names}}
            self.info = ModelInfo(first["task"], list(first["inputs"]), metadata, names)
            return
        self.multi = None
        self.predictor = Predictor(spec.path, spec.backend, spec.int8, batch_size=forward_batch,
                                   threads=spec.threads, precision=spec.precision, spin_wait=False)
        metadata = self.predictor.metadata()
        self.info = ModelInfo(task=metadata["task"], inputs=list(metadata["inputs"]), metadata=metadata)

    def predict(self, rows: list[dict]) -> list[dict]:
        """Predictions for rows such as {"text": ...} or {"text": ..., "text_pair": ...}, in order; over several
        adapters, each row's `model` field names the one that answers it."""
        if self.multi is None:
            return self.predictor.predict(rows)
        out: list[dict | None] = [None] * len(rows)
        for name in dict.fromkeys(row["model"] for row in rows):
            index = [i for i, row in enumerate(rows) if row["model"] == name]
            picked = [{k: v for k, v in rows[i].items() if k != "model"} for i in index]
            for i, prediction in zip(index, self.multi.predict(picked, model=name), strict=True):
                out[i] = prediction
        return out
