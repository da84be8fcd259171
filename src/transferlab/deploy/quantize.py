"""int8 quantization: ONNX Runtime (default) or PyTorch, with the accuracy re-measured on the eval set.

Dynamic quantization stores weights as int8 and quantizes activations on the fly, per batch, to uint8. It has no
int8 kernels for convolutions, so a graph with convolutions (an image CNN) is quantized statically instead: the
activations' ranges are measured once on calibration examples from the run's training data (QDQ format).
See docs/deploy.md ("int8 without the accuracy collapse", "Static int8 for convolutional models") for how the
recipes below were chosen by measurement.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pandas as pd

from transferlab.deploy.artifacts import backend_file, model_dir_of, run_config, run_dir_of
from transferlab.deploy.int8 import quantize_torch_model
from transferlab.errors import UserError
from transferlab.tasks.base import Task

BACKENDS = ("onnx", "torch")
CONVOLUTIONS = ("Conv", "ConvTranspose")
NOTE_METHOD, NOTE_EXAMPLES = "transferlab.int8.method", "transferlab.int8.calibration_examples"


@dataclass(frozen=True)
class OnnxRecipe:
    """How ONNX Runtime quantizes: which ops, weight granularity, and which nodes stay fp32."""

    per_channel: bool = True
    reduce_range: bool = True  # 7-bit weights: no int16 saturation on CPUs without VNNI (see README)
    quantize_embeddings: bool = True  # Gather of the embedding tables
    keep_fp32: tuple[str, ...] = ()  # regular expressions on node names that stay fp32


DEFAULT_RECIPE = OnnxRecipe()


def excluded_nodes(model: onnx.ModelProto, patterns: tuple[str, ...]) -> list[str]:
    """Names of nodes matching any of `patterns` (the exporter names nodes by module path)."""
    return [n.name for n in model.graph.node if any(re.search(p, n.name) for p in patterns)]


@dataclass(frozen=True)
class StaticRecipe:
    """How ONNX Runtime quantizes a graph with convolutions: int8 weights, uint8 activations whose ranges are
    calibrated on training examples, QDQ format."""

    calibration_examples: int = 256  # training examples whose activations set the ranges
    batch_size: int = 32
    per_channel: bool = True  # one scale per output channel: depthwise convolutions need it
    reduce_range: bool = True  # 7-bit weights: no int16 saturation on CPUs without VNNI, as for dynamic
    keep_fp32: tuple[str, ...] = ()  # regular expressions on node names that stay fp32


DEFAULT_STATIC = StaticRecipe()


def has_convolutions(model: onnx.ModelProto) -> bool:
    """Whether a graph has convolutions, which dynamic int8 leaves fp32 (it has no kernels for them)."""
    return any(node.op_type in CONVOLUTIONS for node in model.graph.node)


def int8_notes(path: Path) -> dict:
    """How an int8 ONNX file was made, from its metadata: `method` (static or dynamic) and, for static, the number
    of `calibration_examples`."""
    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    if props.get(NOTE_METHOD) != "static":
        return {"method": "dynamic"}
    return {"method": "static", "calibration_examples": int(props[NOTE_EXAMPLES])}


class _DropPreprocessAdvice(logging.Filter):
    """ORT logs a pre-processing suggestion on every call; the exported graphs quantize fine without it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing" not in record.getMessage()


@contextmanager
def _without_advice() -> Iterator[None]:
    advice = _DropPreprocessAdvice()
    logging.getLogger().addFilter(advice)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(advice)


def quantize_onnx_file(src: Path, dst: Path, recipe: OnnxRecipe = DEFAULT_RECIPE) -> Path:
    """Write the dynamically int8-quantized form of an ONNX model."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # the head's Gemm has no dynamic int8 kernel in ORT: it stays fp32 (and it is tiny)
    ops = ["MatMul"] + (["Gather"] if recipe.quantize_embeddings else [])
    exclude = excluded_nodes(onnx.load(str(src), load_external_data=False), recipe.keep_fp32)
    with _without_advice():
        quantize_dynamic(str(src), str(dst), op_types_to_quantize=ops, per_channel=recipe.per_channel,
                         reduce_range=recipe.reduce_range, weight_type=QuantType.QInt8, nodes_to_exclude=exclude,
                         extra_options={"MatMulConstBOnly": True})
    return dst


class CalibrationBatches:
    """A task's examples, encoded and collated batch by batch into the graph's input arrays: ONNX Runtime's
    CalibrationDataReader protocol (`get_next`), decoding one batch at a time."""

    def __init__(self, task: Task, frame: pd.DataFrame, batch_size: int):
        self.examples = len(frame)
        self._batches = self._arrays(task, frame, batch_size)

    @staticmethod
    def _arrays(task: Task, frame: pd.DataFrame, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        features = task.encode(frame)
        for start in range(0, len(features), batch_size):
            batch = task.collate(features[start:start + batch_size])
            # channels-last pixels: the graph takes the plain (contiguous NCHW) layout
            yield {name: np.ascontiguousarray(batch[name].numpy()) for name in task.processor.input_names}

    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next batch's inputs; None after the last."""
        return next(self._batches, None)


def calibration_frame(model_dir: Path, examples: int) -> pd.DataFrame:
    """A seeded random sample of the run's training examples: the inputs whose activation ranges int8 covers."""
    from transferlab.pipeline import load_run_data

    run_dir = run_dir_of(model_dir)
    if run_dir is None:
        raise UserError(f"'{model_dir}' has convolutions, so its int8 form is calibrated on the run's training "
                        "examples, but it is a model directory outside a run (no config.yaml beside it).",
                        "Quantize the run directory written by `transferlab train`.")
    cfg = run_config(run_dir)
    train = load_run_data(cfg).train
    return train.sample(n=min(examples, len(train)), random_state=cfg.seed).reset_index(drop=True)


def quantize_onnx_static(src: Path, dst: Path, calibration: CalibrationBatches,
                         recipe: StaticRecipe = DEFAULT_STATIC) -> Path:
    """Write the statically int8-quantized form (QDQ) of an ONNX model, its activation ranges the minimum and
    maximum seen on the calibration batches."""
    import tempfile

    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="transferlab-int8-") as tmp, _without_advice():
        # ORT's pre-processing (shape inference, constant folding): the exporter shares equal tensors through
        # Identity nodes, and a convolution whose bias comes from one is left unquantized
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(src), str(prepared))
        exclude = excluded_nodes(onnx.load(str(prepared)), recipe.keep_fp32)
        quantize_static(str(prepared), str(dst), calibration, quant_format=QuantFormat.QDQ,
                        per_channel=recipe.per_channel, reduce_range=recipe.reduce_range,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=exclude,
                        calibrate_method=CalibrationMethod.MinMax)
    model = onnx.load(str(dst))
    for key, value in ((NOTE_METHOD, "static"), (NOTE_EXAMPLES, str(calibration.examples))):
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(dst))
    return dst


def quantize(path: str | Path, backend: str = "onnx", recipe: OnnxRecipe = DEFAULT_RECIPE,
             static: StaticRecipe = DEFAULT_STATIC) -> Path:
    """Write the int8 model of a run/model directory for `backend` (ONNX exports fp32 first if needed; a graph
    with convolutions is quantized statically, calibrated on the run's training examples)."""
    from transferlab.deploy.export import export_model
    from transferlab.deploy.predictor import Predictor, load_saved_task

    if backend not in BACKENDS:
        raise UserError(f"Unknown quantization backend '{backend}'.", f"Choose one of: {', '.join(BACKENDS)}.")
    model_dir = model_dir_of(path)
    if backend == "onnx":
        src, dst = backend_file(model_dir, "onnx", False), backend_file(model_dir, "onnx", True)
        if not src.is_file():
            export_model(model_dir, "onnx")
        if not has_convolutions(onnx.load(str(src), load_external_data=False)):
            return quantize_onnx_file(src, dst, recipe)
        frame = calibration_frame(model_dir, static.calibration_examples)
        return quantize_onnx_static(src, dst, CalibrationBatches(load_saved_task(model_dir), frame,
                                                                 static.batch_size), static)
    reference = Predictor(model_dir, "torch")
    module = quantize_torch_model(reference.run.model, reference.task.backbone_prefix)
    return export_model(model_dir, "torchscript", module=module, int8=True).path
