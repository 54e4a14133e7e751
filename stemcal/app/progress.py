"""Progress of the app's long jobs (Auto, Refine from here, Record), stage by stage.

A job is a list of :class:`Stage`\\ s. A *pass* stage is a pass over the raw
data: LiberTEM reports its frames (:class:`StagedProgress` is a LiberTEM
``ProgressReporter``, given as the ``progress`` of the fit and the passes),
and its start and end move the job from stage to stage, so the stages
between two passes (the fitting) need no hook into the fit. Other stages are
entered by :meth:`StagedProgress.enter`.
"""
from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Sequence

from libertem.common.progress import ProgressReporter, ProgressState

__all__ = ["Stage", "StagedProgress", "ProgressView"]


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage of a job: what it does, its share of the bar, whether it is a raw pass."""

    label: str
    weight: float = 1.0
    is_pass: bool = False


@dataclasses.dataclass(frozen=True)
class ProgressView:
    """What the page shows: ``fraction`` 0..1 done, the stage's ``text``, seconds so far."""

    fraction: float
    text: str
    seconds: float


class StagedProgress(ProgressReporter):
    """The progress of one job through its stages; tells ``on_change`` at every change.

    Parameters
    ----------
    stages : sequence of Stage
    on_change : callable
        ``on_change(ProgressView)``; called from whichever thread made the change
        (the job's, or LiberTEM's progress thread).
    """

    def __init__(self, stages: Sequence[Stage], on_change: Callable[[ProgressView], None]) -> None:
        if not stages:
            raise ValueError("a job needs at least one stage")
        self.stages = list(stages)
        self._on_change = on_change
        self._lock = threading.Lock()
        self._index = -1
        self._inner = 0.0  # fraction of the current stage done
        self._t0 = time.monotonic()
        self.enter(0)

    # -- stages -----------------------------------------------------------------------------
    def enter(self, index: int) -> None:
        """Begin stage ``index`` (the ones before it count as done)."""
        with self._lock:
            self._index = min(max(index, self._index), len(self.stages) - 1)
            self._inner = 0.0
        self._notify()

    def finish(self, text: str = "done") -> None:
        """The whole job is done."""
        with self._lock:
            self._index, self._inner = len(self.stages) - 1, 1.0
        self._on_change(ProgressView(1.0, text, time.monotonic() - self._t0))

    def _next_pass(self) -> int:
        """The pass stage a starting pass belongs to: the current one if it is a pass not yet
        begun, else the next pass stage (or the current stage if there is none)."""
        current = self.stages[self._index]
        first = self._index if current.is_pass and self._inner == 0.0 else self._index + 1
        for i in range(first, len(self.stages)):
            if self.stages[i].is_pass:
                return i
        return self._index

    def view(self) -> ProgressView:
        with self._lock:
            total = sum(s.weight for s in self.stages)
            done = sum(s.weight for s in self.stages[:self._index])
            stage = self.stages[self._index]
            frac = (done + stage.weight * self._inner) / total
            text = stage.label
            if stage.is_pass and self._inner > 0:
                text = f"{text} ({100 * self._inner:.0f} %)"
            return ProgressView(min(frac, 1.0), f"{text}, {time.monotonic() - self._t0:.0f} s",
                                time.monotonic() - self._t0)

    def _notify(self) -> None:
        self._on_change(self.view())

    # -- LiberTEM's ProgressReporter: the raw passes ----------------------------------------
    def start(self, state: ProgressState) -> None:
        with self._lock:
            self._index = self._next_pass()
            self._inner = 0.0
        self._notify()

    def update(self, state: ProgressState) -> None:
        with self._lock:
            if state.num_frames_total:
                self._inner = min(state.num_frames_complete / state.num_frames_total, 0.999)
        self._notify()

    def end(self, state: ProgressState) -> None:
        with self._lock:
            self._inner = 1.0
            if self._index + 1 < len(self.stages) and not self.stages[self._index + 1].is_pass:
                self._index += 1  # the work after a pass has begun
                self._inner = 0.0
        self._notify()
