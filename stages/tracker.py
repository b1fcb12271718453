"""What a stage program reports to: the orchestrator plugs in MLflow; tests and plain calls use NullTracker."""

from __future__ import annotations

from typing import Protocol


class Tracker(Protocol):
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...


class NullTracker:
    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass


class ListTracker:
    """Keeps every logged point in memory (tests, benchmarks)."""

    def __init__(self) -> None:
        self.points: list[tuple[int, dict[str, float]]] = []

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.points.append((step, dict(metrics)))
