"""A row of greyscale image figures, as Bokeh models, that shows a dict of images.

Every model a test or script needs has a ``name``: the image sources are
``{prefix}_{image}`` (e.g. ``adjust_shifted_sum``), found in the page with
``Bokeh.documents[0].get_model_by_name(name)``.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from bokeh.layouts import row
from bokeh.models import ColumnDataSource, LinearColorMapper, Range1d
from bokeh.palettes import Greys256
from bokeh.plotting import figure

__all__ = ["ImageRow", "TITLES"]

#: Titles of the images the app shows (the OverfocusUDF's names and the stored records').
TITLES = {"point": "point (bright field)", "selected": "selected (middle frame)",
          "shifted_sum": "shifted sum", "shifted_sum_normalised": "shifted sum",
          "sum": "sum (frames at the middle)"}


class ImageRow:
    """Figures for ``names``, side by side; :meth:`show` draws images into them.

    Images are shown as arrays are indexed: row 0 at the top. The grey scale of
    each runs from its 1st to its 99th percentile; NaN is white.
    """

    def __init__(self, prefix: str, names: Sequence[str], *, size: int = 250) -> None:
        self.prefix = prefix
        self.names = tuple(names)
        self.sources: dict[str, ColumnDataSource] = {}
        self.mappers: dict[str, LinearColorMapper] = {}
        self.figures = []
        for name in self.names:
            src = ColumnDataSource(data={"image": [np.zeros((1, 1), np.float32)], "dw": [1],
                                         "dh": [1]}, name=f"{prefix}_{name}")
            mapper = LinearColorMapper(palette=Greys256, nan_color="white", low=0, high=1)
            fig = figure(title=TITLES.get(name, name), width=size, height=size,
                         x_range=Range1d(0, 1), y_range=Range1d(0, 1), match_aspect=True,
                         toolbar_location=None, name=f"{prefix}_{name}_figure")
            fig.image(image="image", source=src, x=0, y=0, dw="dw", dh="dh",
                      color_mapper=mapper)
            fig.axis.visible = False
            fig.grid.visible = False
            self.sources[name], self.mappers[name] = src, mapper
            self.figures.append(fig)
        self.layout = row(*self.figures)

    def clear(self) -> None:
        """Blank every figure (another dataset's images must not stay under new details)."""
        blank = np.full((1, 1), np.nan, np.float32)
        for name in self.names:
            self.sources[name].data = {"image": [blank], "dw": [1], "dh": [1]}

    def show(self, images: Mapping[str, np.ndarray]) -> None:
        """Draw ``images`` (name -> 2D array); names not given keep their image.

        Call on the document's thread (a Bokeh server callback).
        """
        for fig, name in zip(self.figures, self.names):
            if name not in images:
                continue
            img = np.asarray(images[name], dtype=np.float32)
            h, w = img.shape
            finite = img[np.isfinite(img)]
            lo, hi = (np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0))
            if not hi > lo:
                hi = lo + 1.0
            self.mappers[name].update(low=float(lo), high=float(hi))
            if (fig.x_range.end, fig.y_range.end) != (w, h):
                fig.x_range.update(start=0, end=w)
                fig.y_range.update(start=0, end=h)
            # Bokeh draws row 0 at the bottom: flipped, row 0 is at the top
            self.sources[name].data = {"image": [np.ascontiguousarray(img[::-1])], "dw": [w],
                                       "dh": [h]}
