"""Export a saved model to ONNX or TorchScript (dynamic batch and sequence axes), checked against PyTorch.

ONNX goes through the TorchScript-based exporter (`dynamo=False`): with torch 2.13 the dynamo exporter needs
the extra `onnxscript` package, and the traced graph of a BERT-like encoder is exact (max |Δlogits| ~1e-7).
Transformers builds the attention mask with shape-dependent Python code; under tracing it keeps the general
path (it never skips the mask when tracing), and the parity check runs padded and unpadded batches to prove it.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from transferlab.deploy.artifacts import backend_file, model_dir_of, run_dir_of
from transferlab.deploy.predictor import Predictor
from transferlab.errors import UserError
from transferlab.tasks.base import Task

FORMATS = ("onnx", "torchscript")
PARITY_TOLERANCE = 1e-4
ONNX_OPSET = 17
PARITY_EXAMPLES = 32
# used when the model has no run (and so no eval set) beside it
SAMPLE_TEXTS = [
    "A gripping, beautifully acted film.",
    "Dull.",
    "The plot meanders for two hours and the ending makes no sense at all, which is a shame given the cast.",
    "I laughed, I cried, and I would watch it again tomorrow.",
    "Not good, not bad, just forgettable filler for a rainy afternoon.",
    "Worst script of the year.",
]
SAMPLE_QUESTIONS = {"question": ["What is the plot like?", "Who would watch it again?"], "context": SAMPLE_TEXTS[2]}


class ExportWrapper(nn.Module):
    """Positional input tensors in, the task's output tensors out: the signature exported graphs keep."""

    def __init__(self, model: nn.Module, task: Task, input_names: list[str]):
        super().__init__()
        self.model = model
        self.task = task
        self.input_names = input_names

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.task.graph_forward(self.model, dict(zip(self.input_names, tensors, strict=True)))
        return tuple(getattr(out, name) for name in self.task.output_names)


@dataclass
class ExportResult:
    path: Path
    format: str
    max_abs_diff: float
    seconds: float

    @property
    def size_mb(self) -> float:
        return self.path.stat().st_size / 2**20


def parity_inputs(predictor: Predictor) -> pd.DataFrame:
    """Real inputs for the parity check: the run's eval examples when the model belongs to a run."""
    run_dir = run_dir_of(predictor.model_dir)
    if run_dir is not None:
        from transferlab.deploy.evalset import load_eval_set

        try:
            return load_eval_set(run_dir, limit=PARITY_EXAMPLES).frame
        except UserError:
            pass  # the run's data moved: the samples still test real sentences
    return predictor.task.inputs_from_args(SAMPLE_TEXTS, SAMPLE_QUESTIONS)


def max_output_diff(reference: Predictor, candidate: Predictor, frame: pd.DataFrame) -> float:
    """Largest |difference| of any model output between two predictors, in padded batches and one at a time."""
    worst = 0.0
    for batch_size, subset in ((8, frame), (1, frame.iloc[:3])):
        reference.batch_size = candidate.batch_size = batch_size
        a, b = reference.raw_outputs(subset), candidate.raw_outputs(subset)
        worst = max(worst, *(float(np.abs(a[k] - b[k]).max()) for k in a))
    return worst


def _trace_inputs(predictor: Predictor, frame: pd.DataFrame) -> tuple[torch.Tensor, ...]:
    # the shortest and the longest example together: the traced example has padding
    features = predictor.task.encode(frame)
    by_length = sorted(features, key=predictor.task.length)
    batch = predictor.task.collate([by_length[0], by_length[-1]])
    return tuple(batch[n] for n in predictor.input_names)


def _export_onnx(wrapper: ExportWrapper, example: tuple[torch.Tensor, ...], path: Path) -> None:
    outputs = list(wrapper.task.output_names)
    # the processor's variable axes (images: batch, height, width); token inputs vary in batch and sequence
    variable = getattr(wrapper.task.processor, "input_axes", {0: "batch", 1: "sequence"})
    axes = {name: dict(variable) for name in wrapper.input_names}
    axes.update({name: {0: "batch"} | ({1: "sequence"} if wrapper.task.per_position else {}) for name in outputs})
    torch.onnx.export(wrapper, example, str(path), dynamo=False, opset_version=ONNX_OPSET,
                      input_names=wrapper.input_names, output_names=outputs, dynamic_axes=axes,
                      do_constant_folding=True)


def _export_torchscript(wrapper: ExportWrapper, example: tuple[torch.Tensor, ...], path: Path) -> None:
    traced = torch.jit.trace(wrapper, example, check_trace=False)
    torch.jit.save(traced, str(path))


def export_model(path: str | Path, fmt: str, module: nn.Module | None = None, int8: bool = False) -> ExportResult:
    """Write `fmt` next to the model's weights and check it against PyTorch (max |Δ| ≤ 1e-4).

    `module` replaces the saved model (e.g. a torch-quantized one; `int8` names its file), in which case the
    reference of the parity check is that module."""
    if fmt not in FORMATS:
        raise UserError(f"Unknown export format '{fmt}'.", f"Choose one of: {', '.join(FORMATS)}.")
    model_dir = model_dir_of(path)
    reference = Predictor(model_dir, "torch")
    if not reference.task.exportable:
        raise UserError(f"'{model_dir}' is a {reference.task.name} model: it generates text token by token, a loop "
                        f"that {fmt} cannot hold as one graph.",
                        "Serve and benchmark it on the torch backend; for int8 use the torch backend's dynamic "
                        "quantization (`transferlab quantize --backend torch`, or --int8 with --backend torch).")
    if module is not None:
        reference.run.model = module
    out = backend_file(model_dir, fmt, int8)
    frame = parity_inputs(reference)
    wrapper = ExportWrapper(reference.run.model, reference.task, reference.input_names).eval()
    start = time.perf_counter()
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporters' tracer and deprecation chatter, not actionable here
        (_export_onnx if fmt == "onnx" else _export_torchscript)(wrapper, _trace_inputs(reference, frame), out)
    seconds = time.perf_counter() - start
    diff = max_output_diff(reference, Predictor(out), frame)
    if diff > PARITY_TOLERANCE:
        out.unlink()
        raise UserError(f"The {fmt} export of '{model_dir}' differs from PyTorch by {diff:.2e} (limit "
                        f"{PARITY_TOLERANCE:g}) on real inputs; the file was not kept.",
                        "Try the other --format, and report the model's architecture.")
    return ExportResult(out, fmt, diff, seconds)
