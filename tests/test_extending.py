"""The core extends without editing src/: a toy backbone family and a toy task defined here train with every
kind of strategy and print their plan; a callback defined here sees every trainer event; trackers write files
their own readers read back."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_model, save_model
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from transferlab.backbones import register_family
from transferlab.backbones.base import Backbone, BackboneFamily
from transferlab.backbones.groups import GroupRule
from transferlab.config import build_config
from transferlab.evaluation.metrics import softmax
from transferlab.pipeline import train_run
from transferlab.tasks import register_task
from transferlab.tasks.base import RunData, Task
from transferlab.training.events import EVENTS, Callback, Callbacks


class ToyStack(nn.Module):
    """An input projection and a stack of blocks: no Hugging Face config anywhere."""

    def __init__(self, width: int = 8, depth: int = 3):
        super().__init__()
        self.embed = nn.Linear(4, width)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(width, width), nn.Tanh()) for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        for block in self.blocks:
            h = block(h)
        return h


class ToyProcessor:
    modality = "vectors"

    def length(self, feature: dict) -> int:
        return 1

    def pad(self, features: list[dict]) -> dict[str, torch.Tensor]:
        batch = {"x": torch.tensor([f["x"] for f in features], dtype=torch.float32)}
        if "labels" in features[0]:
            batch["labels"] = torch.tensor([f["labels"] for f in features])
        return batch

    def save(self, model_dir: Path) -> None:
        (model_dir / "processor.txt").write_text("toy vectors of 4 numbers\n")


class ToyFamily(BackboneFamily):
    name = "toy"
    modality = "vectors"

    def model_types(self) -> list[str]:
        return ["toy-stack"]

    def owns(self, module: nn.Module) -> bool:
        return isinstance(module, ToyStack)

    def find(self, name: str, max_length: int | None) -> Backbone | None:
        return Backbone(name, self, Path(name), ToyProcessor()) if name == "toy-stack" else None

    def rules(self, module: nn.Module) -> list[GroupRule]:
        return [GroupRule(r"^embed\.", "embed", "embeddings", level="input"),
                GroupRule(r"^blocks\.(\d+)\.", "block.{0}", "block", unit="block.{0}")]

    def load(self, model_dir: Path) -> nn.Module:
        torch.manual_seed(0)
        return ToyStack()

    def processor(self, model_dir: Path, max_length: int | None) -> ToyProcessor:
        return ToyProcessor()


class ToyModel(nn.Module):
    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> SequenceClassifierOutput:
        logits = self.head(self.backbone(x))
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


class ToyTask(Task):
    """Which side of a hyperplane a 4-vector lies on."""

    name = "toy"
    metric = "accuracy"
    modality = "vectors"

    @classmethod
    def load_data(cls, cfg) -> RunData:
        rng = np.random.default_rng(cfg.seed)
        x = rng.normal(size=(96, 4))
        frame = pd.DataFrame({"x": list(x), "label": (x @ [1.0, -2.0, 0.5, 1.0] > 0).astype(int)})
        return RunData(frame.iloc[:64].reset_index(drop=True), frame.iloc[64:].reset_index(drop=True), ["0", "1"])

    @classmethod
    def for_data(cls, cfg, data, processor):
        return cls(processor)

    @classmethod
    def for_saved(cls, model_dir, config, run_cfg, processor):
        return cls(processor)

    def build_model(self, backbone: Backbone, model_cfg) -> nn.Module:
        return ToyModel(backbone.load())

    def load_model(self, model_dir: Path) -> nn.Module:
        model = ToyModel(ToyStack())
        load_model(model, str(model_dir / "model.safetensors"))
        return model.eval()

    def save_model(self, model: nn.Module, model_dir: Path) -> None:
        model_dir.mkdir(parents=True, exist_ok=True)
        save_model(model, str(model_dir / "model.safetensors"))
        self.processor.save(model_dir)

    def encode(self, frame: pd.DataFrame) -> list[dict]:
        labels = frame["label"].tolist() if "label" in frame else None
        return [{"x": list(x), **({"labels": int(labels[i])} if labels else {})} for i, x in enumerate(frame["x"])]

    def outputs(self, model_output, batch) -> dict[str, np.ndarray]:
        return {"logits": model_output.logits.detach().float().numpy(), "labels": batch["labels"].numpy()}

    def metrics(self, outputs, frame) -> dict:
        return {"accuracy": float((outputs["logits"].argmax(-1) == outputs["labels"]).mean())}

    def decode(self, outputs, frame) -> list[dict]:
        return [{"label": str(int(p.argmax())), "score": float(p.max())} for p in softmax(outputs["logits"])]

    @property
    def input_fields(self) -> list[str]:
        return ["x"]

    def read_labelled(self, source, run_cfg) -> pd.DataFrame:
        return self.load_data(run_cfg).eval

    def read_inputs(self, source, run_cfg) -> pd.DataFrame:
        return self.load_data(run_cfg).eval.drop(columns="label")

    def inputs_from_args(self, values, options) -> pd.DataFrame:
        return pd.DataFrame({"x": [[float(v) for v in value.split(",")] for value in values]})


register_family(ToyFamily())
register_task("toy", ToyTask)


def toy_config(tmp_path, strategy: str, **training) -> dict:
    return {"name": strategy.replace(":", "-"), "output_dir": str(tmp_path), "task": "toy",
            "model": {"name": "toy-stack"}, "strategy": {"name": strategy, "lr": 3e-2, "head_lr": 3e-2},
            "doctor": {"enabled": False},
            "training": {"epochs": 8, "batch_size": 16, "log_every": 1, "precision": "fp32", **training}}


@pytest.mark.parametrize("strategy, learns", [
    ("full", [{"embed", "block.0", "block.1", "block.2", "head"}]),
    ("freeze-bottom:1", [{"block.1", "block.2", "head"}]),
    ("progressive", [{"head"}, {"block.2", "head"}, {"block.1", "block.2", "head"},
                     {"block.0", "block.1", "block.2", "head"}]),
    ("llrd", [{"embed", "block.0", "block.1", "block.2", "head"}]),
])
def test_a_toy_backbone_and_task_train_with_every_kind_of_strategy(tmp_path, strategy, learns):
    doc = train_run(build_config(toy_config(tmp_path, strategy)), show_progress=False)
    assert [set(phase["groups"]) for phase in doc["plan"]] == learns
    assert doc["task"] == "toy" and doc["eval"]["accuracy"] >= 0.6  # a linear rule: the toy learns it
    history = [r for r in doc_history(tmp_path / strategy.replace(":", "-")) if r["kind"] == "monitor"]
    frozen = {"embed", "block.0", "block.1", "block.2", "head"} - set().union(*learns)
    assert all(history[-1]["weight_change"][g] == 0 for g in frozen)  # frozen means frozen
    if strategy == "llrd":
        lrs = doc["plan"][0]["groups"]
        assert lrs["embed"] < lrs["block.0"] < lrs["block.1"] < lrs["block.2"]


def doc_history(run_dir: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]


def test_plan_prints_the_toy_groups(transferlab_cli, capsys):
    assert transferlab_cli("plan", "--model", "toy-stack", "--strategy", "progressive:2", "--set", "task=toy") == 0
    out = capsys.readouterr().out
    assert "+ block.2" in out and "+ block.1" in out and "block.1-2" in out or "block.2" in out


def test_a_strategy_needing_a_kind_the_model_lacks_names_the_kinds_it_has(tmp_path, transferlab_cli, capsys):
    assert transferlab_cli("train", "--model", "toy-stack", "--set", "task=toy", "--strategy", "freeze-attention",
                           "--output", tmp_path) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "kind 'attention'" in err and "embeddings, block, head" in err


class Recorder(Callback):
    """Counts every event it is given."""

    main_process_only = True

    def __init__(self):
        self.seen: Counter = Counter()

    def __getattribute__(self, name: str):
        if name in EVENTS:
            return lambda trainer, *payload: object.__getattribute__(self, "seen").update([name])
        return object.__getattribute__(self, name)


def test_a_callback_sees_every_event_once_on_the_main_process_only(tmp_path):
    recorder = Recorder()
    cfg = build_config(toy_config(tmp_path, "progressive:1", epochs=2, eval_every=3, save_every=5))
    doc = train_run(cfg, show_progress=False, callbacks=(recorder,))
    history = doc_history(cfg.run_dir)
    seen = recorder.seen
    assert (seen["on_fit_start"], seen["on_fit_end"], seen["on_fit_abort"]) == (1, 1, 0)
    assert seen["on_phase_start"] == seen["on_phase_end"] == 2
    assert seen["on_step_end"] == doc["steps"] == 8
    assert seen["on_evaluate"] == sum(r["kind"] == "eval" for r in history)
    assert seen["on_record"] == len(history)
    assert seen["on_epoch_end"] == 2 and seen["on_checkpoint"] >= 3  # one epoch per phase
    # another process of a multi-process run: a main-process-only callback hears nothing
    other = Recorder()
    Callbacks([other], is_main_process=False).emit("on_fit_start", None)
    assert not other.seen


def test_trackers_write_what_tensorboard_and_mlflow_read_back(tmp_path):
    cfg = build_config(toy_config(tmp_path, "full", epochs=2, report_to=["tensorboard", "mlflow"]))
    doc = train_run(cfg, show_progress=False)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(cfg.run_dir / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "eval/loss", "eval/accuracy", "lr/head", "lr/block.2", "weight_change/head"} <= tags
    accuracy = events.Scalars("eval/accuracy")
    assert accuracy[-1].step == doc["steps"]
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{cfg.run_dir / 'mlruns' / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["transferlab"])
    assert len(runs) == 1
    run = runs.iloc[0]
    assert run["params.strategy.name"] == "full" and run["params.task"] == "toy"
    assert "plan.phase_1" in {c.removeprefix("params.") for c in runs.columns}
    assert run["metrics.eval/accuracy"] == pytest.approx(accuracy[-1].value)
