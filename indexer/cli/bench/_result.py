"""A scenario's result, and what the machine has: what the ``indexer bench`` command needs
before any scenario runs (so that ``indexer --help`` imports nothing heavier)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Result", "cpu_count"]


@dataclass
class Result:
    """One scenario's figure beside its reference, and the bar the ratio must reach."""

    scenario: str
    figure: float
    reference: float
    unit: str
    bar: float | None  # minimum ratio figure/reference (None: informational)
    details: dict[str, Any] = field(default_factory=dict)
    higher_is_better: bool = True
    limit: float | None = None  # an absolute ceiling on the figure, where one applies

    @classmethod
    def throughput(
        cls,
        scenario: str,
        count: float,
        seconds: float,
        reference_seconds: float,
        *,
        unit: str = "checkpoints/s",
        bar: float | None,
        details: dict[str, Any],
    ) -> Result:
        """``count`` items in ``seconds`` beside the reference's ``reference_seconds``."""
        return cls(scenario, count / seconds, count / reference_seconds, unit, bar, details)

    @property
    def ratio(self) -> float:
        if not self.reference:
            return 0.0
        return self.figure / self.reference

    @property
    def passed(self) -> bool | None:
        if self.bar is None:
            return None
        within = self.limit is None or self.figure <= self.limit
        if self.higher_is_better:
            return self.ratio >= self.bar and within
        return self.ratio <= self.bar and within

    def to_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "figure": round(self.figure, 2),
            "reference": round(self.reference, 2),
            "unit": self.unit,
            "ratio": round(self.ratio, 3),
            "bar": self.bar,
            "higher_is_better": self.higher_is_better,
            "limit": self.limit,
            "passed": self.passed,
            "details": self.details,
        }


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
