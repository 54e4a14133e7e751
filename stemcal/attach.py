"""Attach the calibration in force to every run: a RunEngine preprocessor.

At each ``open_run`` of any plan, :class:`AttachCalibration` reads the optics
(and scan generator) through the RunEngine, looks up the newest valid
calibration for that state in the catalog
(:func:`stemcal.catalog.latest_calibration`) and adds to the run's start
document:

``calibration``
    ``None``, or the calibration (plain JSON types): ``uid``, ``time`` (when
    it was recorded, seconds since the epoch), ``scan_rotation`` (deg,
    LiberTEM's convention), ``flip_y``, ``overfocus`` (m), ``cy``, ``cx``
    (detector px, at the scan middle), ``descan`` (2x2, detector px per scan
    px; rows detector (y, x), columns scan (y, x)) and ``optics_state`` (the
    state it was recorded at).
``calibration_status``
    ``status``: ``"ok"``, ``"none"`` (no valid calibration in the catalog),
    ``"stale"`` (the newest valid one was recorded at other optics: ``changed``
    lists the keys), ``"catalog unavailable"`` or ``"optics unavailable"``;
    ``reason`` (one line), ``changed``, ``newest`` (uid of the newest valid
    calibration or None), ``optics_state`` (the state now) and ``tolerances``.

Usage (the IPython profile does this)::

    RE.preprocessors.append(attach_calibration(catalog, optics, scan))

or per plan: ``RE(attach_calibration_wrapper(bp.count([det]), catalog, optics, scan))``
or ``@attach_calibration_decorator(catalog, optics, scan)``.

Only ``open_run`` messages are touched; every other message passes unchanged
and without I/O. A plan that puts ``calibration`` into its own metadata keeps
it (nothing is looked up for that run). Failures to read the devices or reach
the catalog never stop a run unless ``require=True``; then
:class:`CalibrationRequiredError` is raised into the plan at ``open_run`` (the
run does not start; the plan's own cleanup runs), naming the plan to run.

Why read through the RunEngine: the optics are read with ``Msg('read', ...)``
just before ``open_run`` (outside any run, so nothing is recorded), which
works for synchronous ophyd and asynchronous (ophyd-async) devices alike and
keeps device access in the RunEngine's hands. The catalog lookup runs in a
worker thread that the run waits for at most ``timeout`` seconds (an embedded
catalog answers in milliseconds; an unreachable tiled server would otherwise
hold every run for the client's half-minute of retries).
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from bluesky.preprocessors import plan_mutator
from bluesky.utils import Msg, MsgGenerator, make_decorator

from .record import CalibrationRecord, jsonable
from .runs import CALIBRATION_KEY, DEFAULT_TOLERANCES, STATUS_KEY, optics_state

log = logging.getLogger(__name__)

__all__ = ["AttachCalibration", "CalibrationRequiredError", "attach_calibration",
           "attach_calibration_wrapper", "attach_calibration_decorator", "calibration_summary",
           "lookup_calibration", "carried_calibration", "CALIBRATION_KEY", "STATUS_KEY",
           "CALIBRATE_PLAN"]

#: The plan an error tells the user to run.
CALIBRATE_PLAN = "calibrate"
#: Fields of the record copied into the start document.
SUMMARY_FIELDS = ("uid", "time", "scan_rotation", "flip_y", "overfocus", "cy", "cx", "descan",
                  "optics_state")


class CalibrationRequiredError(RuntimeError):
    """A run needs a calibration (``require=True``) and none holds for the optics now."""


def calibration_summary(record: CalibrationRecord) -> dict[str, Any]:
    """What a run's start document carries of ``record`` (:data:`SUMMARY_FIELDS`), plain JSON."""
    d = record.to_dict()
    return {k: d[k] for k in SUMMARY_FIELDS}


def _fmt(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def lookup_calibration(client: Any, state: Mapping[str, Any], tolerances: Mapping[str, float]
                       ) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """(calibration summary or None, status) for the optics ``state`` (see the module docstring).

    Parameters
    ----------
    client : CatalogOfBlueskyRuns
    state : dict
        :func:`stemcal.runs.optics_state` of the devices now.
    tolerances : dict of str to float
        Absolute tolerance per state key (:func:`stemcal.catalog.staleness`).

    Raises
    ------
    Exception
        Whatever the catalog raises (the caller decides what that means).
    """
    from .catalog import calibration_history, latest_calibration, staleness

    status: dict[str, Any] = {"status": "ok", "reason": "", "changed": [], "newest": None,
                              "optics_state": jsonable(dict(state)),
                              "tolerances": jsonable(dict(tolerances))}
    record = latest_calibration(client, state, tolerances)
    if record is not None:
        status.update(reason=f"calibration {record.uid} holds for the optics now",
                      newest=record.uid)
        return calibration_summary(record), status
    newest = calibration_history(client, limit=1, valid_only=True)
    if not newest:
        status.update(status="none", reason="no valid calibration in the catalog")
        return None, status
    rec = newest[0]
    changed = staleness(rec, state, tolerances)
    status["newest"] = rec.uid
    if changed:
        diffs = ", ".join(f"{k} {_fmt(rec.optics_state.get(k))} -> {_fmt(state.get(k))}"
                          for k in changed)
        status.update(status="stale", changed=changed,
                      reason=f"the newest calibration {rec.uid} was recorded at other optics: "
                             f"{diffs}")
    else:  # the newest valid one matches but is superseded (by an untrusted correction)
        status.update(status="none", reason=f"the newest valid calibration {rec.uid} is "
                                            f"superseded and no other holds for the optics now")
    return None, status


def _values(device: Any, reading: Mapping[str, Any]) -> dict[str, Any]:
    """Component attribute name -> value of a device's ``read()`` result."""
    out: dict[str, Any] = {}
    for attr in getattr(device, "component_names", ()):
        sig = getattr(device, attr, None)
        name = getattr(sig, "name", None)
        if name in reading:
            out[attr] = reading[name]["value"]
    prefix = f"{getattr(device, 'name', '')}_"
    for key, r in reading.items():  # devices without ophyd components
        if key.startswith(prefix) and key[len(prefix):] not in out:
            out[key[len(prefix):]] = r["value"]
    return out


class AttachCalibration:
    """RunEngine preprocessor adding the calibration in force to every start document.

    Parameters
    ----------
    catalog : CatalogOfBlueskyRuns, str or Path
        A catalog client, or where to open one (:func:`stemcal.catalog.open_catalog`;
        opened at the first run and kept, retried while it fails).
    optics : MicroscopeOptics
        Read at each ``open_run`` (``overfocus``, ``camera_length``,
        ``high_tension``, ``magnification``).
    scan : ScanGenerator or None
        Read too (``rotation``, ``pixel_size``). None: only the optics keys of
        ``tolerances`` are compared.
    tolerances : dict of str to float, optional
        Absolute tolerance per :func:`stemcal.runs.optics_state` key; default
        :data:`stemcal.runs.DEFAULT_TOLERANCES`.
    require : bool
        Refuse to start a run without a calibration that holds
        (:class:`CalibrationRequiredError`, naming the plan ``calibrate``).
    timeout : float
        Seconds to wait for the catalog at each ``open_run``; longer counts as
        "catalog unavailable".

    Attributes ``tolerances``, ``require``, ``timeout`` and ``enabled`` may be
    changed between runs.
    """

    def __init__(self, catalog: Any, optics: Any, scan: Any = None, *,
                 tolerances: Mapping[str, float] | None = None, require: bool = False,
                 timeout: float = 10.0):
        from .catalog import check_tolerances

        if optics is None:
            raise ValueError("attach_calibration needs the optics device")
        tol = dict(DEFAULT_TOLERANCES if tolerances is None else tolerances)
        check_tolerances(tol)
        if scan is None:
            tol = {k: v for k, v in tol.items() if not k.startswith("scan_")}
        self.catalog = catalog
        self.optics = optics
        self.scan = scan
        self.tolerances = tol
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")
        self.require = bool(require)
        self.timeout = float(timeout)
        self.enabled = True
        self._client = None if isinstance(catalog, (str, Path)) else catalog

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(optics={getattr(self.optics, 'name', self.optics)!r}, "
                f"scan={getattr(self.scan, 'name', self.scan)!r}, require={self.require}, "
                f"enabled={self.enabled})")

    def client(self) -> Any:
        """The catalog client, opened on first use when a location was given; where it is
        the stand-in of a catalog that could not be opened (a session started while its
        server was down), the catalog the session found again
        (:class:`stemcal.reconnect.Reconnector`, which watches the stand-in: runs read the
        catalog from its switch on, as they write to it), else, where no session watches
        it, opened again from the stand-in's location at each run until it opens (for
        reading only)."""
        from .catalog import UnavailableCatalog, catalog_location_of, open_catalog
        from .catalog.standin import current_catalog

        if self._client is None:
            self._client = open_catalog(self.catalog)
        self._client = current_catalog(self._client)
        if (isinstance(self._client, UnavailableCatalog)
                and not (self._client.expected or self._client.watched)):
            location = catalog_location_of(self._client)
            if location is not None:
                try:
                    self._client = open_catalog(location)
                except Exception as exc:  # noqa: BLE001 - still unavailable: said below
                    log.debug("catalog %s still unavailable: %s", location, exc)
        return self._client

    def _metadata(self, readings: dict[str, Any] | None,
                  problem: str | None) -> tuple[dict[str, Any] | None, dict[str, Any]]:
        if readings is None:
            return None, {"status": "optics unavailable", "reason": problem, "changed": [],
                          "newest": None, "optics_state": None,
                          "tolerances": jsonable(self.tolerances)}
        state = optics_state(readings["optics"], readings.get("scan", {}))
        try:
            return self._lookup(state)
        except Exception as exc:  # any failure of the catalog: the run goes on without
            reason = " ".join(f"{type(exc).__name__}: {exc}".split())
            log.warning("calibration not attached, catalog unavailable: %s", reason)
            return None, {"status": "catalog unavailable", "reason": reason, "changed": [],
                          "newest": None, "optics_state": jsonable(state),
                          "tolerances": jsonable(self.tolerances)}

    def _lookup(self, state: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any]]:
        """:func:`lookup_calibration` in a daemon thread, waiting at most ``timeout`` s.

        A tiled client retries an unreachable server for about half a minute;
        the run should not wait that long. A lookup that overruns is left to
        finish (or fail) in the background.
        """
        from .catalog.delivery import answer_within

        return answer_within(lambda: lookup_calibration(self.client(), state, self.tolerances),
                             self.timeout, name="stemcal-calibration-lookup")

    def _insert(self, msg: Msg) -> MsgGenerator[Any]:
        readings: dict[str, Any] | None = {}
        problem = None
        try:
            readings["optics"] = _values(self.optics, (yield Msg("read", self.optics, run=msg.run)))
            if self.scan is not None:
                readings["scan"] = _values(self.scan, (yield Msg("read", self.scan, run=msg.run)))
        except Exception as exc:  # a device that cannot be read: say so in the run
            problem = " ".join(f"{type(exc).__name__}: {exc}".split())
            log.warning("calibration not attached, optics unreadable: %s", problem)
            readings = None
        calibration, status = self._metadata(readings, problem)
        if calibration is None and self.require:
            raise CalibrationRequiredError(
                f"this run requires a calibration and none holds for the optics now "
                f"({status['status']}: {status['reason']}); run the plan "
                f"`{CALIBRATE_PLAN}` first (e.g. RE(calibrate_here()) in the stemcal profile, "
                f"or `stemcal calibrate`)")
        kwargs = {**msg.kwargs, CALIBRATION_KEY: calibration, STATUS_KEY: status}
        return (yield msg._replace(kwargs=kwargs))

    def _process(self, msg: Msg) -> tuple[Any, Any]:
        if msg.command != "open_run" or not self.enabled or CALIBRATION_KEY in msg.kwargs:
            return None, None
        return self._insert(msg), None

    def wrap(self, plan: MsgGenerator[Any]) -> MsgGenerator[Any]:
        """``plan`` with the calibration attached at each of its ``open_run``."""
        return (yield from plan_mutator(plan, self._process))

    def __call__(self, plan: MsgGenerator[Any]) -> MsgGenerator[Any]:
        return (yield from self.wrap(plan))


def attach_calibration(catalog: Any, optics: Any, scan: Any = None, *,
                       tolerances: Mapping[str, float] | None = None, require: bool = False,
                       timeout: float = 10.0) -> AttachCalibration:
    """The preprocessor for ``RE.preprocessors`` (see :class:`AttachCalibration`)."""
    return AttachCalibration(catalog, optics, scan, tolerances=tolerances, require=require,
                             timeout=timeout)


def attach_calibration_wrapper(plan: MsgGenerator[Any], catalog: Any, optics: Any,
                               scan: Any = None, *, tolerances: Mapping[str, float] | None = None,
                               require: bool = False, timeout: float = 10.0) -> MsgGenerator[Any]:
    """``plan`` with the calibration in force attached to each run it opens.

    Arguments as :class:`AttachCalibration`.
    """
    pre = AttachCalibration(catalog, optics, scan, tolerances=tolerances, require=require,
                            timeout=timeout)
    return (yield from pre.wrap(plan))


#: Decorator form: ``@attach_calibration_decorator(catalog, optics, scan)``.
attach_calibration_decorator: Callable[..., Any] = make_decorator(attach_calibration_wrapper)


def carried_calibration(client: Any, run_uid: str) -> dict[str, Any]:
    """What the run ``run_uid`` (or a unique prefix of >= 8 characters) carried.

    Returns
    -------
    dict
        ``run`` (full uid), ``plan_name``, ``time``, ``attached`` (whether the
        start document has the keys at all), ``calibration`` and
        ``calibration_status`` (None when not attached).

    Raises
    ------
    KeyError
        No run with that uid (prefix) in the catalog.
    ValueError
        ``run_uid`` is not uid-like, or the prefix matches several runs.
    """
    from tiled.queries import Like

    from .catalog.queries import is_uid_prefix

    prefix = str(run_uid).lower()
    if not is_uid_prefix(prefix):
        raise ValueError(f"run uid must be >= 8 characters of a uuid (hex digits and '-'), "
                         f"got {run_uid!r}")
    found = list(client.search(Like("uid", f"{prefix}%")).values()[:2])
    if not found:
        raise KeyError(f"no run with uid {run_uid!r} in this catalog")
    if len(found) > 1:
        raise ValueError(f"run uid prefix {run_uid!r} matches several runs; give more of it")
    start = dict(found[0].metadata["start"])
    return {"run": start.get("uid"), "plan_name": start.get("plan_name"),
            "time": start.get("time"), "attached": CALIBRATION_KEY in start,
            "calibration": start.get(CALIBRATION_KEY),
            "calibration_status": start.get(STATUS_KEY)}
