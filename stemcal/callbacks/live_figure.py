"""A matplotlib figure of the live OverfocusUDF images: point, selected, shifted sum, sum.

:class:`LiveFigure` shows the four images of a scan being taken.
Its title says which run it shows, what the images are projected with (the
guess until the fit is in, then the fit) and how many frames are done, with the
blur metric. With an interactive
matplotlib backend (a display) it is a pyplot window redrawn in place; with
none (``Agg``, no ``DISPLAY``) it is an off-screen figure that can be saved
as PNG. Like every GUI object it must be used from one thread: the
RunEngine's, where Bluesky callbacks run.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["LiveFigure", "PANELS", "has_display"]

log = logging.getLogger(__name__)

#: (image name, panel title) in the order shown.
PANELS = (("point", "point (bright field)"), ("selected", "selected (centre frame)"),
          ("shifted_sum_normalised", "shifted sum (normalised)"),
          ("sum", "sum (as if at centre)"))

_NON_INTERACTIVE = {"agg", "pdf", "ps", "svg", "pgf", "cairo", "template",
                    "module://matplotlib_inline.backend_inline"}


def has_display() -> bool:
    """Whether pyplot windows can be shown: a display and an interactive backend.

    The display is looked at first: without one, matplotlib's backend is not resolved
    (that imports pyplot, 0.3 s)."""
    if os.name == "posix" and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    import matplotlib

    backend = str(matplotlib.get_backend()).lower()
    return backend not in _NON_INTERACTIVE


def _limits(img: np.ndarray) -> tuple[float, float]:
    finite = img[np.isfinite(img)]
    if not finite.size:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(finite, [1, 99]))
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


class LiveFigure:
    """The four live images in one figure, on screen or off.

    Parameters
    ----------
    title : str
        First line of the figure title (e.g. the run it shows).
    on_screen : bool, optional
        Show a pyplot window; default :func:`has_display`.
    """

    def __init__(self, title: str, *, on_screen: bool | None = None) -> None:
        self.title = title
        self.on_screen = has_display() if on_screen is None else bool(on_screen)
        if self.on_screen:
            import matplotlib.pyplot as plt

            self.figure = plt.figure(figsize=(16, 4.6), layout="constrained")
            plt.show(block=False)
        else:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure

            self.figure = Figure(figsize=(16, 4.6), layout="constrained")
            FigureCanvasAgg(self.figure)
        self.axes = self.figure.subplots(1, len(PANELS))
        self._artists: dict[str, Any] = {}
        for ax, (name, label) in zip(self.axes, PANELS):
            ax.set_title(label)
            ax.set_axis_off()
        self.updates = 0
        self.summary = ""
        self.geometry = ""

    def update(self, images: dict[str, np.ndarray], frames_done: int, frames_total: int,
               blur: float | None = None, geometry: str = "") -> None:
        """Show ``images`` (as from :meth:`LiveProjection.images`) and the progress;
        ``geometry`` says what they are projected with (a line of the title)."""
        for ax, (name, _) in zip(self.axes, PANELS):
            img = images.get(name)
            if img is None:
                continue
            img = np.asarray(img, dtype=float)
            artist = self._artists.get(name)
            if artist is None or artist.get_array().shape != img.shape:
                self._artists[name] = artist = ax.imshow(img, cmap="gray", origin="upper",
                                                         interpolation="nearest")
            else:
                artist.set_data(img)
            artist.set_clim(*_limits(img))
        blur_text = "" if blur is None or not np.isfinite(blur) else f", blur {blur:.4f}"
        self.summary = f"{frames_done}/{frames_total} frames{blur_text}"
        self.geometry = geometry
        lines = [self.title, geometry, self.summary] if geometry else [self.title, self.summary]
        self.figure.suptitle("\n".join(lines))
        self.updates += 1
        if self.on_screen:
            self.figure.canvas.draw_idle()
            self.figure.canvas.flush_events()

    def save(self, path: str | Path) -> Path:
        """Write the figure as PNG (atomically: a temporary file renamed into place)."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            self.figure.savefig(tmp, format="png", dpi=80)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    def close(self) -> None:
        """Close the window (on screen); an off-screen figure is just dropped."""
        if self.on_screen:
            import matplotlib.pyplot as plt

            plt.close(self.figure)
