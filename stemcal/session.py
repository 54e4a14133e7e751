"""Wiring of an acquisition session: RunEngine, catalog, devices, recorder.

Used by ``stemcal calibrate`` and by the IPython profile, which only build
and connect objects; a facility's instrument is described by a TOML file
(:func:`stemcal.config.load_config`) and simulated by default.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import warnings
from pathlib import Path
from typing import Any

from . import locations
from .config import DetectorSettings, SimSettings

log = logging.getLogger(__name__)

__all__ = ["Session", "catalog_location", "build_sim_instrument", "make_session",
           "make_recorder", "session_from_config"]


def catalog_location(location: str | os.PathLike | None) -> tuple[Any, bool]:
    """(location, is a tiled server URI) of :func:`stemcal.locations.catalog_location`."""
    loc = locations.catalog_location(location)
    return loc, locations.is_server_uri(loc)


def build_sim_instrument(settings: SimSettings, data_dir: str | os.PathLike,
                         detector: str = "merlin"):
    """The simulated microscope, scan generator, optics and detector, set up per ``settings``.

    ``detector``: ``"merlin"`` (55 um pixels) or ``"arina"`` (100 um pixels;
    both with ``settings.sig_shape``).
    """
    from .devices import ARINA_PIXEL_SIZE, MicroscopeTruth, PhysicalSpecimen, make_sim_instrument
    sy, sx = settings.sig_shape
    det_pixel, camera_length = (ARINA_PIXEL_SIZE if detector == "arina" else 55e-6), 0.2
    scan_pixel = 0.5e-9 * sy / 128
    semiconv = 0.3 * sy * det_pixel / camera_length  # disk radius 0.3 of the detector
    truth = MicroscopeTruth(scan_rotation=settings.true_scan_rotation, flip_y=settings.true_flip_y,
                            overfocus_offset=settings.true_overfocus - settings.overfocus,
                            detector_pixel_size=det_pixel, semiconv=semiconv,
                            cy=sy / 2 + 3.3, cx=sx / 2 - 2.7)
    # Specimen: 0.5 scan px pixels, 0.8 scan px features, covering the scan plus the
    # disk's shadow at twice the overfocus (vacuum beyond).
    radius = semiconv * 2 * abs(settings.true_overfocus) / scan_pixel
    half = max(settings.nav_shape) / 2 + radius + 8
    n = int(min(4096, 2 * math.ceil(half / 0.5)))
    specimen = PhysicalSpecimen.generate((n, n), pixel_size=0.5 * scan_pixel,
                                         feature_size=0.8 * scan_pixel, seed=settings.seed)
    inst = make_sim_instrument(data_dir, truth=truth, sig_shape=(sy, sx), specimen=specimen,
                               dose=settings.dose, seed=settings.seed, sleep=lambda s: None,
                               detector=detector)
    for sig, value in ((inst.scan.shape_y, settings.nav_shape[0]),
                       (inst.scan.shape_x, settings.nav_shape[1]),
                       (inst.scan.pixel_size, scan_pixel), (inst.optics.overfocus, settings.overfocus),
                       (inst.optics.camera_length, camera_length)):
        sig.set(value).wait(timeout=10)
    return inst


@dataclasses.dataclass
class Session:
    """A RunEngine subscribed to the catalog (acquisitions) and the calibration recorder."""

    RE: Any
    client: Any
    instrument: Any
    recorder: Any
    data_dir: Path
    remote: bool
    keeper: Any = None
    #: Where the catalog could not be opened at the start: finds it again
    #: (:class:`stemcal.reconnect.Reconnector`, one of the RunEngine's preprocessors).
    reconnector: Any = None

    def reconnect(self, timeout: float | None = None) -> bool:
        """Try the catalog now, between plans: True when the session writes to it (again or
        still); what was kept meanwhile is then delivered in the background. A session
        does this by itself at the first plan after its catalog is back."""
        if self.reconnector is None:
            return True
        if self.RE.state != "idle":
            raise RuntimeError("reconnect between plans: the RunEngine is "
                               f"{self.RE.state}")
        return self.reconnector.reconnect(timeout)

    def close(self) -> None:
        if self.reconnector is not None:
            self.reconnector.close()
        self.recorder.close()
        if self.keeper is not None:
            self.keeper.close()
        finish = getattr(self.client, "finish", None)
        if finish is not None:  # a courier: wait until it has delivered the runs and records
            finish()
        close_backend = getattr(self.instrument.detector.backend, "close", None)
        if close_backend is not None:  # a live detector's connection / receiver process
            close_backend()


def make_recorder(client: Any, **kwargs: Any) -> Any:
    """The calibration recorder of ``client`` (:class:`stemcal.callbacks.CalibrationRecorder`).

    What the plans need as their ``callback``; ``kwargs`` are the recorder's
    (``figure_dir``, ``fit_kwargs``, ``live``, ...). Subscribe it to the
    RunEngine, or pass ``subscribe=True`` to the plan.
    """
    from .callbacks import CalibrationRecorder

    return CalibrationRecorder(client, **kwargs)


def _data_dir(data_dir: str | os.PathLike | None, loc: Any, remote: bool, client: Any) -> Path:
    """Where the detector writes: ``data_dir``; else ``CATALOG/raw`` of an embedded catalog, or
    the data directory a server announces; else (catalog unusable) the spool's ``raw/``,
    from where ``stemcal sync`` copies the files into the catalog's data directory."""
    from .catalog import UnavailableCatalog
    from .catalog.replay import data_dir_of

    if data_dir:
        data = Path(data_dir).expanduser().resolve()
        data.mkdir(parents=True, exist_ok=True)
        return data
    fallback = locations.spool_dir() / "raw"
    if isinstance(client, UnavailableCatalog):
        data = fallback if remote else (Path(loc) / "raw").resolve()
    else:
        data = data_dir_of(client, None if remote else str(Path(loc).resolve()))
        if data is None:
            raise ValueError(f"the catalog server {loc} announces no data directory; set "
                             "[paths] data_dir (or --data-dir) to the directory it reads "
                             "detector files from")
    try:
        data.mkdir(parents=True, exist_ok=True)
        if not os.access(data, os.W_OK):
            raise PermissionError(f"{data} is not writable")
    except OSError:
        if remote and not isinstance(client, UnavailableCatalog):
            raise ValueError(f"the data directory {data} of the catalog server {loc} is not "
                             "writable here: mount it at the same path, or set [paths] "
                             "data_dir (or --data-dir) to where it is mounted") from None
        data = fallback  # an unusable catalog directory: kept for sync
        data.mkdir(parents=True, exist_ok=True, mode=0o700)
    return data


def _spool_writable() -> bool:
    """Whether run journals can be kept in the spool: a courier delivers only what is
    kept there, so without it the catalog is opened in this process (whose RunKeeper
    writes a run to the catalog even where its journal cannot be kept)."""
    from .catalog.journal import journal_dir

    runs = journal_dir()
    try:
        runs.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError:
        return False
    return os.access(runs, os.W_OK) and os.access(runs.parent, os.W_OK)


def make_session(catalog: str | os.PathLike | None = None, *, sim: SimSettings = SimSettings(),
                 data_dir: str | os.PathLike | None = None,
                 figure_dir: str | os.PathLike | None = None,
                 detector: "DetectorSettings | None" = None,
                 call_returns_result: bool = True, courier: bool = False,
                 live_figure: bool | None = True,
                 context_managers: list | None = None, reconnect: bool = True) -> Session:
    """RunEngine + catalog client + simulated instrument + :class:`CalibrationRecorder`.

    ``call_returns_result``: ``RE(plan)`` returns a ``RunEngineResult`` (with
    the plan's return value, e.g. the calibration record); False: the run
    uids, bluesky's default (what the queue server's RE Worker needs).

    ``detector`` (the ``[detector]`` table, :class:`~stemcal.config.DetectorSettings`) picks the detector: by default the simulated Merlin;
    ``backend = "hardware"`` replaces the simulated detector with the real one
    (scan generator and optics stay those of the twin).

    Every run goes into the catalog, embedded or a server, through a
    :class:`~stemcal.catalog.RunKeeper` (``TiledWriter``, with a journal kept
    until the catalog has the run). Detector files go to ``data_dir``
    (default ``CATALOG/raw``, or the data directory a server announces, which
    writer and server share). A catalog that cannot be opened gives a stand-in:
    runs and records are kept in the spool for ``stemcal sync``.

    ``courier``: an embedded catalog is opened by a process of its own, which delivers
    each run and record as this one keeps it (:mod:`stemcal.catalog.courier`): the scan
    starts without waiting for tiled's imports. ``client`` is then a stand-in, and
    :meth:`Session.close` waits for the deliveries. For a command that acquires and
    exits (``stemcal calibrate``); an interactive session wants a client it can query.
    Where the spool cannot be written the catalog is opened here instead.

    ``reconnect``: where the catalog cannot be opened at the start, keep trying it in the
    background and switch over at the first plan after it is back
    (:class:`stemcal.reconnect.Reconnector`; :meth:`Session.reconnect`). A command that
    runs one plan and exits passes False (its kept runs wait for ``stemcal sync``).

    ``context_managers``: the RunEngine's (``None``: bluesky's own, whose Ctrl-C pauses
    the run for an interactive session to resume or abort; the command line passes its
    own, :class:`stemcal.cli.acquire.AbortOnInterrupt`).

    ``live_figure``: whether the live views keep a figure (on screen where there is a
    display, else off screen and saved into ``figure_dir``); None: only where someone
    sees it, a display or ``figure_dir`` (``stemcal calibrate``: without either,
    matplotlib's import and the redraws cost 0.3 s of the scan's time). The live
    projection runs either way. Decided after the courier is started: the callbacks'
    imports (0.8 s) must not delay it.
    """
    from bluesky import RunEngine

    from .catalog import RunKeeper, UnavailableCatalog, open_catalog_or_unavailable

    loc, remote = catalog_location(catalog)
    readable = () if remote or not data_dir else (Path(data_dir).expanduser().resolve(),)
    client = None
    if courier and not remote and _spool_writable():
        from .catalog.courier import DeferredCatalog
        try:
            client = DeferredCatalog(loc, readable=readable)
        except OSError as exc:  # no process to be had (memory, limits): open it here
            log.warning("no catalog courier (%s); opening the catalog in this process", exc)
    if client is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            client = open_catalog_or_unavailable(loc, readable_storage=readable)
    data = _data_dir(data_dir, loc, remote, client)
    det_cfg = detector if detector is not None else DetectorSettings()
    inst = build_sim_instrument(sim, data, detector=det_cfg.kind)
    if det_cfg.is_hardware:
        from .devices.factory import make_hardware_detector
        inst = inst._replace(detector=make_hardware_detector(det_cfg, inst.scan, data))
    RE = RunEngine({}, call_returns_result=bool(call_returns_result),
                   context_managers=context_managers)
    keeper = RunKeeper(client)
    RE.subscribe(keeper)
    if live_figure is None:
        from .callbacks.live_figure import has_display

        live_figure = figure_dir is not None or has_display()
    recorder = make_recorder(client, figure_dir=figure_dir,
                             live_kwargs=None if live_figure else {"figure": False})
    RE.subscribe(recorder)
    session = Session(RE=RE, client=client, instrument=inst, recorder=recorder, data_dir=data,
                      remote=remote, keeper=keeper)
    if reconnect and isinstance(client, UnavailableCatalog) and not client.expected:
        session.reconnector = _reconnector(session, loc, remote, readable, data_dir)
        RE.preprocessors.append(session.reconnector)
    return session


#: Seconds the switch to a catalog that is back waits for the fits of earlier runs.
SETTLE_TIMEOUT = 60.0


def _reconnector(session: Session, loc: Any, remote: bool, readable: tuple,
                 data_dir: str | os.PathLike | None) -> Any:
    """The session's :class:`~stemcal.reconnect.Reconnector`: the catalog opened as at the
    start, the detector's files then where they would have gone had it been there."""
    from .catalog import open_catalog
    from .reconnect import Reconnector

    def opener() -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return open_catalog(loc, readable_storage=readable)

    def switched(client: Any, data: Path) -> None:
        session.client, session.data_dir = client, data

    return Reconnector(session.client, opener,
                       lambda client: _data_dir(data_dir, loc, remote, client),
                       detector=session.instrument.detector,
                       settle=lambda: session.recorder.wait(SETTLE_TIMEOUT), on_switch=switched)


def session_from_config(cfg: dict[str, Any], *, call_returns_result: bool = True) -> Session:
    """:func:`make_session` from a :func:`stemcal.config.load_config` dictionary."""
    paths = cfg.get("paths", {})
    return make_session(cfg.get("catalog", {}).get("location"),
                        sim=SimSettings.from_mapping(cfg.get("simulation", {})),
                        data_dir=paths.get("data_dir"), figure_dir=paths.get("figure_dir"),
                        detector=DetectorSettings.from_mapping(cfg.get("detector", {})),
                        call_returns_result=call_returns_result)
