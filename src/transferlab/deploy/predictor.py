"""One Predictor over a saved model and any of its backends (torch, TorchScript, ONNX Runtime; fp32 or int8).

Texts are tokenized in length-sorted batches (little padding), run through the backend, and decoded by the
model's task. A backend only maps named input arrays to named output arrays, so a new task plugs in with a
`TaskIO` entry (its model class, output names and decode) and every backend, export and the service follow.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from transferlab.deploy.artifacts import (
    BACKENDS,
    backend_file,
    backend_of_file,
    model_config,
    model_dir_of,
    run_dir_of,
)
from transferlab.errors import UserError
from transferlab.models.backbone import load_tokenizer
from transferlab.models.modeling_transferlab import TransferlabForSequenceClassification
from transferlab.precision import PRECISIONS, autocast_dtype

DEFAULT_MAX_LENGTH = 256
# the order of the positional inputs of exported models (those the tokenizer produces)
INPUT_ORDER = ("input_ids", "attention_mask", "token_type_ids")

__all__ = ["Predictor", "TaskIO", "TASK_IO", "input_names", "model_dir_of"]


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def decode_classification(outputs: dict[str, np.ndarray], labels: list[str]) -> list[dict]:
    """Label, probability of that label, and every label's probability, for each row of logits."""
    probs = softmax(outputs["logits"].astype(np.float64))
    best = probs.argmax(axis=-1)
    return [{"label": labels[b], "score": float(row[b]), "probabilities": dict(zip(labels, map(float, row),
                                                                                  strict=True))}
            for b, row in zip(best, probs, strict=True)]


@dataclass(frozen=True)
class TaskIO:
    """What inference needs to know of a task: the model class, its output tensors, and how to decode them."""

    model_class: type
    outputs: tuple[str, ...]
    decode: Callable[[dict[str, np.ndarray], list[str]], list[dict]]


def decode_pairs(outputs: dict[str, np.ndarray], labels: list[str]) -> list[dict]:
    """Sentence pairs: a similarity score (a one-output regression head) or a label, as classification."""
    if outputs["logits"].shape[-1] == 1:
        return [{"score": float(score)} for score in outputs["logits"][:, 0]]
    return decode_classification(outputs, labels)


TASK_IO = {"classification": TaskIO(TransferlabForSequenceClassification, ("logits",), decode_classification),
           "pairs": TaskIO(TransferlabForSequenceClassification, ("logits",), decode_pairs)}


def task_io(task: str) -> TaskIO:
    if task not in TASK_IO:
        raise UserError(f"Deployment does not support task '{task}' yet.",
                        f"Supported tasks: {', '.join(TASK_IO)}.")
    return TASK_IO[task]


def input_names(tokenizer) -> list[str]:
    """The model inputs a tokenizer produces, in the order exported models take them."""
    return [name for name in INPUT_ORDER if name in tokenizer.model_input_names]


def load_torch_model(model_dir: Path, task: str) -> torch.nn.Module:
    """The saved task model in eval mode (safetensors weights)."""
    return task_io(task).model_class.from_pretrained(str(model_dir)).eval()


class TorchBackend:
    """Eager PyTorch; `int8` applies dynamic int8 quantization of the Linear layers at load time, `bf16` runs
    the forward pass under bf16 autocast (about 1.8x the fp32 throughput on a CPU with avx512_bf16)."""

    def __init__(self, model_dir: Path, task: str, int8: bool, bf16: bool = False):
        self.model = load_torch_model(model_dir, task)
        if int8:
            from transferlab.deploy.quantize import quantize_torch_model

            self.model = quantize_torch_model(self.model)
        self.outputs = task_io(task).outputs
        self.bf16 = bf16

    @torch.inference_mode()
    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            out = self.model(**{k: torch.from_numpy(v) for k, v in inputs.items()})
        return {name: getattr(out, name).float().numpy() for name in self.outputs}


class TorchScriptBackend:
    """A traced module (`transferlab export --format torchscript`) taking the inputs positionally."""

    def __init__(self, path: Path, task: str, names: list[str]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            self.module = torch.jit.load(str(path), map_location="cpu").eval()
        self.names = names
        self.outputs = task_io(task).outputs

    @torch.inference_mode()
    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = self.module(*(torch.from_numpy(inputs[n]) for n in self.names))
        return {name: t.float().numpy() for name, t in zip(self.outputs, out, strict=True)}


class OnnxBackend:
    """An ONNX Runtime CPU session over an exported (optionally int8) model."""

    def __init__(self, path: Path, threads: int | None, spin_wait: bool = True):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        if not spin_wait:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.names = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self.session.run(self.outputs, {n: inputs[n].astype(np.int64) for n in self.names})
        return dict(zip(self.outputs, values, strict=True))


def run_max_length(model_dir: Path) -> int:
    """The max_length the model was trained with (its run's config.yaml), else a default."""
    run_dir = run_dir_of(model_dir)
    if run_dir is not None:
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
        length = (cfg.get("model") or {}).get("max_length")
        if length:
            return int(length)
    return DEFAULT_MAX_LENGTH


class Predictor:
    """Batched inference over a run or model directory (or one of its model files) on a chosen backend.

    `backend`: torch | torchscript | onnx (default: the file's, or torch for a directory); `int8` picks the
    quantized form (ONNX/TorchScript: the file `transferlab quantize` wrote; torch: quantized at load).
    `precision` (torch fp32 only): fp32, bf16 (autocast), or auto = bf16 where the CPU runs it natively.
    `spin_wait=False` stops ONNX Runtime's threads busy-waiting between ops: slower alone, but a server's
    event loop gets the cycles (measured: 124 -> 156 requests/s for the int8 service on 2 cores).
    """

    def __init__(self, path: str | Path, backend: str | None = None, int8: bool = False, batch_size: int = 32,
                 max_length: int | None = None, threads: int | None = None, precision: str = "fp32",
                 spin_wait: bool = True):
        path = Path(path)
        if path.is_file():
            backend, int8 = backend_of_file(path)
        backend = backend or "torch"
        if backend not in BACKENDS:
            raise UserError(f"Unknown backend '{backend}'.", f"Choose one of: {', '.join(BACKENDS)}.")
        self.model_dir = model_dir_of(path)
        self.config = model_config(self.model_dir)
        self.task = self.config.get("task", "classification")
        self.io = task_io(self.task)
        self.labels = [self.config["id2label"][str(i)] for i in range(len(self.config["id2label"]))]
        self.tokenizer = load_tokenizer(self.model_dir)
        self.input_names = input_names(self.tokenizer)
        self.backend, self.int8 = backend, int8
        self.bf16 = self._bf16(precision)
        self.batch_size = batch_size
        self.max_length = max_length or run_max_length(self.model_dir)
        if threads and backend != "onnx":
            torch.set_num_threads(threads)
        self.file = backend_file(self.model_dir, backend, int8)
        if backend != "torch" and not self.file.is_file():
            command = "quantize" if int8 else "export"
            raise UserError(f"'{self.model_dir}' has no {backend} {'int8 ' if int8 else ''}model ({self.file.name}).",
                            f"Create it with `transferlab {command} {self.model_dir}"
                            f"{' --backend ' + backend if int8 else ' --format ' + backend}`.")
        self.run = self._load(threads, spin_wait)

    def _bf16(self, precision: str) -> bool:
        if precision not in PRECISIONS:
            raise UserError(f"Unknown precision '{precision}'.", f"Choose one of: {', '.join(PRECISIONS)}.")
        eager_fp32 = self.backend == "torch" and not self.int8
        if precision == "bf16" and not eager_fp32:
            raise UserError(f"Precision bf16 applies to the fp32 torch backend, not to {self.backend}"
                            f"{' int8' if self.int8 else ''}.", "Use --backend torch without --int8, or fp32.")
        return eager_fp32 and autocast_dtype(precision, torch.device("cpu")) is torch.bfloat16

    def _load(self, threads: int | None, spin_wait: bool):
        if self.backend == "onnx":
            return OnnxBackend(self.file, threads, spin_wait)
        if self.backend == "torchscript":
            return TorchScriptBackend(self.file, self.task, self.input_names)
        return TorchBackend(self.model_dir, self.task, self.int8, self.bf16)

    @property
    def name(self) -> str:
        return f"{self.backend} {'int8' if self.int8 else 'bf16' if self.bf16 else 'fp32'}"

    def encode(self, texts: list[str], text_pairs: list[str] | None = None) -> dict[str, np.ndarray]:
        """Token arrays of one batch, padded to its longest text, truncated to max_length."""
        enc = self.tokenizer(texts, text_pairs, truncation=True, max_length=self.max_length, padding=True,
                             return_tensors="np")
        return {n: enc[n] for n in self.input_names}

    def outputs(self, texts: list[str], text_pairs: list[str] | None = None) -> dict[str, np.ndarray]:
        """The model's raw outputs (e.g. logits) for every text, in input order."""
        if text_pairs is not None and len(text_pairs) != len(texts):
            raise UserError(f"{len(texts)} texts but {len(text_pairs)} text pairs.", "Pass one pair per text.")
        # similar lengths batched together: padding (wasted compute) stays small
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]) + len(text_pairs[i] if text_pairs else ""))
        chunks: list[dict[str, np.ndarray]] = []
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            pairs = [text_pairs[i] for i in idx] if text_pairs is not None else None
            chunks.append(self.run(self.encode([texts[i] for i in idx], pairs)))
        if not chunks:
            return {}
        inverse = np.argsort(np.array(order), kind="stable")
        return {name: np.concatenate([c[name] for c in chunks])[inverse] for name in chunks[0]}

    def predict(self, texts: list[str], text_pairs: list[str] | None = None) -> list[dict]:
        """Decoded predictions (classification: label, score, probabilities), one per text."""
        if not texts:
            return []
        return self.io.decode(self.outputs(texts, text_pairs), self.labels)

    def metadata(self) -> dict:
        """What a client needs to know of the model: task, labels, backbone, backend, limits."""
        backbone = self.config.get("backbone", {})
        return {"task": self.task, "labels": self.labels, "backbone": backbone.get("model_type"),
                "backbone_name": backbone.get("_name_or_path") or backbone.get("name_or_path"),
                "layers": backbone.get("num_hidden_layers"), "backend": self.name, "max_length": self.max_length,
                "model_dir": str(self.model_dir)}
