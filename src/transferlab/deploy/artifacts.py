"""Where deployment artefacts live: exports beside the weights in a model directory, derived models in the run.

```
runs/<name>/model/            model.safetensors (torch fp32), model.onnx, model.int8.onnx,
                              model.torchscript.pt, model.int8.torchscript.pt
runs/<name>/pruned-magnitude/ runs/<name>/pruned-heads/ runs/<name>/distilled/   (HF model directories, same layout)
```
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from transferlab.config import RunConfig, build_config, load_yaml
from transferlab.errors import UserError
from transferlab.precision import native_bf16

WEIGHTS = "model.safetensors"
BACKENDS = ("torch", "torchscript", "onnx")
# (backend, int8) -> file name inside a model directory; torch fp32 is the HF weights themselves
FILES = {
    ("onnx", False): "model.onnx",
    ("onnx", True): "model.int8.onnx",
    ("torchscript", False): "model.torchscript.pt",
    ("torchscript", True): "model.int8.torchscript.pt",
}
DERIVED_DIRS = ("pruned-magnitude", "pruned-heads", "distilled")


def model_dir_of(path: str | Path) -> Path:
    """Accept a run directory (with model/), a model directory, or a model file inside one."""
    path = Path(path)
    if path.is_file():
        path = path.parent
    candidate = path / "model" if (path / "model" / "config.json").is_file() else path
    if not (candidate / "config.json").is_file():
        raise UserError(f"'{path}' is neither a run directory (with model/) nor a saved model directory.",
                        "Pass the directory printed at the end of `transferlab train` or `transferlab demo`.")
    return candidate


def run_dir_of(model_dir: Path) -> Path | None:
    """The run a model directory belongs to (its parent holds config.yaml), if any."""
    parent = model_dir.resolve().parent
    return parent if (parent / "config.yaml").is_file() else None


def run_config(run_dir: Path) -> RunConfig:
    """The validated config a run was trained with."""
    path = run_dir / "config.yaml"
    return build_config(load_yaml(path), str(path))


def saved_run_config(model_dir: Path) -> RunConfig:
    """The config of the run a saved model belongs to (its config.yaml), or the defaults for a bare model dir."""
    run_dir = run_dir_of(model_dir)
    return build_config({}) if run_dir is None else run_config(run_dir)


def require_run_dir(path: str | Path, command: str) -> Path:
    """The run directory of `path`; a UserError when it has none (the command needs the run's data)."""
    run_dir = run_dir_of(model_dir_of(path))
    if run_dir is None:
        raise UserError(f"{command}: '{path}' is a model directory outside a run (no config.yaml beside it), "
                        "so its training and evaluation data are unknown.",
                        "Pass the run directory written by `transferlab train` or `transferlab demo`.")
    return run_dir


def backend_file(model_dir: Path, backend: str, int8: bool) -> Path:
    """The file a backend loads from a model directory."""
    if backend == "torch":
        return model_dir / WEIGHTS
    return model_dir / FILES[(backend, int8)]


def backend_of_file(path: Path) -> tuple[str, bool]:
    """(backend, int8) of an exported file, from its name."""
    for key, name in FILES.items():
        if path.name == name:
            return key
    if path.name == WEIGHTS:
        return "torch", False
    raise UserError(f"'{path}' is not a model file transferlab knows ({', '.join([WEIGHTS, *FILES.values()])}).",
                    "Pass a run or model directory, or one of those files.")


def model_config(model_dir: Path) -> dict:
    """The saved config.json (labels, task, backbone) without loading any weights."""
    return json.loads((model_dir / "config.json").read_text())


def dir_size(model_dir: Path) -> int:
    """Bytes of the torch weights of a model directory."""
    return sum(p.stat().st_size for p in model_dir.glob("model*.safetensors"))


@dataclass(frozen=True)
class Variant:
    """One deployable form of a run's model: which directory, which backend, int8 or not."""

    model_dir: Path
    backend: str
    int8: bool = False
    bf16: bool = False  # torch only: fp32 weights run under bf16 autocast

    @property
    def name(self) -> str:
        base = "" if self.model_dir.name == "model" else f"{self.model_dir.name} "
        return f"{base}{self.backend} {'int8' if self.int8 else 'bf16' if self.bf16 else 'fp32'}"

    @property
    def file(self) -> Path:
        return backend_file(self.model_dir, self.backend, self.int8)

    @property
    def size_bytes(self) -> int:
        return dir_size(self.model_dir) if self.backend == "torch" else self.file.stat().st_size


def variants(run_dir: Path) -> list[Variant]:
    """Every variant that exists in a run: model/ and the derived models, each with its exported files."""
    found = []
    for model_dir in [run_dir / "model", *(run_dir / d for d in DERIVED_DIRS)]:
        if not (model_dir / "config.json").is_file():
            continue
        found.append(Variant(model_dir, "torch"))
        if model_dir.name == "model" and native_bf16(torch.device("cpu")):
            found.append(Variant(model_dir, "torch", bf16=True))
        found += [Variant(model_dir, backend, int8) for (backend, int8), name in FILES.items()
                  if (model_dir / name).is_file()]
    return found
