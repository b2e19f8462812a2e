"""What ``edh eval`` gives: the `Evaluation` of a run on one split (shared by every kind of evaluation)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Evaluation:
    split: str
    count: int
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    reports: dict[str, list[str]] = field(default_factory=dict)
