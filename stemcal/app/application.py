"""The browser app: what it holds (context, dataset, catalog, recorder) and its pages.

One :class:`StemcalApp` per process holds the LiberTEM context, the loaded
dataset with its reduced cache (shared by all pages: a second browser tab
does not read the data again), the catalog and, in an acquisition session,
the calibration recorder. Each page (a Bokeh document) gets its own tabs:
*Adjust* (:mod:`.adjust_tab`), *History* (:mod:`.history_tab`) and, with a
recorder, *Live run* (:mod:`.live_tab`). :meth:`StemcalApp.application` is
what a Bokeh server serves (:mod:`.server`), in a browser or a notebook cell.
"""
from __future__ import annotations

import dataclasses
import getpass
import threading
import warnings
from pathlib import Path
from typing import Any

from bokeh.application import Application
from bokeh.application.handlers.function import FunctionHandler
from bokeh.models import TabPanel, Tabs

from ..catalog import (UnavailableCatalog, calibration_history, open_catalog_or_unavailable,
                       record_images)
from ..catalog.standin import current_catalog
from ..record import CalibrationRecord
from .adjust_tab import AdjustTab
from .history_tab import HistoryTab
from .live_tab import LiveTab
from .projection import CacheProjector
from .services import Loaded
from .sources import Sizes, Source, initial_geometry, neutral_geometry, open_file, open_record

__all__ = ["StemcalApp", "Page"]


@dataclasses.dataclass
class Page:
    """The tabs of one browser page."""

    doc: Any
    adjust: AdjustTab
    history: HistoryTab
    live: LiveTab | None


class StemcalApp:
    """The interactive app.

    Parameters
    ----------
    catalog : client, path or str, optional
        A catalog client (:func:`stemcal.catalog.open_catalog`), or its location
        (directory or ``http(s)://`` URI; None: ``$STEMCAL_CATALOG``, else the default
        one), opened when first needed. Records are written there (or spooled).
    recorder : CalibrationRecorder, optional
        The acquisition session's recorder: the *Live run* tab follows its runs.
    operator : str, optional
        Who adjusts (the *adjusted by* of manual records); default the login name.
    ctx : libertem.api.Context, optional
        Runs the passes; default an inline context made here (closed by :meth:`close`).
    """

    def __init__(self, *, catalog: Any = None, recorder: Any = None,
                 operator: str | None = None, ctx: Any = None) -> None:
        if isinstance(catalog, (str, Path)) or catalog is None:
            self._catalog, self._location = None, catalog
        else:
            self._catalog, self._location = catalog, None
        self.recorder = recorder
        self.operator = operator if operator is not None else _login()
        self._ctx, self._own_ctx = ctx, ctx is None
        self.loaded: Loaded | None = None
        self.pages: list[Page] = []
        #: One raw pass or fit at a time in the whole app (they share the context and cores).
        self.job_lock = threading.Lock()
        self._catalog_lock = threading.RLock()
        self._pages_lock = threading.Lock()

    # -- data -------------------------------------------------------------------------------
    @property
    def ctx(self) -> Any:
        if self._ctx is None:
            from ..executors import InlineContext
            self._ctx = InlineContext()
        return self._ctx

    def open_file(self, path: str | Path, sizes: Sizes, *,
                  nav_shape: tuple[int, int] | None = None, progress: Any = False) -> Loaded:
        """Load a data file (one pass into the cache); pages opened later show it."""
        return self._load(open_file(self.ctx, path, sizes, nav_shape=nav_shape), progress)

    def load_record(self, record: CalibrationRecord, *, progress: Any = False) -> Loaded:
        """Load the frames a record was made from, at the record's values."""
        return self._load(open_record(self.ctx, record), progress)

    def _load(self, source: Source, progress: Any) -> Loaded:
        rough = source.start or neutral_geometry(source.sizes, source.sig_shape)
        projector = CacheProjector.from_dataset(self.ctx, source.dataset, rough, progress=progress)
        start = source.start or initial_geometry(source.sizes, projector.cache)
        self.loaded = Loaded(source=source, projector=projector, start=start, base=start)
        return dataclasses.replace(self.loaded)  # a page's own copy (its base changes)

    # -- the catalog ------------------------------------------------------------------------
    def catalog(self) -> Any:
        """The catalog client (opened on first use); an
        :class:`~stemcal.catalog.UnavailableCatalog` where it cannot be opened."""
        with self._catalog_lock:
            if self._catalog is None:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    self._catalog = open_catalog_or_unavailable(self._location)
            # a stand-in the session replaced once its catalog came back: that catalog
            self._catalog = current_catalog(self._catalog)
            return self._catalog

    def history(self, limit: int | None = 200) -> list[CalibrationRecord]:
        """The newest records of the catalog.

        Raises
        ------
        OSError
            The catalog cannot be opened (with the reason).
        """
        client = self.catalog()
        if isinstance(client, UnavailableCatalog):
            raise OSError(f"catalog {client._stemcal_location} unavailable: {client.reason}")
        with self._catalog_lock:
            return calibration_history(client, limit=limit)

    def record_images(self, uid: str) -> dict[str, Any]:
        """The images stored with record ``uid``."""
        with self._catalog_lock:
            return record_images(self.catalog(), uid)

    def records_changed(self) -> None:
        """A record was written: every page's history is read again."""
        with self._pages_lock:
            pages = list(self.pages)
        for page in pages:
            page.history.refresh_soon()

    # -- pages ------------------------------------------------------------------------------
    def build(self, doc: Any) -> Page:
        """Fill a Bokeh document with the app's tabs (the server calls this per page)."""
        adjust = AdjustTab(self, doc)
        panels = [TabPanel(child=adjust.layout, title="Adjust")]
        tabs = Tabs(name="tabs")

        def adjust_record(record: CalibrationRecord) -> None:
            tabs.active = 0
            adjust.open_record(record)

        history = HistoryTab(self, doc, on_adjust=adjust_record)
        panels.append(TabPanel(child=history.layout, title="History"))
        live = None
        if self.recorder is not None:
            live = LiveTab(self, doc, on_adjust=adjust_record)
            panels.append(TabPanel(child=live.layout, title="Live run"))
        tabs.tabs = panels
        doc.add_root(tabs)
        doc.title = "stemcal"
        page = Page(doc=doc, adjust=adjust, history=history, live=live)
        with self._pages_lock:
            self.pages.append(page)
        doc.on_session_destroyed(lambda context: self._forget(page))
        if self.loaded is not None:
            step = "record" if self.loaded.source.record is not None else "file"
            adjust.show_loaded(dataclasses.replace(self.loaded), step)
        history.refresh_soon()
        return page

    def _forget(self, page: Page) -> None:
        if page.live is not None:
            page.live.stop()
        with self._pages_lock:
            if page in self.pages:
                self.pages.remove(page)

    def application(self) -> Application:
        """The Bokeh application (one document per page)."""
        return Application(FunctionHandler(self.build))

    def close(self) -> None:
        """Close a context made here."""
        if self._own_ctx and self._ctx is not None:
            self._ctx.close()
            self._ctx = None


def _login() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name (e.g. a container's uid)
        return ""
