"""The ``[detector]`` table of the configuration: which detector a session uses.

Standard library only (the CLI reads configurations without importing the
devices). :class:`DetectorSettings` validates the table;
:func:`stemcal.devices.factory.make_hardware_detector` builds a hardware
detector (Merlin over TCP or a DECTRIS ARINA over SIMPLON + zmq, both through
LiberTEM-live). A simulated detector
(``backend = "sim"``) is built with the twin by
:func:`stemcal.devices.make_sim_instrument` instead.

Example ``config.toml``::

    [detector]
    kind = "merlin"          # or "arina"
    backend = "hardware"     # or "sim" (the default)
    api_host = "127.0.0.1"   # control (Merlin) / SIMPLON REST (ARINA)
    api_port = 6341          # default 6341 (Merlin) / 80 (ARINA)
    data_host = "127.0.0.1"  # data (Merlin) / zmq stream (ARINA)
    data_port = 6342         # default 6342 (Merlin) / 9999 (ARINA)
    keep_mib = true          # Merlin: keep each scan as .mib + .hdr next to the HDF5
"""
from __future__ import annotations

import dataclasses
from typing import Any

from .checks import is_integer, port, positive

__all__ = ["DetectorSettings"]

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
