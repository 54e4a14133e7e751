"""Report figure of a calibration: the projected images and the fitted values."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np


def write_report(path: str | Path, images: dict[str, np.ndarray], summary: dict[str, Any], *,
                 frame_sum: np.ndarray | None = None, title: str = "stemcal calibration") -> Path:
    """Write a PNG with the four OverfocusUDF images and the fitted parameters.

    Parameters
    ----------
    path : path of the PNG to write (its directory must exist).
    images : dict with ``point``, ``selected``, ``shifted_sum_normalised`` (or
        ``shifted_sum``) and ``sum`` arrays, as returned by a full pass.
    summary : dict of fitted values (``scan_rotation``, ``flip_y``, ``overfocus``, ``cy``,
        ``cx``, ``blur``, ``quality``... as in ``FitResult.summary()``).
    frame_sum : optional detector frame sum, shown with the fitted beam centre.
    """
    import matplotlib
    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    path = Path(path)
    panels = [("point (bright field)", images.get("point")),
              ("selected (centre frame)", images.get("selected")),
              ("shifted sum (normalised)", images.get("shifted_sum_normalised",
                                                    images.get("shifted_sum"))),
              ("sum (as if at centre)", images.get("sum"))]
    if frame_sum is not None:
        panels.append(("detector frame sum", frame_sum))
    fig = Figure(figsize=(4 * (len(panels) + 1), 4.4), layout="constrained")
    axes = fig.subplots(1, len(panels) + 1)
    for ax, (name, img) in zip(axes, panels):
        ax.set_title(name)
        ax.set_axis_off()
        if img is None:
            continue
        img = np.asarray(img, dtype=float)
        finite = img[np.isfinite(img)]
        lo, hi = (np.percentile(finite, [1, 99]) if finite.size else (0, 1))
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        if name == "detector frame sum" and "cy" in summary:
            ax.plot([summary["cx"]], [summary["cy"]], "r+", ms=14)
    text = axes[-1]
    text.set_axis_off()
    lines = [title, ""]
    fmt = {"scan_rotation": ("scan rotation", "{:.3f} deg"), "flip_y": ("flip y", "{}"),
           "overfocus": ("overfocus", "{:.5g} m"), "cy": ("centre y", "{:.2f} px"),
           "cx": ("centre x", "{:.2f} px"), "blur": ("blur (Crete)", "{:.4f}"),
           "quality": ("quality", "{}"), "passes": ("raw passes", "{}"),
           "seconds": ("time", "{:.2f} s")}
    for key, (label, f) in fmt.items():
        if key in summary and summary[key] is not None:
            v = summary[key]
            if isinstance(v, float) and not math.isfinite(v):
                continue
            lines.append(f"{label}: {f.format(v)}")
    unc = summary.get("uncertainty") or {}
    if unc:
        lines.append("uncertainty: " + ", ".join(
            f"{k} {v:.3g}" for k, v in unc.items() if v is not None))
    descan = summary.get("descan")
    if descan:
        m = np.asarray(descan["matrix"])
        lines.append(f"descan [[{m[0, 0]:+.4f}, {m[0, 1]:+.4f}],")
        lines.append(f"        [{m[1, 0]:+.4f}, {m[1, 1]:+.4f}]] px/scan px")
    text.text(0.0, 1.0, "\n".join(lines), va="top", ha="left", family="monospace", fontsize=9,
              transform=text.transAxes)
    fig.savefig(path, dpi=90)
    return path
