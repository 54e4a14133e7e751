"""The report figure of a calibration: before and after, the detector, the values in words.

One figure per calibration, readable without its maker beside it:

* the shifted sum projected with the *guess* (what the run started from)
  beside the shifted sum projected with the *fit*: blurred before, sharp after;
* the sum of all frames as if taken at the scan middle, and the frame of the
  scan middle projected into the specimen plane;
* the detector's mean frame with the fitted disk (circle) and beam centre (cross);
* every image with a colour bar, the specimen-plane images with a scale bar in nm;
* the fitted values with units and 1-sigma uncertainties, and the quality in words.

The figure is drawn off screen (matplotlib's Agg canvas): no display needed.
"""
from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .twin.params import OverfocusParams

__all__ = ["write_report", "report_figure", "quality_words", "value_lines", "scale_bar_length"]


def scale_bar_length(width_nm: float) -> float:
    """A round scale bar length (1, 2 or 5 times a power of ten) near a fifth of ``width_nm``."""
    target = max(width_nm / 5, 1e-12)
    power = 10 ** math.floor(math.log10(target))
    return max((m * power for m in (1, 2, 5) if m * power <= target), default=power)


def quality_words(quality: str | None) -> str:
    """A record's ``quality`` for people: trusted or not, and why."""
    if quality == "ok":
        return ("trusted: the optimum lies inside the search box and both uncertainties "
                "are within their limits")
    return f"NOT trusted: {quality or 'not assessed'}"


def _pm(value: float | None, unc: float | None, fmt: str, scale: float = 1.0) -> str:
    text = format(value * scale, fmt)
    if unc is not None and math.isfinite(unc):
        text += " ± " + format(unc * scale, fmt)
    return text


def value_lines(summary: Mapping[str, Any]) -> list[str]:
    """The fitted values with units and uncertainties, one per line.

    ``summary``: ``scan_rotation`` (deg), ``flip_y``, ``overfocus`` (m), ``cy``,
    ``cx`` (px), optional ``uncertainty`` (``scan_rotation`` deg, ``overfocus``
    m), ``descan`` (``{"matrix": 2x2}`` or 2x2, px per scan px), ``semiconv``
    (rad), ``blur``, ``passes``, ``seconds``, ``uid``, ``acquisition_uid``.
    """
    unc = summary.get("uncertainty") or {}
    lines = [f"scan rotation  {_pm(summary['scan_rotation'], unc.get('scan_rotation'), '.3f')} deg",
             f"flip y         {'yes' if summary['flip_y'] else 'no'}",
             f"overfocus      {_pm(summary['overfocus'], unc.get('overfocus'), '.2f', 1e9)} nm",
             f"beam centre    y {summary['cy']:.2f} px, x {summary['cx']:.2f} px"]
    descan = summary.get("descan")
    if descan is not None:
        m = np.asarray(descan["matrix"] if isinstance(descan, Mapping) else descan, dtype=float)
        lines.append(f"descan         [[{m[0, 0]:+.4f}, {m[0, 1]:+.4f}],")
        lines.append(f"                [{m[1, 0]:+.4f}, {m[1, 1]:+.4f}]] px per scan px")
    if summary.get("semiconv") is not None:
        lines.append(f"semi-angle     {1e3 * summary['semiconv']:.2f} mrad")
    blur = summary.get("blur")
    if blur is not None and math.isfinite(blur):
        lines.append(f"blur           {blur:.4f} (Crete: 0 sharp, 1 blurred)")
    if summary.get("passes") is not None and summary.get("seconds") is not None:
        lines.append(f"work           {summary['passes']} passes over the data, "
                     f"{summary['seconds']:.1f} s")
    for key, label in (("uid", "record"), ("acquisition_uid", "acquisition")):
        if summary.get(key):
            lines.append(f"{label:<15}{summary[key]}")
    return lines


def _guess_words(guess: OverfocusParams) -> str:
    return (f"rotation {guess.scan_rotation:.1f} deg, {'flip' if guess.flip_y else 'no flip'}, "
            f"overfocus {guess.overfocus * 1e9:.0f} nm")


def _show(fig: Any, ax: Any, img: np.ndarray | None, title: str, label: str,
          nm_per_px: float | None = None) -> Any:
    """One image with its colour bar (and a scale bar in nm); None: an empty panel."""
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    if img is None:
        ax.text(0.5, 0.5, "not available", ha="center", va="center", transform=ax.transAxes)
        return None
    img = np.asarray(img, dtype=float)
    finite = img[np.isfinite(img)]
    lo, hi = (np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0))
    if not hi > lo:
        hi = lo + 1.0
    artist = ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
    fig.colorbar(artist, ax=ax, shrink=0.85, label=label)
    if nm_per_px is not None and nm_per_px > 0:
        from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

        length = scale_bar_length(img.shape[1] * nm_per_px)
        ax.add_artist(AnchoredSizeBar(ax.transData, length / nm_per_px, f"{length:g} nm",
                                      "lower right", pad=0.4, color="yellow", frameon=False,
                                      size_vertical=max(1.0, img.shape[0] / 80)))
    return artist


def write_report(path: str | Path, images: Mapping[str, np.ndarray], summary: Mapping[str, Any],
                 **kwargs: Any) -> Path:
    """Write the report figure of one calibration (:func:`report_figure`) to ``path``.

    ``path``'s directory must exist; its suffix picks the type (PNG, PDF, SVG...).
    """
    path = Path(path)
    report_figure(images, summary, **kwargs).savefig(
        path, dpi=90, format=path.suffix.lstrip(".").lower() or "png")
    return path


def report_figure(images: Mapping[str, np.ndarray], summary: Mapping[str, Any], *,
                  params: OverfocusParams | None = None, before: np.ndarray | None = None,
                  guess: OverfocusParams | None = None, frame_sum: np.ndarray | None = None,
                  title: str = "stemcal calibration", quality_text: str | None = None) -> Any:
    """The report figure of one calibration (a matplotlib ``Figure`` on an Agg canvas).

    Parameters
    ----------
    images : the fit's images: ``shifted_sum_normalised`` (or ``shifted_sum``), ``sum``,
        ``selected`` (OverfocusUDF's, projected with the fitted geometry).
    summary : the fitted values (see :func:`value_lines`) and ``quality``.
    params : the fitted geometry: its scan pixel size gives the scale bars (the images
        sample the specimen plane at one scan pixel), its disk radius and centre the
        circle and cross on the detector.
    before : the normalised shifted sum projected with ``guess`` (the "before" panel).
    guess : the geometry ``before`` was projected with (named in its title).
    frame_sum : the detector's sum of all frames (shown as the mean frame's shape).
    title : first line of the figure's title.
    quality_text : what to say instead of :func:`quality_words` of ``summary['quality']``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Circle

    nm = params.scan_pixel_size * 1e9 if params is not None else None
    fig = Figure(figsize=(15, 9.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 3)
    after = images.get("shifted_sum_normalised", images.get("shifted_sum"))
    guess_title = ("shifted sum, projected with the guess"
                   + (f"\n({_guess_words(guess)})" if guess is not None else ""))
    _show(fig, axes[0, 0], before, guess_title, "mean counts / px", nm)
    fit_title = "shifted sum, projected with the fit"
    if params is not None:
        fit_title += f"\n({_guess_words(params)})"
    _show(fig, axes[0, 1], after, fit_title, "mean counts / px", nm)
    _show(fig, axes[1, 0], images.get("sum"), "sum of all frames\n(as if at the scan middle)",
          "counts", nm)
    _show(fig, axes[1, 1], images.get("selected"),
          "the frame at the scan middle\n(projected with the fit)", "counts", nm)
    det = _show(fig, axes[0, 2], frame_sum, "detector: sum of all frames\n"
                "fitted disk (circle) and beam centre (cross)", "counts", None)
    if det is not None and params is not None:
        ax = axes[0, 2]
        ax.add_patch(Circle((params.cx, params.cy), params.disk_radius_px, fill=False,
                            color="red", lw=1.2))
        ax.plot([params.cx], [params.cy], "r+", ms=14, mew=1.5)
        ax.set_xlim(-0.5, frame_sum.shape[1] - 0.5)
        ax.set_ylim(frame_sum.shape[0] - 0.5, -0.5)
    text = axes[1, 2]
    text.set_axis_off()
    if quality_text is None:
        quality_text = quality_words(summary.get("quality"))
    quality = textwrap.fill(quality_text, 46,
                            subsequent_indent=" " * 15)
    lines = value_lines(summary) + ["", "quality        " + quality.lstrip()]
    text.text(0.0, 1.0, "\n".join(lines), va="top", ha="left", family="monospace", fontsize=9,
              transform=text.transAxes)
    fig.suptitle(title, fontsize=13)
    return fig
