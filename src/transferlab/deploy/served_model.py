"""The model as the service sees it: how to load it (a picklable spec, so worker processes can load their own
copy), what clients may know of it, and the one adapter through which the service calls the Predictor.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from transferlab.deploy.artifacts import run_dir_of

# texts per forward pass inside a micro-batch (the Predictor groups them by length). Measured on the demo
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


@dataclass(frozen=True)
class ModelInfo:
    """What the HTTP side knows of the model without loading it: task, labels, inputs, public metadata."""

    task: str
    labels: list[str]
    text_pairs: bool  # True: every request must send text_pair; False: none may
    metadata: dict


def trained_on_pairs(model_dir: Path, task: str) -> bool:
    """Whether the model reads (text, text_pair): a pairs model, or a classification run trained with
    data.text_pair_column (its run's config.yaml says; a model directory outside a run reads one text)."""
    if task == "pairs":
        return True
    run_dir = run_dir_of(model_dir)
    if run_dir is None:
        return False
    config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    return bool((config.get("data") or {}).get("text_pair_column"))


def public_name(value: str | None) -> str | None:
    """A model name without the server's filesystem layout: the folder name of a local path."""
    if not value or not Path(value).is_absolute():
        return value
    path = Path(value)
    # saved and bundled models live in .../<name>/model: the informative part is <name>
    return path.parent.name if path.name == "model" else path.name


class ServedModel:
    """The one adapter between the service and the Predictor: rows in, one prediction dict per row out."""

    def __init__(self, spec: ModelSpec):
        # imported here so that a server whose inference runs in worker processes never loads torch itself
        from transferlab.deploy.predictor import Predictor

        forward_batch = spec.forward_batch or FORWARD_BATCH[spec.backend]
        self.predictor = Predictor(spec.path, spec.backend, spec.int8, batch_size=forward_batch,
                                   threads=spec.threads, precision=spec.precision, spin_wait=False)
        self.info = model_info(self.predictor.model_dir, self.predictor.metadata())

    def predict(self, rows: list[dict]) -> list[dict]:
        """Predictions for rows {"text": ...} or {"text": ..., "text_pair": ...}, in order."""
        texts = [row["text"] for row in rows]
        pairs = [row["text_pair"] for row in rows] if self.info.text_pairs else None
        return self.predictor.predict(texts, pairs)


def model_info(model_dir: Path, metadata: dict) -> ModelInfo:
    """The ModelInfo of a loaded model from its Predictor metadata, with no absolute path left in it."""
    run_dir = run_dir_of(model_dir)
    public = {**metadata, "backbone_name": public_name(metadata.get("backbone_name")),
              "model_dir": f"{run_dir.name}/{model_dir.name}" if run_dir else model_dir.name}
    pairs = trained_on_pairs(model_dir, metadata["task"])
    return ModelInfo(task=metadata["task"], labels=list(metadata["labels"]), text_pairs=pairs,
                     metadata={**public, "text_pair": pairs})

