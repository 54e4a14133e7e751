"""The stand-in for a catalog that could not be opened, and the catalog that replaced it.

:func:`~stemcal.catalog.delivery.open_catalog_or_unavailable` gives an
:class:`UnavailableCatalog` where the catalog cannot be opened: what is written
through it is kept (spool, run journals). A session that finds the catalog
again (:mod:`stemcal.reconnect`) tells the stand-in (:meth:`UnavailableCatalog.found`);
from then on whoever holds it reaches the catalog (:func:`current_catalog`).
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["UnavailableCatalog", "CatalogUnavailableError", "current_catalog"]


class UnavailableCatalog:
    """Stands in for a catalog that could not be opened; records and runs for it are kept.

    Made by :func:`~stemcal.catalog.delivery.open_catalog_or_unavailable`;
    :func:`~stemcal.catalog.delivery.write_record_or_spool`
    spools every record given with it and :class:`~stemcal.catalog.journal.RunKeeper`
    keeps every run. ``refused``: the catalog refused the API key (a wrong or
    missing key, not an outage).
    """

    specs: tuple = ()
    #: Whether keeping is this stand-in's normal course (logged at INFO, not WARNING).
    expected: bool = False
    #: The catalog's client once it came back (:meth:`found`; a session that reconnects):
    #: what holds the stand-in then reaches the catalog (:func:`current_catalog`).
    replaced_by: Any = None
    #: Whether a session's :class:`~stemcal.reconnect.Reconnector` tries the catalog again:
    #: readers (the attach step) then wait for its switch instead of opening it themselves.
    watched: bool = False

    def __init__(self, location: str | Path | None, reason: str, refused: bool = False) -> None:
        self._stemcal_location = None if location is None else str(location)
        self.reason = reason
        self.refused = refused
        #: uids of the runs and records kept for this catalog, in order (:meth:`keep`)
        self.kept: list[str] = []

    def __repr__(self) -> str:
        back = ", back" if self.replaced_by is not None else ""
        return f"{type(self).__name__}({self._stemcal_location!r}, {self.reason!r}{back})"

    def keep(self, uid: str) -> None:
        """Called once the run or record ``uid`` for this catalog is kept (its journal
        closed, its spool file written); here it waits for ``stemcal sync`` (or for the
        session to find the catalog again, :class:`stemcal.reconnect.Reconnector`)."""
        self.kept.append(uid)

    def found(self, client: Any) -> None:
        """The catalog is back as ``client``: from now on writes given this stand-in go
        there (:func:`current_catalog`), and so do a catalog's attributes asked of it."""
        self.replaced_by = client

    def _catalog(self) -> Any:
        if self.replaced_by is not None:
            return self.replaced_by
        raise CatalogUnavailableError(
            f"catalog {self._stemcal_location} could not be opened ({self.reason}); what is "
            "made meanwhile is kept for `stemcal sync`. A session tries it again at each plan "
            "and writes to it once it is back (session.reconnect() tries at once)")

    def __getattr__(self, name: str) -> Any:
        # a catalog's own attribute (search, values, ...) asked of the stand-in: the
        # catalog's, once it is back; else say why there is no catalog, not
        # "'UnavailableCatalog' object has no attribute 'search'"
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._catalog(), name)

    # what a person does with a catalog (catalog[-1], len(catalog), uid in catalog)
    def __getitem__(self, key: Any) -> Any:
        return self._catalog()[key]

    def __len__(self) -> int:
        return len(self._catalog())

    def __iter__(self) -> Iterator[Any]:
        return iter(self._catalog())

    def __contains__(self, key: Any) -> bool:
        return key in self._catalog()

    def __bool__(self) -> bool:   # a stand-in is there, whether or not its catalog is
        return True


def current_catalog(client: Any) -> Any:
    """``client``, or the catalog a stand-in was replaced by once it came back
    (:meth:`UnavailableCatalog.found`)."""
    if isinstance(client, UnavailableCatalog) and client.replaced_by is not None:
        return client.replaced_by
    return client


class CatalogUnavailableError(AttributeError):
    """A catalog's attribute asked of an :class:`UnavailableCatalog` (an ``AttributeError``,
    so ``getattr(client, name, default)`` still gives the default)."""
