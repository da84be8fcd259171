"""Many fine-tuned variants in one process: one base model in memory, the kept adapters of several runs over it.

Each run trained with `--keep-adapters` left `adapter/` (its LoRA weights in peft's format, its head, a note of
the exact base model). `MultiAdapterPredictor(base, {"name": run_dir, ...})` loads the base backbone once, injects
every run's LoRA weights into it under the run's name (peft's multi-adapter layers) and gives each run a task model
that shares that backbone and carries the run's own head. `predict(rows, model=name)` switches the active adapter
for the batch; a lock keeps concurrent callers from switching under each other. An adapter whose note names
other base weights (checksum) is refused.
"""

from __future__ import annotations

import threading
import warnings
from pathlib import Path

import torch
from peft.functional import inject_adapter_in_model, set_adapter, set_peft_model_state_dict
from torch import nn

from transferlab.backbones import open_backbone
from transferlab.deploy.artifacts import model_config, model_dir_of
from transferlab.deploy.predictor import Predictor, load_saved_task
from transferlab.errors import UserError
from transferlab.models import modeling_transferlab
from transferlab.models.adapters import read_adapters, weights_checksum

BACKBONE = "backbone."


def adapter_dir_of(path: Path) -> Path:
    """A run directory's adapter/ (or an adapter directory itself)."""
    return path / "adapter" if (path / "adapter").is_dir() else path


def check_base(note: dict, base: dict, adapter_dir: Path) -> None:
    """Refuse adapters trained over other base weights than the ones loaded, naming both."""
    wanted = note["base_model"]
    if wanted["checksum"] != base["checksum"]:
        raise UserError(f"The adapters in '{adapter_dir}' were trained over base model '{wanted['name']}' "
                        f"({wanted['checksum'][:23]}...), but the base model given is '{base['name']}' "
                        f"({base['checksum'][:23]}...): other weights.",
                        f"Load them over '{wanted['name']}' (the exact weights they were trained on), or use the "
                        "run's merged model in model/ instead.")


class AdapterPredictor(Predictor):
    """The Predictor of one run's adapters over a shared base backbone (torch fp32): `run` activates them."""

    def __init__(self, name: str, run: Path, shared: nn.Module, base: dict, lock: threading.Lock,
                 batch_size: int = 32):
        adapter_dir = adapter_dir_of(run)
        note, state, lora = read_adapters(adapter_dir)
        check_base(note, base, adapter_dir)
        self.model_dir = model_dir_of(adapter_dir.parent)
        self.config = model_config(self.model_dir)
        self.task = load_saved_task(self.model_dir)
        self.backend, self.int8, self.bf16, self.batch_size, self.file = "torch", False, False, batch_size, None
        self.adapter, self.shared, self.lock = name, shared, lock
        self.active = [name] if lora is not None else []
        if lora is not None:
            lora_state = {k.removeprefix(BACKBONE): v for k, v in state.items() if "lora_" in k}
            with warnings.catch_warnings():  # several adapters in one model is the point here
                warnings.filterwarnings("ignore", message="Already found a `peft_config`")
                inject_adapter_in_model(lora, shared, adapter_name=name, state_dict=lora_state)
            set_peft_model_state_dict(shared, lora_state, adapter_name=name)
        self.model = self._task_model({k: v for k, v in state.items() if "lora_" not in k})

    def _task_model(self, own: dict[str, torch.Tensor]) -> nn.Module:
        """The run's task model class around the shared backbone, with the run's own head (and virtual tokens)."""
        architecture = (self.config.get("architectures") or ["?"])[0]
        model_class = getattr(modeling_transferlab, architecture, None)
        if model_class is None:
            raise UserError(f"'{self.model_dir}' holds a {architecture}, which adapters cannot be served over.",
                            "Serve the run's merged model (transferlab serve RUN).")
        config = model_class.config_class.from_pretrained(str(self.model_dir))
        with torch.device("meta"):  # no second backbone: the shared one replaces it
            model = model_class(config)
        model.backbone = self.shared
        model.load_state_dict(own, strict=False, assign=True)
        missing = [n for n, p in model.named_parameters() if p.is_meta]
        if missing:
            raise UserError(f"The adapters of '{self.model_dir.parent}' lack {', '.join(missing[:4])}.",
                            "Save them again with --keep-adapters.")
        return model.eval()

    @torch.inference_mode()
    def run(self, inputs: dict[str, torch.Tensor]):
        with self.lock:
            set_adapter(self.shared, self.active, inference_mode=True)
            return self.task.eval_forward(self.model, inputs)

    @property
    def name(self) -> str:
        return f"torch fp32, adapters '{self.adapter}'"


class MultiAdapterPredictor:
    """One base model and the adapters of several runs; `predict(rows, model=name)` runs the named one."""

    def __init__(self, base: str | Path, runs: dict[str, str | Path], batch_size: int = 32):
        if not runs:
            raise UserError("No adapters given.", "Name at least one run trained with --keep-adapters.")
        backbone = open_backbone(str(base))
        self.base = {"name": str(base), "checksum": weights_checksum(backbone.model_dir)}
        self.shared = backbone.load().eval()
        lock = threading.Lock()
        self.predictors = {name: AdapterPredictor(name, Path(run), self.shared, self.base, lock, batch_size)
                           for name, run in runs.items()}

    def __getitem__(self, name: str) -> AdapterPredictor:
        if name not in self.predictors:
            raise UserError(f"No model named '{name}' is loaded.", f"Choose one of: {', '.join(self.predictors)}.")
        return self.predictors[name]

    def predict(self, rows: list[dict | str], model: str) -> list[dict]:
        """The named run's predictions for rows of raw inputs (see Predictor.predict)."""
        return self[model].predict(rows)
