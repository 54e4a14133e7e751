"""stemcal's configuration: one TOML file, each table checked when it is read.

The file is ``$STEMCAL_CONFIG`` or ``$XDG_CONFIG_HOME/stemcal/config.toml``
(:func:`stemcal.locations.config_path`); :func:`load_config` reads it. Its tables:

``[catalog]``
    ``location``: a directory or a tiled ``http(s)://`` URI.
``[paths]``
    ``data_dir`` (where detectors write), ``figure_dir`` (PNG figures).
``[simulation]``
    The simulated microscope (:class:`SimSettings`).
``[detector]``
    Which detector and backend (:class:`DetectorSettings`), e.g.::

        [detector]
        kind = "merlin"          # or "arina"
        backend = "hardware"     # or "sim" (the default)
        api_host = "127.0.0.1"   # control (Merlin) / SIMPLON REST (ARINA)
        api_port = 6341          # default 6341 (Merlin) / 80 (ARINA)
        data_host = "127.0.0.1"  # data (Merlin) / zmq stream (ARINA)
        data_port = 6342         # default 6342 (Merlin) / 9999 (ARINA)
        keep_mib = true          # Merlin: keep each scan as .mib + .hdr next to the HDF5

``[server]``
    ``host``, ``port`` of ``stemcal serve`` (:func:`server_settings`); its storage
    (:func:`server_storage`): ``database`` (a PostgreSQL URI for the catalog
    instead of ``DIR/catalog.db``), ``tables`` (a PostgreSQL URI for the event
    tables; default: the ``database``), ``data_dir`` (the shared directory
    detector files are written to, default ``DIR/raw``). Keys and passwords
    never go here (PostgreSQL: ``~/.pgpass`` or peer authentication).

Every value is checked with :mod:`stemcal.checks` when it is read; a bad one
is a ``ValueError`` naming the file, the table and the key. Standard library
only: the CLI reads configurations without importing devices or tiled.
"""
from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import locations
from .checks import finite, is_integer, port, positive

__all__ = ["SimSettings", "DetectorSettings", "load_config", "server_settings",
           "server_storage", "check_database_uri", "DEFAULT_HOST", "DEFAULT_PORT"]

#: Where ``stemcal serve`` listens unless ``[server]`` says otherwise.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


#: Limits of a simulated instrument, checked before anything is built or allocated.
#: They mirror :func:`stemcal.twin.simulator.check_shapes` (not imported here: it pulls numba).
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


_KINDS = ("merlin", "arina")
_BACKENDS = ("sim", "hardware")
#: Older spelling of ``backend = "hardware"``, still read.
_OLD_BACKENDS = {"live": "hardware"}
#: Per kind: (api_port, data_port, sig_shape, bit depth, pixel size in m).
_DEFAULTS = {"merlin": (6341, 6342, (256, 256), 12, 55e-6),
             "arina": (80, 9999, (192, 192), 16, 100e-6)}


def _err(key: str, what: str, value: Any) -> ValueError:
    return ValueError(f"[detector] {key} must be {what}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class DetectorSettings:
    """The ``[detector]`` table: which detector, which backend, where it is.

    Parameters
    ----------
    kind : {'merlin', 'arina'}
        Detector model; also the device's name in the session and profile.
    backend : {'sim', 'hardware'}
        ``sim``: the digital twin (``[simulation]``); ``hardware``: the
        detector's own protocol through LiberTEM-live (the real detector or
        its simulator). ``"live"``, the older spelling, is read as ``"hardware"``.
    api_host, api_port : str, int or None
        Merlin control port / DECTRIS SIMPLON REST API (live only); ports
        default to 6341 (Merlin) and 80 (ARINA).
    data_host, data_port : str, int or None
        Merlin data port / DECTRIS zmq stream; default 6342 / 9999.
    sig_shape : (int, int) or None
        Live detector's frame shape (y, x), pixels; default 256 x 256
        (Merlin) or 192 x 192 (ARINA). Checked against the detector at stage.
    bit_depth : int or None
        Merlin counter depth (1, 6, 12, 24; default 12) or DECTRIS image bit
        depth (8, 16, 32; default 16).
    pixel_size : float or None
        Detector pixel pitch, metres; default 55e-6 (Merlin) / 100e-6 (ARINA).
    timeout : float
        Seconds without frames before a live acquisition fails.
    keep_mib : bool
        Merlin only: keep each scan as ``.mib`` + ``.hdr`` too
        (:class:`~stemcal.devices.MIBKeepingWriter`).
    """

    kind: str = "merlin"
    backend: str = "sim"
    api_host: str = "127.0.0.1"
    api_port: int | None = None
    data_host: str = "127.0.0.1"
    data_port: int | None = None
    sig_shape: tuple[int, int] | None = None
    bit_depth: int | None = None
    pixel_size: float | None = None
    timeout: float = 10.0
    keep_mib: bool = False

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise _err("kind", f"one of {list(_KINDS)}", self.kind)
        if self.backend in _OLD_BACKENDS:
            object.__setattr__(self, "backend", _OLD_BACKENDS[self.backend])
        if self.backend not in _BACKENDS:
            raise _err("backend", f"one of {list(_BACKENDS)}", self.backend)
        for key in ("api_host", "data_host"):
            value = getattr(self, key)
            if not isinstance(value, str) or not value.strip():
                raise _err(key, "a non-empty host name or address", value)
        for key in ("api_port", "data_port"):
            value = getattr(self, key)
            if value is not None:
                port(f"[detector] {key}", value)
        if self.sig_shape is not None:
            v = self.sig_shape
            if not (isinstance(v, (tuple, list)) and len(v) == 2
                    and all(is_integer(n) and n >= 1 for n in v)):
                raise _err("sig_shape", "two integers >= 1 (y, x)", v)
            object.__setattr__(self, "sig_shape", (int(v[0]), int(v[1])))
        depths = (1, 6, 12, 24) if self.kind == "merlin" else (8, 16, 32)
        if self.bit_depth is not None and (isinstance(self.bit_depth, bool)
                                           or self.bit_depth not in depths):
            raise _err("bit_depth", f"one of {list(depths)} for {self.kind}", self.bit_depth)
        for key, allow_none in (("pixel_size", True), ("timeout", False)):
            value = getattr(self, key)
            if value is None and allow_none:
                continue
            positive(f"[detector] {key}", value)
        if not isinstance(self.keep_mib, bool):
            raise _err("keep_mib", "true or false", self.keep_mib)
        if self.keep_mib and self.kind != "merlin":
            raise ValueError("[detector] keep_mib is for kind = 'merlin' (MIB is Merlin's format)")

    @classmethod
    def from_mapping(cls, d: Any) -> "DetectorSettings":
        """From the TOML table; unknown keys and bad values raise ``ValueError``."""
        if not isinstance(d, dict):
            raise ValueError("[detector] must be a table")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown [detector] setting(s): {sorted(unknown)}")
        return cls(**d)

    @property
    def is_hardware(self) -> bool:
        """Whether the detector is driven through its own protocol (not the twin)."""
        return self.backend == "hardware"

    def resolved(self) -> dict[str, Any]:
        """Ports, shape, bit depth and pixel size with the kind's defaults filled in."""
        api_port, data_port, sig, depth, pixel = _DEFAULTS[self.kind]
        return {"api_host": self.api_host, "data_host": self.data_host,
                "api_port": self.api_port or api_port, "data_port": self.data_port or data_port,
                "sig_shape": self.sig_shape or sig, "bit_depth": self.bit_depth or depth,
                "pixel_size": self.pixel_size or pixel}


_SERVER_KEYS = {"host", "port", "database", "tables", "data_dir"}


def server_settings(cfg: Mapping[str, Any] | None) -> tuple[str, int]:
    """(host, port) from a configuration's ``[server]`` section; defaults 127.0.0.1:8000."""
    section = dict((cfg or {}).get("server") or {})
    unknown = set(section) - _SERVER_KEYS
    if unknown:
        raise ValueError(f"unknown [server] setting(s): {sorted(unknown)} (keys do not belong "
                         "in the configuration; use the environment or the keys file)")
    host = section.get("host", DEFAULT_HOST)
    if not isinstance(host, str) or not host.strip():
        raise ValueError(f"[server] host must be a non-empty host name or address, got {host!r}")
    return host, port("[server] port", section.get("port", DEFAULT_PORT))


def check_database_uri(name: str, uri: Any) -> str:
    """``uri`` if it is a PostgreSQL URI without a password, else ``ValueError`` naming ``name``."""
    import urllib.parse

    if not isinstance(uri, str) or not uri.startswith(("postgresql://", "postgres://")):
        raise ValueError(f"{name} must be a postgresql://user@host/database URI, got {uri!r}")
    if urllib.parse.urlsplit(uri).password is not None:
        raise ValueError(f"{name}: no password in the URI; use ~/.pgpass or peer authentication")
    return uri


def server_storage(cfg: Mapping[str, Any] | None) -> dict[str, str | None]:
    """``{"database", "tables", "data_dir"}`` of ``[server]`` (None where not set; see the module
    docstring)."""
    section = dict((cfg or {}).get("server") or {})
    server_settings(cfg)  # unknown keys
    out: dict[str, str | None] = {"database": None, "tables": None, "data_dir": None}
    for key in ("database", "tables"):
        if section.get(key) is not None:
            out[key] = check_database_uri(f"[server] {key}", section[key])
    if out["tables"] and not out["database"]:
        raise ValueError("[server] tables needs [server] database (the catalog in PostgreSQL)")
    data_dir = section.get("data_dir")
    if data_dir is not None:
        if not isinstance(data_dir, str) or not data_dir.strip() or "\0" in data_dir:
            raise ValueError(f"[server] data_dir must be a non-empty path, got {data_dir!r}")
        out["data_dir"] = data_dir
    return out


def load_config(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Read the session configuration (TOML); a missing default file gives ``{}``.

    Sections: ``[catalog] location = "DIR or http(s)://..."``, ``[simulation]``
    (fields of :class:`SimSettings`), ``[paths] data_dir``, ``figure_dir``,
    ``[server] host``, ``port`` (``stemcal serve``; keys never go here),
    ``[detector]`` (fields of :class:`DetectorSettings`:
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
    """Validate every table (``ValueError`` naming the file, table and key)."""
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
    for check in (lambda: SimSettings.from_mapping(cfg.get("simulation", {})),
                  lambda: DetectorSettings.from_mapping(cfg.get("detector", {})),
                  lambda: server_storage(cfg)):
        try:
            check()
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{p}: {exc}") from None
