"""A session that finds its catalog again: what it makes goes there once it is back.

A session (the IPython profile) started while its catalog could not be opened holds a
stand-in (:class:`~stemcal.catalog.UnavailableCatalog`): every run and record is kept
in the spool and the detector writes its files into the spool's ``raw/``, for
``stemcal sync``. Before, that lasted until the session was started again.

The :class:`Reconnector` tries the catalog again in a thread of its own, one attempt
after the other (each bounded by tiled's own retries), every :data:`INTERVAL` seconds,
so that no plan ever waits for it. Once the catalog opens, the next plan starts by
switching over, between plans only, never inside one:

1. the detector's files go to the catalog's data directory (the one the session
   would have used had the catalog been there at its start);
2. the stand-in is told (:meth:`~stemcal.catalog.UnavailableCatalog.found`): the run
   keeper, the calibration recorder, the attach step and whoever else holds it (the
   profile's ``catalog``) write to and read from the catalog from then on;
3. what the spool keeps for it (this session's runs and records of the outage, and any
   another process kept for the same catalog) is delivered by
   :func:`~stemcal.catalog.sync` in another thread: runs before the records that name
   them, frames moved with their runs; entries kept for other catalogs are left alone.

Where the catalog fails again later, the run keeper keeps that run and the recorder
its record as before; each later plan then starts a delivery of what the spool keeps
for this catalog (runs before their records, whichever process kept them) in the
background, until the catalog takes it. :meth:`Reconnector.reconnect` switches at once
(``session.reconnect()``, bounded by ``$STEMCAL_CATALOG_TIMEOUT``).
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["INTERVAL", "Reconnector"]

#: Seconds between the end of one attempt to open the catalog and the next.
INTERVAL = 15.0


class Reconnector:
    """RunEngine preprocessor: switches a session from its stand-in to the catalog once
    that opens (module docstring).

    Parameters
    ----------
    stand_in : UnavailableCatalog
        The session's stand-in for its catalog.
    opener : callable ``() -> client``
        Opens the catalog (raises while it cannot).
    data_dir_for : callable ``client -> Path``
        The detector's data directory with that catalog (raises ``ValueError`` where it
        cannot be used from here: the switch is then not made, and said so).
    detector : device, optional
        Its ``writer`` and ``stream_writer`` get the new ``write_dir``.
    settle : callable, optional
        Called before the switch (which waits for another plan where it raises): the
        recorder finishes the fits of runs made before it, so that their records are
        kept with their runs and delivered with them (a record written to the catalog
        after the switch would name its frames in the spool, which the delivery moves).
    on_switch : callable ``(client, data_dir) -> None``, optional
        Told after the switch (the session updates its ``client`` and ``data_dir``).
    interval : float or None
        Seconds between attempts (default :data:`INTERVAL` when made); ``None``: no
        thread, only :meth:`reconnect`.
    """

    def __init__(self, stand_in: Any, opener: Callable[[], Any],
                 data_dir_for: Callable[[Any], Path], *, detector: Any = None,
                 settle: Callable[[], Any] | None = None,
                 on_switch: Callable[[Any, Path], None] | None = None,
                 interval: float | None | str = "default") -> None:
        self.stand_in = stand_in
        stand_in.watched = True   # readers wait for the switch (reads and writes move together)
        self.opener = opener
        self.data_dir_for = data_dir_for
        self.detector = detector
        self.settle = settle
        self.on_switch = on_switch
        self.interval = INTERVAL if interval == "default" else interval
        #: why the last attempt failed (None before the first or once switched)
        self.reason: str | None = None
        #: the :class:`~stemcal.catalog.SyncReport` of the last delivery
        self.report: Any = None
        self._lock = threading.Lock()
        self._ready: tuple[Any, Path] | None = None
        self._switched = False
        self._stop = threading.Event()
        self._attempt_lock = threading.Lock()
        self._delivery: threading.Thread | None = None
        #: uids kept in the spool for other catalogs (left to `stemcal sync`)
        self._not_ours: set[str] = set()
        if self.interval is not None:
            threading.Thread(target=self._probe_loop, daemon=True,
                             name="stemcal-catalog-reconnect").start()

    def __repr__(self) -> str:
        state = "switched" if self._switched else ("ready" if self._ready else "waiting")
        return f"{type(self).__name__}({self.stand_in!r}, {state})"

    @property
    def switched(self) -> bool:
        """Whether the session writes to the catalog again."""
        return self._switched

    def _attempt(self) -> bool:
        """One attempt to open the catalog and find its data directory; True once ready."""
        from .catalog.spool import failure_reason
        from .catalog.standin import UnavailableCatalog

        with self._attempt_lock:
            if self._ready is not None or self._switched:
                return True
            try:
                client = self.opener()
                if isinstance(client, UnavailableCatalog):   # the opener gave a stand-in
                    raise ConnectionError(client.reason)
                data = Path(self.data_dir_for(client))
            except Exception as exc:  # noqa: BLE001 - any failure: not back yet
                reason = failure_reason(exc)
                if isinstance(exc, ValueError) and reason != self.reason:
                    log.warning("the catalog opens again, but cannot be written from here: %s",
                                reason)
                self.reason = self.stand_in.reason = reason   # what kept files say from now
                return False
            with self._lock:
                self._ready = (client, data)
            log.info("the catalog %s answers again: the next plan writes to it",
                     _where(self.stand_in))
            return True

    def _probe_loop(self) -> None:
        while not self._stop.is_set():
            if self._attempt():
                return
            self._stop.wait(self.interval)

    def _switch(self) -> bool:
        """Switch over if the catalog is ready (between plans only); True once switched."""
        with self._lock:
            if self._switched:
                return True
            if self._ready is None:
                return False
            client, data = self._ready
            if self.settle is not None:
                try:
                    self.settle()
                except Exception as exc:  # noqa: BLE001 - a fit still running: next plan
                    self.reason = "the catalog answers, but fits of earlier runs still run"
                    log.warning("the catalog answers again, but fits of earlier runs still "
                                "run (%s): the switch waits for the next plan",
                                type(exc).__name__)
                    return False
            for writer in (getattr(self.detector, "writer", None),
                           getattr(self.detector, "stream_writer", None)):
                if writer is not None and hasattr(writer, "write_dir"):
                    writer.write_dir = data
            self.stand_in.found(client)
            self._switched, self.reason = True, None
            if self.on_switch is not None:
                self.on_switch(client, data)
            kept = self._kept()
            self._start_delivery(client, kept)
        log.warning("catalog %s is back: runs and records go there again (%d kept meanwhile "
                    "being delivered)", _where(self.stand_in), len(kept))
        return True

    def _kept(self) -> list[str]:
        """uids of what the spool keeps (run journals, then records), less those found to
        be kept for other catalogs: :meth:`_deliver` takes only this catalog's."""
        from .catalog.journal import journal_dir
        from .catalog.spool import spool_dir

        d = spool_dir()
        uids = ([p.stem for p in journal_dir(d).glob("*.jsonl")]
                + [p.stem for p in d.glob("*.npz")]) if d.is_dir() else []
        return [u for u in uids if u not in self._not_ours]

    def _start_delivery(self, client: Any, uids: list[str]) -> None:
        if not uids:
            return
        self._delivery = threading.Thread(target=self._deliver, args=(client, uids),
                                          daemon=True, name="stemcal-catalog-deliver")
        self._delivery.start()

    def _deliver(self, client: Any, kept: list[str]) -> None:
        from .catalog.delivery import Catalogs, sync
        from .catalog.spool import redact_location

        where = _where(self.stand_in)
        ours = {where, redact_location(where)} if where is not None else set()

        def not_ours(loc: str) -> Any:
            raise LookupError(f"kept for another catalog ({loc}): `stemcal sync` delivers it")

        catalogs = Catalogs(not_ours)
        for loc in ours:
            catalogs.clients[loc] = client
        try:
            self.report = report = sync(only=kept, catalogs=catalogs)
        except Exception:  # noqa: BLE001 - all stays kept for `stemcal sync`
            log.warning("delivering what was kept for %s failed; `stemcal sync` delivers it",
                        where, exc_info=True)
            return
        left = report.pending + report.runs_pending
        self._not_ours.update(u for u, loc, _ in left if loc not in ours)
        mine = [u for u, loc, _ in left if loc in ours]
        if mine or report.damaged:
            log.warning("%d of what was kept for %s could not be delivered yet; the next "
                        "plan (or `stemcal sync`) tries again", len(mine), where)

    def reconnect(self, timeout: float | None = None) -> bool:
        """Try the catalog now and switch over if it opens; True once switched (what was
        kept is then delivered in the background: :meth:`wait`). Call it between plans.
        ``timeout``: seconds to wait for the catalog's answer (default
        ``$STEMCAL_CATALOG_TIMEOUT``, 20 s); the attempt goes on in the background past it."""
        if self._switched:
            return True
        from .catalog.delivery import answer_within, open_timeout

        limit = open_timeout() if timeout is None else timeout
        try:
            ready = answer_within(self._attempt, limit, name="stemcal-catalog-reconnect-now",
                                  setting=" ($STEMCAL_CATALOG_TIMEOUT)")
        except TimeoutError as exc:
            self.reason = f"TimeoutError: {exc}"
            return False
        return ready and self._switch()

    def deliver_kept(self) -> None:
        """After the switch, start delivering what the spool keeps for this catalog (the
        catalog failed again since), unless a delivery runs already."""
        if self._switched and not (self._delivery and self._delivery.is_alive()):
            self._start_delivery(self.stand_in.replaced_by, self._kept())

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the delivery under way; True when it ended (or none runs)."""
        thread = self._delivery
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()

    def close(self, timeout: float = 60.0) -> None:
        """No more attempts; wait up to ``timeout`` s for a delivery under way, and say so
        where it is cut off (what it has not delivered stays kept for ``stemcal sync``)."""
        self._stop.set()
        if not self.wait(timeout):
            log.warning("the delivery of what was kept for %s is still running after %g s; "
                        "what it has not delivered when this process ends stays kept: run "
                        "`stemcal sync`", _where(self.stand_in), timeout)

    def __call__(self, plan: Generator) -> Generator:
        def switched_first() -> Generator:
            if self._switch():
                self.deliver_kept()   # the catalog failed again since the switch
            return (yield from plan)

        return switched_first()


def _where(stand_in: Any) -> str | None:
    from .catalog.store import catalog_location_of

    return catalog_location_of(stand_in)
