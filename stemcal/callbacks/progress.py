"""Progress bars on stderr for ``RE.waiting_hook``: bluesky's ProgressBarManager, drawn by tqdm.

bluesky's own :class:`~bluesky.utils.TerminalProgressBar` writes to stdout,
where ``stemcal calibrate --json`` prints its one JSON object; these bars go
to stderr. Each status the RunEngine waits on that has ``watch`` (ophyd's
progress interface, e.g. :class:`stemcal.callbacks.ResultStatus`) gets a bar
with its name and unit: ``calibration of run 1a2b3c4d: refinement`` in percent,
``merlin: acquisition`` in frames.
"""
from __future__ import annotations

import shutil
import sys
import threading
from collections.abc import Iterable
from typing import IO, Any

from bluesky.utils import ProgressBarBase, ProgressBarManager

__all__ = ["TqdmProgressBar", "progress_bars"]


class TqdmProgressBar(ProgressBarBase):
    """One tqdm bar per watchable status, on ``file`` (default stderr).

    Parameters
    ----------
    status_objs : iterable of statuses
        What the RunEngine waits on; those without ``watch`` or already done
        get no bar.
    file : text stream, optional
        Where the bars are drawn (default ``sys.stderr``).
    """

    def __init__(self, status_objs: Iterable[Any], file: IO[str] | None = None) -> None:
        from tqdm import tqdm

        self._tqdm = tqdm
        self._file = file if file is not None else sys.stderr
        self._bars: dict[int, Any] = {}
        self._lock = threading.Lock()
        self._closed = False
        watchable = [st for st in status_objs if hasattr(st, "watch") and not st.done]
        for pos, st in enumerate(watchable):
            st.watch(lambda pos=pos, **kw: self.update(pos, **kw))

    def update(self, pos: Any, *, name: str | None = None, current: Any = None,
               initial: Any = None, target: Any = None, unit: str = "units",
               precision: Any = None, fraction: Any = None, time_elapsed: float | None = None,
               time_remaining: float | None = None) -> None:
        """Called by the status's ``watch``: move the bar of ``pos`` to ``current``."""
        if current is None:
            return
        initial = initial or 0
        with self._lock:
            if self._closed:
                return
            bar = self._bars.get(pos)
            if bar is None:  # (a terminal that reports no size gets 80x24, not no bar)
                size = shutil.get_terminal_size((80, 24))
                bar = self._bars[pos] = self._tqdm(
                    total=None if target is None else float(target) - float(initial),
                    unit=unit, file=self._file,
                    position=pos, leave=False, ncols=size.columns, nrows=size.lines,
                    bar_format="{desc} {bar} {n:.0f} {unit} [{elapsed}<{remaining}]")
            if target is not None and bar.total != float(target) - float(initial):
                bar.total = float(target) - float(initial)
            bar.set_description_str(name or "", refresh=False)
            bar.n = float(current) - float(initial)
            bar.refresh()

    def clear(self) -> None:
        """Close the bars (the RunEngine has stopped waiting)."""
        with self._lock:
            self._closed = True
            bars, self._bars = list(self._bars.values()), {}
        for bar in bars:
            bar.close()


def progress_bars(file: IO[str] | None = None) -> ProgressBarManager:
    """A :class:`~bluesky.utils.ProgressBarManager` drawing :class:`TqdmProgressBar` on
    ``file`` (default stderr): set it as ``RE.waiting_hook``."""
    return ProgressBarManager(lambda status_objs: TqdmProgressBar(status_objs, file=file))
