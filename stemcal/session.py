"""Wiring of an acquisition session: RunEngine, catalog, devices, recorder.

Used by ``stemcal calibrate`` and by the IPython profile, which only build
and connect objects; a facility's instrument is described by a TOML file
(:func:`load_config`) and simulated by default.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import tempfile
import tomllib
import warnings
from pathlib import Path
from typing import Any

__all__ = ["SimSettings", "Session", "catalog_location", "build_sim_instrument", "make_session",
           "load_config", "config_path"]


@dataclasses.dataclass(frozen=True)
class SimSettings:
    """The simulated microscope's truth and settings (sizes as the tests use).

    ``true_overfocus`` is the overfocus the beam really has at the optics
    setting ``overfocus``; detector pixel 55 um, camera length 0.2 m, scan
    step ``0.5 nm * sy / 128``, disk radius 0.3 of the detector.
    """

    true_scan_rotation: float = 23.5
    true_flip_y: bool = True
    true_overfocus: float = 1.05e-6
    overfocus: float = 1e-6
    nav_shape: tuple[int, int] = (40, 40)
    sig_shape: tuple[int, int] = (96, 96)
    dose: float = 5.0
    seed: int = 0

    @classmethod
    def from_mapping(cls, d: dict[str, Any]) -> "SimSettings":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown [simulation] setting(s): {sorted(unknown)}")
        d = dict(d)
        for key in ("nav_shape", "sig_shape"):
            if key in d:
                d[key] = tuple(int(v) for v in d[key])
        return cls(**d)


def catalog_location(location: str | os.PathLike | None) -> tuple[Any, bool]:
    """(location, is a tiled server URI): ``location``, else ``$STEMCAL_CATALOG``, else the default dir."""
    from .catalog import default_catalog_dir
    loc = str(location) if location else os.environ.get("STEMCAL_CATALOG") or str(default_catalog_dir())
    if re.match(r"https?://", loc):
        return loc, True
    return Path(loc).expanduser(), False


def build_sim_instrument(settings: SimSettings, data_dir: str | os.PathLike):
    """The simulated microscope, scan generator, optics and detector, set up per ``settings``."""
    from .devices import MicroscopeTruth, PhysicalSpecimen, make_sim_instrument
    sy, sx = settings.sig_shape
    det_pixel, camera_length = 55e-6, 0.2
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
                               dose=settings.dose, seed=settings.seed, sleep=lambda s: None)
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

    def close(self) -> None:
        self.recorder.close()


def make_session(catalog: str | os.PathLike | None = None, *, sim: SimSettings = SimSettings(),
                 data_dir: str | os.PathLike | None = None,
                 figure_dir: str | os.PathLike | None = None) -> Session:
    """RunEngine + catalog client + simulated instrument + :class:`CalibrationRecorder`.

    Acquisition runs go into a local catalog through ``TiledWriter`` (a tiled
    server could not read the detector's local files, so they are not sent
    there); raw files go to ``data_dir`` (default ``CATALOG/raw``, or a
    temporary directory for a server).
    """
    from bluesky import RunEngine

    from .callbacks import CalibrationRecorder
    from .catalog import UnavailableCatalog, open_catalog_or_unavailable

    loc, remote = catalog_location(catalog)
    if data_dir:
        data = Path(data_dir).expanduser().resolve()
    elif remote:
        data = Path(tempfile.mkdtemp(prefix="stemcal-raw-"))
    else:
        data = (Path(loc) / "raw").resolve()
    try:
        data.mkdir(parents=True, exist_ok=True)
    except OSError:
        if data_dir:
            raise
        data = Path(tempfile.mkdtemp(prefix="stemcal-raw-"))  # catalog dir unusable: spool later
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # A catalog that cannot be opened gives a stand-in: records are spooled (stemcal sync).
        client = open_catalog_or_unavailable(loc, readable_storage=() if remote else (data,))
    inst = build_sim_instrument(sim, data)
    RE = RunEngine({}, call_returns_result=True)
    if not remote and not isinstance(client, UnavailableCatalog):
        from bluesky_tiled_plugins import TiledWriter
        RE.subscribe(TiledWriter(client))
    recorder = CalibrationRecorder(client, figure_dir=figure_dir)
    RE.subscribe(recorder)
    return Session(RE=RE, client=client, instrument=inst, recorder=recorder, data_dir=data,
                   remote=remote)


def config_path() -> Path:
    """``$STEMCAL_CONFIG``, else ``$XDG_CONFIG_HOME/stemcal/config.toml`` (~/.config fallback)."""
    if os.environ.get("STEMCAL_CONFIG"):
        return Path(os.environ["STEMCAL_CONFIG"]).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "stemcal" / "config.toml"


def load_config(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Read the session configuration (TOML); a missing default file gives ``{}``.

    Sections: ``[catalog] location = "DIR or http(s)://..."``, ``[simulation]``
    (fields of :class:`SimSettings`), ``[paths] data_dir``, ``figure_dir``,
    ``[server] host``, ``port`` (``stemcal serve``; keys never go here).
    Unknown sections raise ``ValueError``.
    """
    p = Path(path) if path else config_path()
    if not p.exists():
        if path:
            raise ValueError(f"no configuration file at {p}")
        return {}
    with open(p, "rb") as f:
        try:
            cfg = tomllib.load(f)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{p}: {exc}") from None
    unknown = set(cfg) - {"catalog", "simulation", "paths", "server"}
    if unknown:
        raise ValueError(f"{p}: unknown section(s) {sorted(unknown)}")
    return cfg


def session_from_config(cfg: dict[str, Any]) -> Session:
    """:func:`make_session` from a :func:`load_config` dictionary."""
    paths = cfg.get("paths", {})
    return make_session(cfg.get("catalog", {}).get("location"),
                        sim=SimSettings.from_mapping(cfg.get("simulation", {})),
                        data_dir=paths.get("data_dir"), figure_dir=paths.get("figure_dir"))
