"""Progress of long work: the one callback type every command reports its stages through.

The library never prints; it tells a callback when a stage starts and finishes (and, within a stage, what
it is at), and the CLI decides how to show it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = ["ProgressCallback", "StageClock", "StageEvent", "StageTiming"]


@dataclass(frozen=True)
class StageEvent:
    """A stage started (``seconds is None``) or finished after ``seconds``.

    ``detail`` says, for a stage under way, what it is at (``3/41: encoder.layer.0``).
    """

    stage: str
    seconds: float | None = None
    detail: str | None = None


ProgressCallback = Callable[[StageEvent], None]


@dataclass(frozen=True)
class StageTiming:
    """How long one finished stage took."""

    stage: str
    seconds: float


class StageClock:
    """Times stages and reports them to a progress callback."""

    def __init__(self, progress: ProgressCallback | None) -> None:
        self.progress = progress
        self.timings: list[StageTiming] = []

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        self.report(StageEvent(stage))
        start = time.perf_counter()
        yield
        seconds = time.perf_counter() - start
        self.timings.append(StageTiming(stage, seconds))
        self.report(StageEvent(stage, seconds))

    def report(self, event: StageEvent) -> None:
        if self.progress:
            self.progress(event)
