"""The *History* tab: the catalog's calibration records, newest first, with their images.

Selecting a row shows the images stored with that record and its provenance;
*Adjust this record* opens its frames in the Adjust tab at its values.
Catalog reads run in a thread; the page stays responsive.

Model names: ``history_table`` (the table's source; columns ``uid``, ``time``,
``scan_rotation``, ``flip_y``, ``overfocus_nm``, ``cy``, ``cx``, ``quality``,
``method``), ``history_details``, ``history_status``, the buttons
``history_refresh`` and ``history_adjust``, and the image sources
``history_point``, ``history_selected``, ``history_shifted_sum_normalised``, ``history_sum``.
"""
from __future__ import annotations

import datetime
import html
from collections.abc import Callable
from typing import Any

import numpy as np
from bokeh.layouts import column, row
from bokeh.models import (Button, ColumnDataSource, DataTable, Div, NumberFormatter,
                          TableColumn)

from ..record import CalibrationRecord
from .background import one_line, on_document, run_then
from .figures import ImageRow
from .services import AppServices

__all__ = ["HistoryTab", "HISTORY_IMAGES"]

#: The images stored with a record (:data:`stemcal.callbacks.recorder.IMAGE_NAMES`).
HISTORY_IMAGES = ("point", "selected", "shifted_sum_normalised", "sum")

_COLUMNS = (("uid", "uid", None, 90), ("time", "time", None, 170),
            ("scan_rotation", "rotation (deg)", "0.000", 100), ("flip_y", "flip y", None, 60),
            ("overfocus_nm", "overfocus (nm)", "0.0", 110), ("cy", "cy (px)", "0.00", 70),
            ("cx", "cx (px)", "0.00", 70), ("quality", "quality", None, 160),
            ("method", "made by", None, 150))


class HistoryTab:
    """The History tab of one page; ``on_adjust(record)`` opens a record for adjusting."""

    def __init__(self, app: AppServices, doc: Any,
                 on_adjust: Callable[[CalibrationRecord], None]) -> None:
        self.app, self.doc, self._on_adjust = app, doc, on_adjust
        self.records: list[CalibrationRecord] = []
        self._showing: str | None = None   # uid of the record whose images are asked for
        self.table_source = ColumnDataSource(data={name: [] for name, *_ in _COLUMNS},
                                             name="history_table")
        columns = [TableColumn(field=name, title=title, width=width,
                               **({"formatter": NumberFormatter(format=fmt)} if fmt else {}))
                   for name, title, fmt, width in _COLUMNS]
        self.table = DataTable(source=self.table_source, columns=columns, width=980, height=260,
                               index_position=None, reorderable=False,
                               name="history_table_view")
        self.table_source.selected.on_change("indices", self._selected)
        self.images = ImageRow("history", HISTORY_IMAGES, size=220)
        self.details = Div(name="history_details", text="", width=980)
        self.status = Div(name="history_status", text="", render_as_text=True)
        self.refresh_button = Button(name="history_refresh", label="Refresh", width=100)
        self.adjust_button = Button(name="history_adjust", label="Adjust this record",
                                    disabled=True, width=160)
        self.refresh_button.on_click(self.refresh)
        self.adjust_button.on_click(self._adjust)
        self.layout = column(row(self.refresh_button, self.adjust_button, self.status),
                             self.table, self.details, self.images.layout)

    def refresh_soon(self) -> None:
        """Read the history again (from any thread)."""
        on_document(self.doc, self.refresh)

    def refresh(self) -> None:
        self.status.text = "reading the catalog ..."
        run_then(self.doc, self.app.history, self._show_records, self._failed,
                 name="stemcal-app-history")

    def _failed(self, exc: BaseException) -> None:
        self.status.text = f"cannot read the history: {one_line(exc)}"

    def _show_records(self, records: list[CalibrationRecord]) -> None:
        self.records = records
        rows = {name: [] for name, *_ in _COLUMNS}
        for r in records:
            settings = r.fit_settings
            who = settings.get("adjusted_by")
            method = str(settings.get("method", ""))
            rows["uid"].append(r.uid[:8])
            rows["time"].append(datetime.datetime.fromtimestamp(r.time).isoformat(" ", "seconds"))
            rows["scan_rotation"].append(r.scan_rotation)
            rows["flip_y"].append(str(r.flip_y))
            rows["overfocus_nm"].append(r.overfocus * 1e9)
            rows["cy"].append(r.cy)
            rows["cx"].append(r.cx)
            rows["quality"].append(r.quality)
            rows["method"].append(f"{method} ({who})" if who else method)
        self.table_source.selected.indices = []
        self.table_source.data = rows
        self.adjust_button.disabled = True
        self.status.text = f"{len(records)} record{'' if len(records) == 1 else 's'}"

    def _selected(self, attr: str, old: list[int], new: list[int]) -> None:
        if not new or new[0] >= len(self.records):
            self.adjust_button.disabled = True
            return
        record = self.records[new[0]]
        self.adjust_button.disabled = not (record.fit_settings.get("data") or {}).get("uri")
        self.details.text = _details(record)
        self.images.clear()   # the last record's images must not stay under these details
        self._showing = record.uid
        run_then(self.doc, lambda: self.app.record_images(record.uid),
                 lambda images: self._show_images(record.uid, images),
                 lambda exc: self._failed_images(record.uid, exc),
                 name="stemcal-app-record-images")

    def _show_images(self, uid: str, images: dict[str, Any]) -> None:
        if uid != self._showing:   # another record was selected while these were read
            return
        shown = {k: v for k, v in images.items() if k in HISTORY_IMAGES}
        if not shown:
            self.status.text = f"record {uid[:8]} holds no images"
            return
        if "shifted_sum_normalised" in shown:  # stored with 0 where nothing was projected
            img = np.array(shown["shifted_sum_normalised"], dtype=np.float32)
            img[img == 0] = np.nan
            shown["shifted_sum_normalised"] = img
        self.images.show(shown)

    def _failed_images(self, uid: str, exc: BaseException) -> None:
        if uid != self._showing:
            return
        self.status.text = (f"cannot read record {uid[:8]}'s images (their files may be gone "
                            f"or damaged): {one_line(exc)}")

    def _adjust(self) -> None:
        idx = self.table_source.selected.indices
        if idx and idx[0] < len(self.records):
            self._on_adjust(self.records[idx[0]])


def _details(r: CalibrationRecord) -> str:
    """A record's values and provenance as a line of HTML."""
    s = r.fit_settings
    parts = [f"<b>{html.escape(r.uid)}</b>", f"rotation {r.scan_rotation:.3f} deg",
             f"flip y {r.flip_y}", f"overfocus {r.overfocus * 1e9:.1f} nm", f"centre ({r.cy:.2f}, {r.cx:.2f}) px",
             f"blur {r.blur:.4f}", f"quality {html.escape(r.quality)}",
             f"made by {html.escape(str(s.get('method', '?')))}"]
    if s.get("adjusted_by"):
        parts.append(f"adjusted by {html.escape(str(s['adjusted_by']))}")
    if s.get("from_record"):
        parts.append(f"from record {html.escape(str(s['from_record'])[:8])}")
    if r.supersedes:
        parts.append(f"supersedes {html.escape(r.supersedes[:8])}")
    if r.acquisition_uid:
        parts.append(f"run {html.escape(r.acquisition_uid[:8])}")
    return ", ".join(parts)
