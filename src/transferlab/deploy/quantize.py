"""Dynamic int8 quantization: ONNX Runtime (default) or PyTorch, with the accuracy re-measured on the eval set.

Dynamic quantization stores weights as int8 and quantizes activations on the fly, per batch, to uint8.
See docs/deploy.md ("int8 without the accuracy collapse") for how the recipe below was chosen by measurement.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import onnx

from transferlab.deploy.artifacts import backend_file, model_dir_of
from transferlab.deploy.int8 import quantize_torch_model
from transferlab.errors import UserError

BACKENDS = ("onnx", "torch")


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


class _DropPreprocessAdvice(logging.Filter):
    """ORT logs a pre-processing suggestion on every call; the exported graphs quantize fine without it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing" not in record.getMessage()


def quantize_onnx_file(src: Path, dst: Path, recipe: OnnxRecipe = DEFAULT_RECIPE) -> Path:
    """Write the dynamically int8-quantized form of an ONNX model."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # the head's Gemm has no dynamic int8 kernel in ORT: it stays fp32 (and it is tiny)
    ops = ["MatMul"] + (["Gather"] if recipe.quantize_embeddings else [])
    exclude = excluded_nodes(onnx.load(str(src), load_external_data=False), recipe.keep_fp32)
    advice = _DropPreprocessAdvice()
    logging.getLogger().addFilter(advice)
    try:
        quantize_dynamic(str(src), str(dst), op_types_to_quantize=ops, per_channel=recipe.per_channel,
                         reduce_range=recipe.reduce_range, weight_type=QuantType.QInt8, nodes_to_exclude=exclude,
                         extra_options={"MatMulConstBOnly": True})
    finally:
        logging.getLogger().removeFilter(advice)
    return dst


def quantize(path: str | Path, backend: str = "onnx", recipe: OnnxRecipe = DEFAULT_RECIPE) -> Path:
    """Write the int8 model of a run/model directory for `backend` (ONNX exports fp32 first if needed)."""
    from transferlab.deploy.export import export_model

    if backend not in BACKENDS:
        raise UserError(f"Unknown quantization backend '{backend}'.", f"Choose one of: {', '.join(BACKENDS)}.")
    model_dir = model_dir_of(path)
    if backend == "onnx":
        src = backend_file(model_dir, "onnx", False)
        if not src.is_file():
            export_model(model_dir, "onnx")
        return quantize_onnx_file(src, backend_file(model_dir, "onnx", True), recipe)
    from transferlab.deploy.predictor import Predictor

    reference = Predictor(model_dir, "torch")
    module = quantize_torch_model(reference.run.model, reference.task.backbone_prefix)
    return export_model(model_dir, "torchscript", module=module, int8=True).path
