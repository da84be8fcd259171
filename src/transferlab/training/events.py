"""Trainer events: the loop announces what happens; callbacks add behaviour without editing the loop.

Events, in the order of a run: `on_fit_start`, then per phase `on_phase_start`, per optimizer update
`on_step_end`, per evaluation `on_evaluate`, per epoch `on_epoch_end`, per saved checkpoint `on_checkpoint`,
`on_phase_end`, and finally `on_fit_end` (or `on_fit_abort` when an exception stops the run). Every history
record (train, eval, monitor, cache) is also announced with `on_record`. Callbacks run in ascending `order`; a
`main_process_only` callback is skipped on the other processes of a multi-process run. Callbacks share the
trainer's state (`trainer.state`, `trainer.history`, ...).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

EVENTS = ("on_fit_start", "on_phase_start", "on_step_end", "on_evaluate", "on_epoch_end", "on_checkpoint",
          "on_phase_end", "on_fit_end", "on_fit_abort", "on_record")


class Callback:
    """Base class: override the events you need; each receives the trainer and the event's payload."""

    order: int = 0
    main_process_only: bool = False

    def on_fit_start(self, trainer) -> None: ...

    def on_phase_start(self, trainer, phase: int) -> None: ...

    def on_step_end(self, trainer, record: dict | None) -> None:
        """After an optimizer update; `record` is the train record when this step logged one."""

    def on_evaluate(self, trainer, record: dict) -> None:
        """After an evaluation; `record` holds its loss and metrics."""

    def on_epoch_end(self, trainer) -> None: ...

    def on_checkpoint(self, trainer, path) -> None: ...

    def on_phase_end(self, trainer, phase: int) -> None: ...

    def on_fit_end(self, trainer) -> None: ...

    def on_fit_abort(self, trainer) -> None:
        """Training stopped by an exception (the exception goes on after the callbacks have run)."""

    def on_record(self, trainer, record: dict) -> None:
        """Every record the trainer adds to its history."""


class OnRecord(Callback):
    """A plain function `fn(record, trainer)` called for every history record."""

    def __init__(self, fn: Callable[[dict, Any], None], order: int = 50):
        self.fn = fn
        self.order = order

    def on_record(self, trainer, record: dict) -> None:
        self.fn(record, trainer)


def as_callback(item: Callback | Callable) -> Callback:
    return item if isinstance(item, Callback) else OnRecord(item)


class Callbacks:
    """Ordered callbacks and the dispatch of events to them."""

    def __init__(self, callbacks: Iterable[Callback | Callable], is_main_process: bool):
        self.items = sorted((as_callback(c) for c in callbacks), key=lambda c: c.order)
        self.is_main_process = is_main_process

    def emit(self, event: str, trainer, *payload) -> None:
        if event not in EVENTS:
            raise ValueError(f"unknown trainer event {event}")
        for callback in self.items:
            if callback.main_process_only and not self.is_main_process:
                continue
            getattr(callback, event)(trainer, *payload)

    def find(self, kind: type) -> Callback | None:
        return next((c for c in self.items if isinstance(c, kind)), None)
