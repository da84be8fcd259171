"""Rich renderings shared by the commands: the console, the plan table and the metrics table."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from transferlab.strategies.describe import format_lr

if TYPE_CHECKING:
    from transferlab.backbones.groups import LayerGroups
    from transferlab.strategies.plan import ResolvedPhase

# Piped or redirected output has no terminal width: rich would cut tables at 80 columns. Lines are as wide as
# their content instead (up to this many characters).
PIPED_WIDTH = 1000


def make_console(stderr: bool = False) -> Console:
    """The terminal's width on a terminal; no 80-column cut when the output goes to a pipe or a file."""
    probe = Console(stderr=stderr)
    return probe if probe.is_terminal else Console(stderr=stderr, width=PIPED_WIDTH)


def _ranges(indices: list[int]) -> str:
    spans, start = [], indices[0]
    for prev, cur in zip(indices, indices[1:] + [None], strict=True):
        if cur != prev + 1:
            spans.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = cur
    return ",".join(spans)


def _spans(lrs: dict[str, float]) -> list[tuple[str, float, list[str]]]:
    """(label, lr, group names) with per-layer groups of one lr merged: `layer.0-5` (attention and ffn alike),
    `layer.0-5.attention.adapter`, `head`."""
    merged: dict[tuple, list[int]] = {}
    for group, lr in lrs.items():
        parts = group.split(".", 2)
        if len(parts) == 3 and parts[1].isdigit():  # layer.3.ffn, layer.3.attention.adapter, layer.3.ffn@bias
            merged.setdefault((parts[0], parts[2], lr), []).append(int(parts[1]))
        else:
            merged[(group, None, lr)] = []
    # a layer span whose attention and ffn share one lr is shown once, without the part
    out, done = [], set()
    for (prefix, part, lr), idx in merged.items():
        if (prefix, part, lr) in done:
            continue
        if part is None:
            out.append((prefix, lr, [prefix]))
            continue
        twin = (prefix, "ffn" if part == "attention" else "attention", lr)
        if merged.get(twin) == idx:
            done.add(twin)
            out.append((f"{prefix}.{_ranges(idx)}", lr, [f"{prefix}.{i}.{p}" for i in idx for p in (part, twin[1])]))
        else:
            out.append((f"{prefix}.{_ranges(idx)}.{part}", lr, [f"{prefix}.{i}.{part}" for i in idx]))
    return out


def adapter_summary(groups: LayerGroups) -> str | None:
    """`adapters: layer.0-5.attention.adapter 147,456 params (0.64% of 22,861,442)`; None without adapters."""
    adapters = {g.name: 0.0 for g in groups if g.kind == "adapter"}
    if not adapters:
        return None
    sizes = [(label, sum(groups.size(n) for n in names)) for label, _, names in _spans(adapters)]
    total = sum(size for _, size in sizes)
    return (f"adapters: {', '.join(f'{label} {size:,} params' for label, size in sizes)} "
            f"({100 * total / groups.total:.2f}% of {groups.total:,})")


def plan_table(phases: list[ResolvedPhase], title: str) -> Table:
    """Phase, epochs, schedule, groups that learn with their lr, trainable params and ratio; the training image
    size of each phase when a phase sets one (progressive resizing)."""
    table = Table(title=title, title_justify="left")
    resized = any(p.phase.resolution for p in phases)
    for col in ("phase", "epochs", "schedule", "learns (group @ lr)", "trainable", "ratio") + \
            (("resolution",) if resized else ()):
        table.add_column(col, overflow="fold")
    for i, p in enumerate(phases):
        learns = p.learns or ", ".join(f"{g} @ {format_lr(lr)}" for g, lr in p.lrs.items())
        size = (f"{p.phase.resolution} px" if p.phase.resolution else "the run's",) if resized else ()
        table.add_row(f"{i + 1} {p.phase.name}", f"{p.phase.epochs:g}",
                      f"{p.phase.schedule}, warmup {p.phase.warmup:g}", learns,
                      f"{p.trainable_params:,} / {p.total_params:,}", f"{100 * p.trainable_ratio:.2f}%", *size)
    return table


def metrics_table(metrics: dict, title: str = "held-out metrics") -> Table:
    """Scalar metrics, then per-class precision/recall/F1 when present."""
    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        if isinstance(value, int | float):
            table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    for name, row in metrics.get("per_class", {}).items():
        table.add_row(f"{name} (P / R / F1)", f"{row['precision']:.3f} / {row['recall']:.3f} / {row['f1']:.3f}")
    return table


def auto_table(candidates: list, title: str) -> Table:
    """`--strategy auto`'s reasoning: each candidate, why it was considered, what its probe measured, the decision."""
    table = Table(title=title, title_justify="left")
    for col in ("candidate", "considered because", "trainable", "probe score", "probe time", "predicted time",
                "decision"):
        table.add_column(col, overflow="fold")
    for c in candidates:
        predicted = "—" if c.predicted_time_s is None else f"{c.predicted_time_s:.0f}s" + \
            (f" ({c.epochs:g} epochs)" if c.epochs else "")
        table.add_row(c.strategy, c.why, "—" if c.trainable_pct is None else f"{c.trainable_pct:.3g}%",
                      "—" if c.probe_score is None else f"{c.probe_score:.4f}",
                      "—" if c.probe_time_s is None else f"{c.probe_time_s:.1f}s", predicted, c.decision or "—")
    return table
