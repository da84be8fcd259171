"""Distillation: a student made of a subset of the teacher's layers, trained on the teacher's softened outputs.

The loss is Hinton et al. (2015): α·T²·KL(softmax(teacher/T) ‖ softmax(student/T)) + (1 − α)·the task's own
loss with the gold targets; the KL term is summed over the task's outputs (class logits, tag logits per token,
span start and end logits). The student starts from the teacher's own embeddings, head and evenly spaced layers
(the top one always kept: its output is what the head was trained on), so it starts close to the teacher.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from transferlab.errors import UserError

# where the encoder layers of each backbone family live, and the config key that counts them
LAYER_PATTERN = re.compile(r"^backbone\.(?:encoder\.layer|transformer\.layer)\.(\d+)\.")
LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layers")


def layer_count_key(model: nn.Module) -> str:
    for key in LAYER_COUNT_KEYS:
        if key in model.config.backbone:
            return key
    raise UserError(f"Distillation supports BERT-like and DistilBERT backbones, not "
                    f"'{model.config.backbone.get('model_type')}'.", "Use prune or quantize for this model.")


def pick_layers(teacher_layers: int, student_layers: int) -> list[int]:
    """Evenly spaced teacher layers ending with the top one: 6 -> 3 keeps 1, 3, 5."""
    if not 1 <= student_layers < teacher_layers:
        raise UserError(f"--student-layers {student_layers}: the teacher has {teacher_layers} layers.",
                        f"Pass a number from 1 to {teacher_layers - 1}.")
    return [round((i + 1) * teacher_layers / student_layers) - 1 for i in range(student_layers)]


def make_student(teacher: nn.Module, layers: list[int]) -> nn.Module:
    """A copy of the teacher keeping only `layers` (in order), with the teacher's weights."""
    key = layer_count_key(teacher)
    config = copy.deepcopy(teacher.config)
    config.backbone[key] = len(layers)
    pruned = getattr(config, "pruned_heads", None)
    if pruned:  # a head-pruned teacher: the kept layers keep their pruned heads, under their new index
        config.pruned_heads = {str(new): pruned[str(old)] for new, old in enumerate(layers) if str(old) in pruned}
    student = type(teacher)(config)
    renumber = {old: new for new, old in enumerate(layers)}
    state = {}
    for name, tensor in teacher.state_dict().items():
        match = LAYER_PATTERN.match(name)
        if match is None:
            state[name] = tensor
        elif int(match.group(1)) in renumber:
            start, end = match.span(1)
            state[name[:start] + str(renumber[int(match.group(1))]) + name[end:]] = tensor
    student.load_state_dict(state, strict=True)
    return student


class DistillationModel(nn.Module):
    """Runs the student; with labels, returns the combined soft + hard loss (the teacher stays frozen, in eval)."""

    def __init__(self, student: nn.Module, teacher: nn.Module, outputs: tuple[str, ...], temperature: float = 2.0,
                 alpha: float = 0.5):
        super().__init__()
        self.student = student
        self.outputs = outputs
        self.teacher = teacher.eval().requires_grad_(False)
        self.temperature = temperature
        self.alpha = alpha

    def train(self, mode: bool = True) -> DistillationModel:
        super().train(mode)
        self.teacher.eval()  # no dropout in the targets
        return self

    def forward(self, **inputs):
        out = self.student(**inputs)
        if out.loss is None:  # no targets: prediction
            return out
        with torch.no_grad():
            target = self.teacher(**inputs)
        t = self.temperature
        soft = sum(F.kl_div(F.log_softmax(out[name].float() / t, dim=-1), F.softmax(target[name].float() / t, dim=-1),
                            reduction="batchmean") for name in self.outputs) * t * t
        out.loss = self.alpha * soft + (1 - self.alpha) * out.loss
        return out


def distill_run(run_dir: Path, student_layers: int = 3, epochs: float = 2.0, temperature: float = 2.0,
                alpha: float = 0.5, lr: float = 1e-4, show_progress: bool = True) -> tuple[Path, list[int], dict]:
    """Distil a run's model into a `student_layers` student saved as run_dir/distilled.

    Returns (student directory, teacher layers kept, student eval metrics)."""
    from transferlab.deploy.finetune import finetune, save_derived
    from transferlab.deploy.predictor import load_saved_task
    from transferlab.deploy.prune import load_head_model

    if temperature <= 0 or not 0 <= alpha <= 1:
        raise UserError(f"--temperature {temperature} / --alpha {alpha} out of range.",
                        "The temperature must be > 0 and alpha (weight of the soft targets) within [0, 1].")
    teacher = load_head_model(run_dir, "Distillation")
    layers = pick_layers(teacher.config.backbone[layer_count_key(teacher)], student_layers)
    student = make_student(teacher, layers)
    outputs = load_saved_task(run_dir / "model").output_names
    metrics = finetune(DistillationModel(student, teacher, outputs, temperature, alpha), run_dir, epochs, lr,
                       learner=student, show_progress=show_progress)
    return save_derived(student, run_dir, "distilled"), layers, metrics
