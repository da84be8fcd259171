"""One Predictor over a saved model of any task and any of its backends (torch, TorchScript, ONNX Runtime;
fp32, bf16 or int8).

Inputs are encoded by the model's task, batched in length order (little padding), run through the backend, and
turned back into the task's outputs and per-row predictions. A backend only maps named input tensors to the
task's named outputs, so every task that is one forward pass works on every backend, and tasks that generate
(text-to-text) work on the torch backend.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import torch

from transferlab.backbones import open_saved
from transferlab.deploy.artifacts import (
    BACKENDS,
    backend_file,
    backend_of_file,
    model_config,
    model_dir_of,
    saved_run_config,
)
from transferlab.deploy.int8 import quantize_torch_model
from transferlab.errors import UserError
from transferlab.precision import PRECISIONS, autocast_dtype
from transferlab.tasks import task_class
from transferlab.tasks.base import Task, concat_outputs

__all__ = ["Predictor", "load_saved_task", "model_dir_of"]


def backbone_type(config: dict) -> str:
    """The backbone architecture of a saved model (a transferlab head model stores its backbone's config)."""
    return (config.get("backbone") or {}).get("model_type") or config.get("model_type", "unknown")


def load_saved_task(model_dir: Path, max_length: int | None = None) -> Task:
    """The task of a saved model, with its processor, from config.json and the run's config.yaml."""
    config = model_config(model_dir)
    run_cfg = saved_run_config(model_dir)
    backbone = open_saved(model_dir, backbone_type(config), max_length or run_cfg.model.max_length)
    return task_class(config.get("task", "classification")).for_saved(model_dir, config, run_cfg, backbone.processor)


class TorchBackend:
    """Eager PyTorch; `int8` applies dynamic int8 quantization of the Linear layers at load time, `bf16` runs
    the forward pass under bf16 autocast (about 1.8x the fp32 throughput on a CPU with avx512_bf16)."""

    def __init__(self, task: Task, model_dir: Path, int8: bool, bf16: bool = False):
        self.task = task
        self.model = task.load_model(model_dir)
        if int8:
            self.model = quantize_torch_model(self.model, task.backbone_prefix)
        self.bf16 = bf16

    @torch.inference_mode()
    def __call__(self, inputs: dict[str, torch.Tensor]):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            return self.task.eval_forward(self.model, inputs)


class TorchScriptBackend:
    """A traced module (`transferlab export --format torchscript`) taking the inputs positionally."""

    def __init__(self, path: Path, names: list[str], outputs: tuple[str, ...]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            self.module = torch.jit.load(str(path), map_location="cpu").eval()
        self.names = names
        self.outputs = outputs

    @torch.inference_mode()
    def __call__(self, inputs: dict[str, torch.Tensor]):
        out = self.module(*(inputs[n] for n in self.names))
        return SimpleNamespace(**{name: t.float() for name, t in zip(self.outputs, out, strict=True)})


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
        # token ids and masks are int64 in the graph, pixels float32
        self.dtypes = {i.name: np.float32 if i.type == "tensor(float)" else np.int64 for i in self.session.get_inputs()}
        self.outputs = [o.name for o in self.session.get_outputs()]

    def __call__(self, inputs: dict[str, torch.Tensor]):
        values = self.session.run(self.outputs, {n: np.ascontiguousarray(inputs[n].numpy(), self.dtypes[n])
                                                 for n in self.names})
        return SimpleNamespace(**{n: torch.from_numpy(v) for n, v in zip(self.outputs, values, strict=True)})


class Predictor:
    """Batched inference over a run or model directory (or one of its model files) on a chosen backend.

    `backend`: torch | torchscript | onnx (default: the file's, or torch for a directory); `int8` picks the
    quantized form (ONNX/TorchScript: the file `transferlab quantize` wrote; torch: its Linear layers quantized at
    load, refused for a model with convolutions).
    `precision` (torch fp32 only): fp32, bf16 (autocast), or auto = bf16 where the CPU runs it natively.
    `spin_wait=False` stops ONNX Runtime's threads busy-waiting between ops: slower alone, but a server's
    event loop gets the cycles (measured: 124 -> 156 requests/s for the int8 service on 2 cores).
    `tta`: a test-time augmentation of the task (`Task.tta_modes`, e.g. flip for images): every batch's outputs
    are averaged over the views it makes, on any backend.
    """

    tta: str | None = None

    def __init__(self, path: str | Path, backend: str | None = None, int8: bool = False, batch_size: int = 32,
                 max_length: int | None = None, threads: int | None = None, precision: str = "fp32",
                 spin_wait: bool = True, tta: str | None = None):
        path = Path(path)
        if path.is_file():
            backend, int8 = backend_of_file(path)
        backend = backend or "torch"
        if backend not in BACKENDS:
            raise UserError(f"Unknown backend '{backend}'.", f"Choose one of: {', '.join(BACKENDS)}.")
        self.model_dir = model_dir_of(path)
        self.config = model_config(self.model_dir)
        self.task = load_saved_task(self.model_dir, max_length)
        self.backend, self.int8 = backend, int8
        self.tta = self._tta(tta)
        self.bf16 = self._bf16(precision)
        self.batch_size = batch_size
        if threads and backend != "onnx":
            torch.set_num_threads(threads)
        self.file = backend_file(self.model_dir, backend, int8)
        if backend != "torch" and not self.task.exportable:
            raise UserError(f"'{self.model_dir}' is a {self.task.name} model, which runs on the torch backend only "
                            "(it generates token by token).", "Use --backend torch (with --int8 for int8).")
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

    def _tta(self, mode: str | None) -> str | None:
        modes = self.task.tta_modes
        if mode is None or mode in modes:
            return mode
        if not modes:
            raise UserError(f"--tta {mode}: {self.task.name} models ('{self.model_dir}' is one) have no test-time "
                            "augmentation.", "Drop --tta (it averages over flipped and cropped views of images).")
        raise UserError(f"--tta {mode!r} is no test-time augmentation of {self.task.name} models.",
                        "Choose one of: " + "; ".join(f"{name} ({what})" for name, what in modes.items()) + ".")

    def _load(self, threads: int | None, spin_wait: bool):
        if self.backend == "onnx":
            return OnnxBackend(self.file, threads, spin_wait)
        if self.backend == "torchscript":
            return TorchScriptBackend(self.file, self.input_names, self.task.output_names)
        return TorchBackend(self.task, self.model_dir, self.int8, self.bf16)

    @property
    def name(self) -> str:
        return f"{self.backend} {'int8' if self.int8 else 'bf16' if self.bf16 else 'fp32'}"

    @property
    def input_names(self) -> list[str]:
        """The tensors exported graphs take, in order (those the backbone's processor produces)."""
        return self.task.processor.input_names

    @property
    def labels(self) -> list[str] | None:
        return getattr(self.task, "label_names", None)

    def batches(self, frame: pd.DataFrame):
        """(feature positions, collated batch) in length order, so each batch has little padding."""
        features = self.task.encode(frame)
        order = sorted(range(len(features)), key=lambda i: self.task.length(features[i]))
        for start in range(0, len(order), self.batch_size):
            index = order[start:start + self.batch_size]
            yield index, self.task.collate([features[i] for i in index])

    def _run(self, frame: pd.DataFrame, keep) -> dict[str, np.ndarray]:
        """`keep(backend output, batch)` of every batch, joined and put back in feature order."""
        chunks, positions = [], []
        for index, batch in self.batches(frame):
            inputs = {k: v for k, v in batch.items() if not k.startswith("_")}
            out = self.run(inputs) if self.tta is None else self.task.tta_forward(self.run, inputs, self.tta)
            chunks.append(keep(out, batch))
            positions += index
        if not chunks:
            return {}
        inverse = np.argsort(np.array(positions), kind="stable")
        return {k: v[inverse] for k, v in concat_outputs(chunks).items()}

    def frame(self, rows: pd.DataFrame | list[dict | str]) -> pd.DataFrame:
        """Inputs as the task reads them: a frame as is, or rows of fields; a plain string stands for a row of the
        task's first input field (the text of a classifier)."""
        if isinstance(rows, pd.DataFrame):
            return rows
        field = self.task.input_fields[0]
        return pd.DataFrame([{field: r} if isinstance(r, str) else r for r in rows],
                            columns=None if rows else self.task.input_fields)

    def raw_outputs(self, rows: pd.DataFrame | list[dict | str]) -> dict[str, np.ndarray]:
        """The model's own output tensors (the task's `output_names`) per feature: what parity checks compare."""
        return self._run(self.frame(rows), lambda out, batch: {n: torch.as_tensor(getattr(out, n)).float().numpy()
                                                               for n in self.task.output_names})

    def outputs(self, rows: pd.DataFrame | list[dict | str]) -> dict[str, np.ndarray]:
        """The task's outputs (probabilities, tags, spans...) per feature."""
        return self._run(self.frame(rows), self.task.outputs)

    def predict_frame(self, frame: pd.DataFrame) -> list[dict]:
        """One prediction per row of `frame` (as the task reads it)."""
        return self.task.decode(self.outputs(frame), frame) if len(frame) else []

    def predict(self, rows: pd.DataFrame | list[dict | str]) -> list[dict]:
        """Predictions for rows of raw inputs, e.g. [{"text": ...}] or [{"text": ..., "text_pair": ...}] (see
        `frame`), one per row."""
        return self.predict_frame(self.frame(rows))

    def evaluate(self, frame: pd.DataFrame) -> dict:
        """The task's metrics on labelled examples (with the test-time augmentation used, if any, under `tta`)."""
        metrics = self.task.metrics(self.outputs(frame), frame)
        return metrics if self.tta is None else {**metrics, "tta": self.tta_note}

    @property
    def tta_note(self) -> dict | None:
        """The test-time augmentation and what it averages (what metrics and predictions record), or None."""
        return None if self.tta is None else {"mode": self.tta, "averages": self.task.tta_modes[self.tta]}

    def metadata(self) -> dict:
        """What a client needs to know of the model: task, labels, backbone, backend, limits."""
        backbone = self.config.get("backbone", {})
        return {"task": self.task.name, "labels": self.labels, "backbone": backbone_type(self.config),
                "backbone_name": Path(backbone.get("_name_or_path") or backbone.get("name_or_path") or "").name
                or None, "layers": backbone.get("num_hidden_layers"), "backend": self.name,
                "max_length": getattr(self.task.processor, "max_length", None),
                "inputs": self.task.input_fields, "model": self.model_dir.name}
