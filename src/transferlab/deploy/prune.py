"""Pruning: global magnitude (unstructured zeros) and structured attention-head removal, saved in HF format.

Magnitude pruning zeroes the smallest weights of every encoder Linear layer at once (one global threshold):
the files keep their dense size and dense kernels their speed; it shows how much of the model is redundant.
Head pruning removes whole heads, scored by the first-order estimate of the loss change when a head's output
is dropped (Michel et al., 2019: |Σ context_h · ∂L/∂context_h|, normalised per layer), so the model really
shrinks. The removed heads are recorded in the config (`pruned_heads`) and re-applied when the model loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from transferlab.errors import UserError
from transferlab.models.modeling_transferlab import attention_head_size, remove_attention_heads

METHODS = ("magnitude", "heads")


def load_head_model(run_dir: Path, purpose: str) -> nn.Module:
    """The saved model of a run, when it is a pretrained backbone under a transferlab head (every task but
    text-to-text, whose encoder-decoder has no separate backbone to cut)."""
    from transferlab.deploy.predictor import load_saved_task

    task = load_saved_task(run_dir / "model")
    if task.backbone_prefix != "backbone.":
        raise UserError(f"{purpose} works on a backbone under a task head; '{run_dir}' holds a {task.name} model "
                        "(an encoder-decoder).", "Use `transferlab quantize --backend torch` to shrink it.")
    return task.load_model(run_dir / "model")


def prunable_linears(model: nn.Module) -> list[nn.Linear]:
    """The backbone's Linear layers (attention and feed-forward); embeddings and the small head stay dense."""
    return [m for m in model.backbone.modules() if isinstance(m, nn.Linear)]


def magnitude_prune(model: nn.Module, amount: float) -> None:
    """Zero the `amount` smallest-magnitude backbone weights globally; masks stay until `make_permanent`."""
    params = [(m, "weight") for m in prunable_linears(model)]
    torch_prune.global_unstructured(params, pruning_method=torch_prune.L1Unstructured, amount=amount)


def make_permanent(model: nn.Module) -> None:
    """Fold pruning masks into plain weights (the model saves and loads like any other)."""
    for module in prunable_linears(model):
        if torch_prune.is_pruned(module):
            torch_prune.remove(module, "weight")


def sparsity(model: nn.Module) -> float:
    """Share of zero weights in the backbone's Linear layers."""
    weights = [m.weight for m in prunable_linears(model)]
    return float(sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights))


def attention_layers(model: nn.Module) -> list[nn.Module]:
    """The attention blocks of a BERT-like backbone (query/key/value + output.dense), or a UserError."""
    layers = getattr(getattr(model.backbone, "encoder", None), "layer", None)
    if layers is None or not all(hasattr(layer, "attention") and hasattr(layer.attention, "self")
                                 for layer in layers):
        raise UserError(f"Head pruning supports BERT-like encoders; this backbone is "
                        f"'{model.config.backbone.get('model_type')}'.", "Use --method magnitude instead.")
    return [layer.attention for layer in layers]


def head_size(model: nn.Module) -> int:
    return attention_head_size(model.config.backbone_config())


def remaining_heads(model: nn.Module) -> list[list[int]]:
    """Original indices of the heads each layer still has."""
    n = model.config.backbone["num_attention_heads"]
    pruned = {int(k): set(v) for k, v in (getattr(model.config, "pruned_heads", None) or {}).items()}
    return [[h for h in range(n) if h not in pruned.get(i, set())] for i in range(len(attention_layers(model)))]


def head_importance(model: nn.Module, batches) -> list[torch.Tensor]:
    """Per layer, one score per remaining head: |Σ context_h · ∂L/∂context_h| over `batches`, L2-normalised."""
    size = head_size(model)
    contexts: list[torch.Tensor] = []

    def keep(_module, args):
        args[0].retain_grad()
        contexts.append(args[0])

    hooks = [attn.output.dense.register_forward_pre_hook(keep) for attn in attention_layers(model)]
    scores = [torch.zeros(attn.self.query.out_features // size) for attn in attention_layers(model)]
    was_training = model.training
    model.eval()  # no dropout: the scores describe the model as it will be used
    try:
        for batch in batches:
            contexts.clear()
            model.zero_grad(set_to_none=True)
            model(**batch).loss.backward()
            for i, ctx in enumerate(contexts):
                per_head = (ctx * ctx.grad).unflatten(-1, (-1, size)).sum(dim=(0, 1, 3))
                scores[i] += per_head.detach().abs()
    finally:
        for hook in hooks:
            hook.remove()
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return [s / s.norm().clamp(min=1e-12) for s in scores]


def prune_heads(model: nn.Module, amount: float, batches) -> dict[int, list[int]]:
    """Remove the `amount` least important heads of the whole model (each layer keeps at least one).

    Returns the heads removed now, per layer, in original numbering."""
    scores = head_importance(model, batches)
    remaining = remaining_heads(model)
    total = sum(len(r) for r in remaining)
    ranked = sorted((float(s), layer, pos) for layer, layer_scores in enumerate(scores)
                    for pos, s in enumerate(layer_scores))
    budget = int(round(amount * total))
    left = [len(r) for r in remaining]
    removed: dict[int, list[int]] = {}
    for _score, layer, pos in ranked:
        if budget == 0:
            break
        if left[layer] > 1:
            removed.setdefault(layer, []).append(remaining[layer][pos])
            left[layer] -= 1
            budget -= 1
    current = {int(k): list(v) for k, v in (getattr(model.config, "pruned_heads", None) or {}).items()}
    remove_attention_heads(model.backbone, removed, head_size(model), remaining)
    for layer, heads in removed.items():
        current[layer] = sorted(current.get(layer, []) + heads)
    # string keys: the form a JSON config round-trips to
    model.config.pruned_heads = {str(k): v for k, v in sorted(current.items())}
    return {layer: sorted(heads) for layer, heads in sorted(removed.items())}


def check_amount(amount: float) -> None:
    if not 0 < amount < 1:
        raise UserError(f"--amount {amount} is out of range.", "Pass a fraction strictly between 0 and 1, e.g. 0.3.")


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(all parameters, non-zero parameters)."""
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(int((p != 0).sum()) for p in params)


@dataclass
class PruneResult:
    model_dir: Path
    method: str
    amount: float
    sparsity: float
    parameters: int
    nonzero: int
    removed_heads: dict[int, list[int]] | None
    finetune_metrics: dict | None


def prune_run(run_dir: Path, method: str, amount: float, epochs: float = 0.0, lr: float = 5e-5,
              importance_examples: int = 256, show_progress: bool = True) -> PruneResult:
    """Prune a run's model, optionally fine-tune it briefly to recover, and save it as run_dir/pruned-<method>."""
    from transferlab.deploy.finetune import finetune, load_context, save_derived

    if method not in METHODS:
        raise UserError(f"Unknown pruning method '{method}'.", f"Choose one of: {', '.join(METHODS)}.")
    check_amount(amount)
    model = load_head_model(run_dir, "Pruning")
    removed = None
    if method == "magnitude":
        magnitude_prune(model, amount)
    else:
        ctx = load_context(run_dir)
        train = ctx.data.train
        sample = train.sample(n=min(importance_examples, len(train)), random_state=ctx.cfg.seed)
        removed = prune_heads(model, amount, ctx.batches(sample, 32))
    metrics = finetune(model, run_dir, epochs, lr, show_progress=show_progress) if epochs > 0 else None
    make_permanent(model)
    total, nonzero = count_parameters(model)
    out = save_derived(model, run_dir, f"pruned-{method}")
    return PruneResult(out, method, amount, sparsity(model), total, nonzero, removed, metrics)
