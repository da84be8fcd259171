"""`benchmark` repeats each measurement: the median is reported with its spread, and a spread that says the machine
was busy is said in words."""

from __future__ import annotations

import pytest
from rich.console import Console

from transferlab.commands.deploy import measurement_table
from transferlab.deploy.benchmark import Measurement, busy_warnings, spread


def row(name: str, latency_spread: float | None, throughput_spread: float | None) -> Measurement:
    return Measurement(name, "torch", False, "m", 86.7, 17.9, 19.0, 120.0, 0.83, "accuracy", latency_spread,
                       throughput_spread)


def test_spread_is_half_the_range_over_the_median():
    assert spread([10.0, 11.0, 12.0]) == pytest.approx(1 / 11)
    assert spread([5.0]) is None  # one measurement has no spread


def test_a_busy_machine_is_said_in_words():
    rows = [row("torch fp32", 0.02, 0.03), row("distilled torch fp32", 0.35, 0.04)]
    (line,) = busy_warnings(rows, 0.10)
    assert line.startswith("distilled torch fp32: batch-1 latency varied by ±35% between repeats")
    assert "the machine was busy" in line and "noise" in line
    assert busy_warnings([row("torch fp32", 0.02, None)], 0.10) == []


def test_table_shows_medians_with_their_spread():
    console = Console(width=200, record=True)
    console.print(measurement_table([row("torch fp32", 0.02, 0.35)], "benchmark", 0.83))
    text = console.export_text()
    assert "17.9 ±2%" in text and "120 ±35%" in text
