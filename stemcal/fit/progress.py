"""How far a fit is: its stages, and the partitions of its passes over the raw data.

A :class:`FitProgress` is handed to :func:`stemcal.fit.coarse.cold_start` twice:
as LiberTEM's ``progress`` (a :class:`libertem.common.progress.ProgressReporter`,
which reports the partitions of each pass over the raw data) and as its
``on_stage`` hook (called when the fit moves to the next stage). It turns both
into one number, the fraction of the whole fit done, and hands it with the
stage's name to a callback: ``report(stage, fraction)``.

The weights of the stages are the shares of the time they took in cold
starts of 40x40 scans of 96x96 frames held in memory (0.2 s coarse estimate,
0.3-0.4 s search, 0.5-2 s final stage and confirming pass, 1.8-2.9 s in all);
read from a file, the two passes take a larger share.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from libertem.common.progress import ProgressReporter, ProgressState

__all__ = ["FitProgress", "COLD_START_STAGES"]

#: (stage, share of the fit) of a cold start, in order; passes over the raw data end in
#: ``" pass"``.
COLD_START_STAGES: tuple[tuple[str, float], ...] = (
    ("cache pass", 0.15), ("coarse estimate", 0.12), ("refinement", 0.2), ("final stage", 0.43),
    ("confirming pass", 0.10))


class FitProgress(ProgressReporter):
    """The fraction of a fit done, from its stages and its passes' partitions.

    Parameters
    ----------
    report : callable ``(stage: str, fraction: float) -> None``
        Called at every change: the current stage and the fraction of the
        whole fit done (0..1, never decreasing). Called on the fit's threads;
        it must be quick and must not raise.
    stages : sequence of (str, float)
        The stages in order with their shares (normalised here).

    Notes
    -----
    :meth:`stage` jumps to the start of a named stage (an unknown name is
    reported with the fraction unchanged). A pass that starts while the
    current stage is not a pass (a name ending in ``" pass"``) moves on to the
    next pass stage: the confirming pass runs inside the refinement, which
    has no hook of its own.
    """

    def __init__(self, report: Callable[[str, float], None],
                 stages: Sequence[tuple[str, float]] = COLD_START_STAGES) -> None:
        total = sum(share for _, share in stages)
        self._names = [name for name, _ in stages]
        self._starts: list[float] = []
        self._shares = [share / total for _, share in stages]
        acc = 0.0
        for share in self._shares:
            self._starts.append(acc)
            acc += share
        self._report = report
        self._lock = threading.Lock()
        self._index = -1
        self._name = "starting"
        self._fraction = 0.0

    @property
    def fraction(self) -> float:
        """Fraction of the fit done, 0..1."""
        return self._fraction

    def _set(self, name: str, fraction: float) -> None:
        with self._lock:
            self._name = name
            self._fraction = max(self._fraction, min(1.0, fraction))
            name, fraction = self._name, self._fraction
        self._report(name, fraction)

    def stage(self, name: str) -> None:
        """The fit has reached stage ``name`` (``"done"``: all of it)."""
        if name == "done":
            self._set(name, 1.0)
        elif name in self._names:
            self._index = self._names.index(name)
            self._set(name, self._starts[self._index])
        else:
            self._set(name, self._fraction)

    # -- LiberTEM's ProgressReporter -------------------------------------------------------
    def start(self, state: ProgressState) -> None:
        current = self._names[self._index] if self._index >= 0 else ""
        if not current.endswith(" pass"):
            later = [i for i, n in enumerate(self._names) if i > self._index and n.endswith(" pass")]
            if later:
                self.stage(self._names[later[0]])
        self.update(state)

    def update(self, state: ProgressState) -> None:
        if self._index < 0 or not state.num_frames_total:
            return
        part = min(1.0, state.num_frames_complete / state.num_frames_total)
        self._set(self._names[self._index],
                  self._starts[self._index] + part * self._shares[self._index])

    def end(self, state: ProgressState) -> None:
        self.update(state)
