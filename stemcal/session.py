"""Wiring of an acquisition session: RunEngine, catalog, devices, recorder.

Used by ``stemcal calibrate`` and by the IPython profile, which only build
and connect objects; a facility's instrument is described by a TOML file
(:func:`load_config`) and simulated by default.
"""
from __future__ import annotations

import dataclasses
import math
import os
import tempfile
import tomllib
import warnings
from pathlib import Path
from typing import Any

from . import locations
from .checks import finite, is_integer
from .detector_config import DetectorSettings

__all__ = ["SimSettings", "Session", "catalog_location", "build_sim_instrument", "make_session",
           "make_recorder", "load_config"]


#: Limits of a simulated instrument, checked before anything is built or allocated.
#: They mirror :func:`stemcal.twin.simulate.check_shapes` (not imported here: it pulls numba).
SIM_MAX_SIDE = 65536
SIM_MAX_BYTES = 8 * 2**30  # float64 frames of one acquisition
SIM_MAX_OVERFOCUS = 0.1    # metres; the simulated camera length is 0.2 m


def _shape2(name: str, v: Any, lo: int) -> tuple[int, int]:
    if not (isinstance(v, (tuple, list)) and len(v) == 2 and all(
            is_integer(n) for n in v)):
        raise ValueError(f"[simulation] {name} must be two integers (y, x), got {v!r}")
    if not all(lo <= n <= SIM_MAX_SIDE for n in v):
        raise ValueError(f"[simulation] {name} {tuple(v)} out of range: each side must be "
                         f"{lo}..{SIM_MAX_SIDE}")
    return (int(v[0]), int(v[1]))


@dataclasses.dataclass(frozen=True)
class SimSettings:
    """The simulated microscope's truth and settings (sizes as the tests use).

    ``true_overfocus`` is the overfocus the beam really has at the optics
    setting ``overfocus``; detector pixel 55 um, camera length 0.2 m, scan
    step ``0.5 nm * sy / 128``, disk radius 0.3 of the detector.

    Every field is checked on construction (``ValueError`` naming it): angles
    and lengths finite, overfocus values non-zero and within
    :data:`SIM_MAX_OVERFOCUS` m, shapes two integers per side in
    ``1..SIM_MAX_SIDE`` (detector ``>= 8``) whose float64 frames fit
    :data:`SIM_MAX_BYTES`, dose finite > 0, seed an integer >= 0.
    """

    true_scan_rotation: float = 23.5
    true_flip_y: bool = True
    true_overfocus: float = 1.05e-6
    overfocus: float = 1e-6
    nav_shape: tuple[int, int] = (40, 40)
    sig_shape: tuple[int, int] = (96, 96)
    dose: float = 5.0
    seed: int = 0

    def __post_init__(self) -> None:
        set_ = lambda name, v: object.__setattr__(self, name, v)  # noqa: E731 (frozen)
        set_("true_scan_rotation", finite("[simulation] true_scan_rotation", self.true_scan_rotation))
        if type(self.true_flip_y).__name__ not in ("bool", "bool_"):  # Python or NumPy bool
            raise ValueError(f"[simulation] true_flip_y must be true or false, "
                             f"got {self.true_flip_y!r}")
        for name in ("true_overfocus", "overfocus"):
            v = finite(f"[simulation] {name}", getattr(self, name))
            if v == 0 or abs(v) > SIM_MAX_OVERFOCUS:
                raise ValueError(f"[simulation] {name} must be non-zero and within "
                                 f"+-{SIM_MAX_OVERFOCUS} m, got {v!r}")
            set_(name, v)
        nav = _shape2("nav_shape", self.nav_shape, 1)
        sig = _shape2("sig_shape", self.sig_shape, 8)
        n_bytes = nav[0] * nav[1] * sig[0] * sig[1] * 8
        if n_bytes > SIM_MAX_BYTES:
            raise ValueError(f"[simulation] a {nav[0]}x{nav[1]} scan of {sig[0]}x{sig[1]} frames "
                             f"needs {n_bytes / 2**30:.3g} GiB of float64 per acquisition, over "
                             f"the limit of {SIM_MAX_BYTES / 2**30:.3g} GiB")
        set_("nav_shape", nav)
        set_("sig_shape", sig)
        dose = finite("[simulation] dose", self.dose)
        if dose <= 0:
            raise ValueError(f"[simulation] dose must be > 0, got {dose!r}")
        set_("dose", dose)
        if not is_integer(self.seed) or self.seed < 0:
            raise ValueError(f"[simulation] seed must be an integer >= 0, got {self.seed!r}")
        set_("true_flip_y", bool(self.true_flip_y))
        set_("seed", int(self.seed))

    @classmethod
    def from_mapping(cls, d: dict[str, Any]) -> "SimSettings":
        """Settings from a ``[simulation]`` table; unknown keys or bad values raise ``ValueError``."""
        if not isinstance(d, dict):
            raise ValueError(f"[simulation] must be a table, got {d!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown [simulation] setting(s): {sorted(unknown)}")
        return cls(**d)


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

    def close(self) -> None:
        self.recorder.close()
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


def make_session(catalog: str | os.PathLike | None = None, *, sim: SimSettings = SimSettings(),
                 data_dir: str | os.PathLike | None = None,
                 figure_dir: str | os.PathLike | None = None,
                 detector: "DetectorSettings | None" = None,
                 call_returns_result: bool = True) -> Session:
    """RunEngine + catalog client + simulated instrument + :class:`CalibrationRecorder`.

    ``call_returns_result``: ``RE(plan)`` returns a ``RunEngineResult`` (with
    the plan's return value, e.g. the calibration record); False: the run
    uids, bluesky's default (what the queue server's RE Worker needs).

    ``detector`` (the ``[detector]`` table, :class:`~stemcal.detector_config.
    DetectorSettings`) picks the detector: by default the simulated Merlin;
    ``backend = "hardware"`` replaces the simulated detector with the real one
    (scan generator and optics stay those of the twin).

    Acquisition runs go into a local catalog through ``TiledWriter`` (a tiled
    server could not read the detector's local files, so they are not sent
    there); raw files go to ``data_dir`` (default ``CATALOG/raw``, or a
    temporary directory for a server).
    """
    from bluesky import RunEngine

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
    det_cfg = detector if detector is not None else DetectorSettings()
    inst = build_sim_instrument(sim, data, detector=det_cfg.kind)
    if det_cfg.is_hardware:
        from .devices.factory import make_hardware_detector
        inst = inst._replace(detector=make_hardware_detector(det_cfg, inst.scan, data))
    RE = RunEngine({}, call_returns_result=bool(call_returns_result))
    if not remote and not isinstance(client, UnavailableCatalog):
        from bluesky_tiled_plugins import TiledWriter
        RE.subscribe(TiledWriter(client))
    recorder = make_recorder(client, figure_dir=figure_dir)
    RE.subscribe(recorder)
    return Session(RE=RE, client=client, instrument=inst, recorder=recorder, data_dir=data,
                   remote=remote)


def load_config(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Read the session configuration (TOML); a missing default file gives ``{}``.

    Sections: ``[catalog] location = "DIR or http(s)://..."``, ``[simulation]``
    (fields of :class:`SimSettings`), ``[paths] data_dir``, ``figure_dir``,
    ``[server] host``, ``port`` (``stemcal serve``; keys never go here),
    ``[detector]`` (fields of :class:`~stemcal.detector_config.DetectorSettings`:
    ``kind = "merlin" | "arina"``, ``backend = "sim" | "hardware"``, hosts, ports...).
    Unknown sections raise ``ValueError``.
    """
    p = Path(path) if path else locations.config_path()
    if not p.exists():
        if path:
            raise ValueError(f"no configuration file at {p}")
        return {}
    with open(p, "rb") as f:
        try:
            cfg = tomllib.load(f)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{p}: {exc}") from None
    unknown = set(cfg) - {"catalog", "simulation", "paths", "server", "detector"}
    if unknown:
        raise ValueError(f"{p}: unknown section(s) {sorted(unknown)}")
    _check_config(p, cfg)
    return cfg


def _check_config(p: Path, cfg: dict[str, Any]) -> None:
    """Validate the ``[catalog]``, ``[paths]`` and ``[simulation]`` tables (``ValueError``)."""
    for section, keys in (("catalog", {"location"}), ("paths", {"data_dir", "figure_dir"})):
        table = cfg.get(section, {})
        if not isinstance(table, dict):
            raise ValueError(f"{p}: [{section}] must be a table")
        unknown = set(table) - keys
        if unknown:
            raise ValueError(f"{p}: unknown [{section}] key(s) {sorted(unknown)}")
        for key, value in table.items():
            if not isinstance(value, str) or not value.strip() or "\0" in value:
                raise ValueError(f"{p}: [{section}] {key} must be a non-empty string, "
                                 f"got {value!r}")
    try:
        SimSettings.from_mapping(cfg.get("simulation", {}))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{p}: {exc}") from None
    try:
        DetectorSettings.from_mapping(cfg.get("detector", {}))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{p}: {exc}") from None


def session_from_config(cfg: dict[str, Any], *, call_returns_result: bool = True) -> Session:
    """:func:`make_session` from a :func:`load_config` dictionary."""
    paths = cfg.get("paths", {})
    return make_session(cfg.get("catalog", {}).get("location"),
                        sim=SimSettings.from_mapping(cfg.get("simulation", {})),
                        data_dir=paths.get("data_dir"), figure_dir=paths.get("figure_dir"),
                        detector=DetectorSettings.from_mapping(cfg.get("detector", {})),
                        call_returns_result=call_returns_result)
