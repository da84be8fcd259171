"""Rich renderings shared by the commands: the plan table and the metrics table."""

from __future__ import annotations

from rich.table import Table

from transferlab.strategies.plan import ResolvedPhase


def _ranges(indices: list[int]) -> str:
    spans, start = [], indices[0]
    for prev, cur in zip(indices, indices[1:] + [None], strict=True):
        if cur != prev + 1:
            spans.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = cur
    return ",".join(spans)


def compact_groups(lrs: dict[str, float]) -> str:
    """`embeddings @ 2e-05, layer.0-5 @ 2e-05, head @ 1e-03`: per-layer groups with one lr merged."""
    merged: dict[tuple, list[int]] = {}
    for group, lr in lrs.items():
        parts = group.split(".")
        if len(parts) == 3 and parts[1].isdigit():
            merged.setdefault((parts[0], parts[2], lr), []).append(int(parts[1]))
        else:
            merged[(group, None, lr)] = []
    # a layer span whose attention and ffn share one lr is shown once, without the part
    out, done = [], set()
    for (prefix, part, lr), idx in merged.items():
        if (prefix, part, lr) in done:
            continue
        if part is None:
            out.append(f"{prefix} @ {lr:.0e}")
            continue
        twin = (prefix, "ffn" if part == "attention" else "attention", lr)
        if merged.get(twin) == idx:
            done.add(twin)
            out.append(f"{prefix}.{_ranges(idx)} @ {lr:.0e}")
        else:
            out.append(f"{prefix}.{_ranges(idx)}.{part} @ {lr:.0e}")
    return ", ".join(out)


def plan_table(phases: list[ResolvedPhase], title: str) -> Table:
    """Phase, epochs, schedule, groups that learn with their lr, trainable params and ratio."""
    table = Table(title=title, title_justify="left")
    for col in ("phase", "epochs", "schedule", "learns (group @ lr)", "trainable", "ratio"):
        table.add_column(col, overflow="fold")
    for i, p in enumerate(phases):
        table.add_row(f"{i + 1} {p.phase.name}", f"{p.phase.epochs:g}",
                      f"{p.phase.schedule}, warmup {p.phase.warmup:g}", compact_groups(p.lrs),
                      f"{p.trainable_params:,} / {p.total_params:,}", f"{100 * p.trainable_ratio:.2f}%")
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
