"""Calibration records: what a fit found, under which optics, with which software.

A :class:`CalibrationRecord` is immutable and append-only: a correction is a
new record whose ``supersedes`` names the uid of the one it replaces
(:meth:`CalibrationRecord.correct`). :mod:`stemcal.catalog` stores records in
a tiled catalog of Bluesky runs.
"""
from __future__ import annotations

import dataclasses
import math
import re
import time
import uuid
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

import numpy as np

from .twin.params import OverfocusParams

if TYPE_CHECKING:
    from .fit.result import FitResult

#: Distributions whose versions a record carries (``versions`` field).
VERSIONED = ("stemcal", "libertem", "numba", "bluesky", "numpy")

_GEOMETRY = ("overfocus", "scan_pixel_size", "camera_length", "detector_pixel_size", "semiconv",
             "cy", "cx", "scan_rotation", "flip_y", "descan")


def software_versions() -> dict[str, str | None]:
    """Installed versions of :data:`VERSIONED` (``None`` where not installed).

    Returns
    -------
    dict
        Distribution name -> version string, via :func:`importlib.metadata.version`.
    """
    out: dict[str, str | None] = {}
    for name in VERSIONED:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def jsonable(value: Any) -> Any:
    """Deep copy of ``value`` as plain JSON types.

    NumPy scalars and arrays become Python numbers and lists, tuples become
    lists, non-finite floats become ``None`` (JSON has no NaN), mapping keys
    become strings and any other object its ``repr`` (as bluesky's ``plan_args``).
    """
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [jsonable(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if value is None or isinstance(value, str):
        return value
    return repr(value)


#: What a record's uid, ``acquisition_uid`` and ``supersedes`` may be: a uuid4 string, or
#: any 1-128 letters, digits, ``.``, ``_`` and ``-`` (names of catalog nodes, shown in pages).
UID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
#: A record's ``time`` is before this (3000-01-01 UTC, seconds since 1970): one from far
#: ahead would be the "newest" calibration for ever, and cannot be shown as a date.
LATEST_TIME = 32503680000.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class CalibrationRecord:
    """One calibration result with its provenance.

    Parameters
    ----------
    uid : str
        Identity of the record (uuid4 string); also the uid of its Bluesky run.
    acquisition_uid : str or None
        Uid of the run whose data was calibrated.
    time : float
        When the record was made, seconds since the epoch.
    scan_rotation : float
        Degrees (LiberTEM's convention).
    flip_y : bool
        Detector y axis flipped relative to the scan.
    overfocus : float
        Metres (negative: underfocus).
    cy, cx : float
        Beam centre at the scan middle, detector pixels.
    descan : 2x2 list of float
        Detector pixels per scan pixel; rows detector (y, x), columns scan (y, x).
    uncertainty : dict
        Fitted parameter name -> 1-sigma uncertainty in that parameter's unit
        (``scan_rotation`` degrees, ``overfocus`` metres, ``cy``/``cx`` px);
        ``None`` where not determined.
    quality : str
        ``"ok"``, or why the result should not be trusted.
    blur : float
        Crete blur effect of the shifted sum (0 sharp .. 1 blurred); NaN if not measured.
    optics_state : dict
        Microscope state the calibration holds for, e.g. ``{"overfocus_setting": m,
        "camera_length": m, "high_tension": V, "magnification": x}``.
    scan_pixel_size, camera_length, detector_pixel_size : float
        Metres, as in :class:`stemcal.twin.OverfocusParams`.
    semiconv : float
        Convergence semi-angle, radians.
    fit_settings : dict
        How the fit was run (metric, bounds, ...); stored as plain JSON types.
    versions : dict
        Software versions, see :func:`software_versions`.
    supersedes : str or None
        Uid of the record this one corrects.

    Notes
    -----
    The geometry fields are validated by building :meth:`params`; all
    dictionaries are stored as plain JSON types (:func:`jsonable`), so
    ``from_dict(to_dict())`` reproduces the record.
    """

    uid: str = dataclasses.field(default_factory=lambda: str(uuid.uuid4()))
    acquisition_uid: str | None = None
    time: float = dataclasses.field(default_factory=time.time)
    scan_rotation: float
    flip_y: bool
    overfocus: float
    cy: float
    cx: float
    descan: list[list[float]] = dataclasses.field(default_factory=lambda: [[0.0, 0.0], [0.0, 0.0]])
    uncertainty: dict[str, float | None] = dataclasses.field(default_factory=dict)
    quality: str = "ok"
    blur: float = math.nan
    optics_state: dict[str, Any] = dataclasses.field(default_factory=dict)
    scan_pixel_size: float
    camera_length: float
    detector_pixel_size: float
    semiconv: float
    fit_settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    versions: dict[str, str | None] = dataclasses.field(default_factory=software_versions)
    supersedes: str | None = None

    def __post_init__(self) -> None:
        for name in ("uid", "quality"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"{name} must be a non-empty string, got {getattr(self, name)!r}")
        for name in ("acquisition_uid", "supersedes"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a string or None, got {getattr(self, name)!r}")
        for name in ("uid", "acquisition_uid", "supersedes"):
            value = getattr(self, name)
            if value is not None and not UID_PATTERN.fullmatch(value):
                raise ValueError(f"{name} must be 1-128 letters, digits, '.', '_' or '-' "
                                 f"(starting with a letter or digit), got {value[:80]!r}")
        for name in ("uncertainty", "optics_state", "fit_settings", "versions"):
            if not isinstance(getattr(self, name), dict):
                raise ValueError(f"{name} must be a dict, got {getattr(self, name)!r}")
            object.__setattr__(self, name, jsonable(getattr(self, name)))
        try:
            object.__setattr__(self, "time", float(self.time))
            object.__setattr__(self, "blur", float(self.blur))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"time and blur must be numbers, got {self.time!r}, {self.blur!r}") from exc
        if not 0 <= self.time < LATEST_TIME:
            raise ValueError(f"time must be seconds since 1970 before the year 3000, got "
                             f"{self.time!r}")
        p = OverfocusParams(**{name: getattr(self, name) for name in _GEOMETRY})  # validates
        for name, value in p.to_dict().items():
            object.__setattr__(self, name, value)

    @property
    def valid(self) -> bool:
        """Whether the fit is trusted (``quality == "ok"``)."""
        return self.quality == "ok"

    def params(self) -> OverfocusParams:
        """The calibrated geometry as :class:`stemcal.twin.OverfocusParams`."""
        return OverfocusParams(**{name: getattr(self, name) for name in _GEOMETRY})

    def to_dict(self) -> dict[str, Any]:
        """All fields as plain JSON types (a NaN ``blur`` becomes ``None``)."""
        return {f.name: jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CalibrationRecord":
        """Inverse of :meth:`to_dict`.

        Raises
        ------
        ValueError
            ``d`` has keys that are not fields, lacks a required field, or
            holds invalid values.
        """
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(d) - set(fields)
        if unknown:
            raise ValueError(f"unknown calibration record field(s): {sorted(unknown)}")
        missing = [name for name, f in fields.items() if name not in d
                   and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if missing:
            raise ValueError(f"calibration record lacks field(s): {missing}")
        kw = dict(d)
        if kw.get("blur", 0.0) is None:
            kw["blur"] = math.nan
        return cls(**kw)

    @classmethod
    def from_fit(cls, fit: "FitResult", *, acquisition_uid: str | None,
                 optics_state: dict[str, Any], fit_settings: dict[str, Any] | None = None,
                 supersedes: str | None = None) -> "CalibrationRecord":
        """Record a :class:`stemcal.fit.FitResult` made now, with a new uid.

        Parameters
        ----------
        fit : FitResult
            Its ``params``, ``quality``, ``blur`` and ``extra["uncertainty"]`` are kept.
        acquisition_uid : str or None
            Uid of the run the fit used.
        optics_state : dict
            Microscope state during the acquisition (see the class docstring).
        fit_settings : dict, optional
            How the fit was run.
        supersedes : str, optional
            Uid of a record this one corrects.
        """
        p = fit.params
        return cls(acquisition_uid=acquisition_uid, scan_rotation=p.scan_rotation,
                   flip_y=p.flip_y, overfocus=p.overfocus, cy=p.cy, cx=p.cx, descan=p.descan,
                   uncertainty=dict(fit.extra.get("uncertainty") or {}), quality=fit.quality,
                   blur=fit.blur, optics_state=dict(optics_state),
                   scan_pixel_size=p.scan_pixel_size, camera_length=p.camera_length,
                   detector_pixel_size=p.detector_pixel_size, semiconv=p.semiconv,
                   fit_settings=dict(fit_settings or {}), supersedes=supersedes)

    def correct(self, **changes: Any) -> "CalibrationRecord":
        """A new record (new uid, time now) with ``changes`` that supersedes this one."""
        kw: dict[str, Any] = {"uid": str(uuid.uuid4()), "time": time.time(), "supersedes": self.uid}
        return dataclasses.replace(self, **{**kw, **changes})

    def to_libertem_com(self, nav_shape: tuple[int, int] | None = None) -> dict[str, Any]:
        """Keyword arguments of LiberTEM's ``CoMUDF.with_params`` (see
        :func:`stemcal.apply.libertem_com_params`); with ``nav_shape`` the descan
        as ``regression``."""
        from .apply import libertem_com_params
        return libertem_com_params(self, nav_shape)

    def to_py4dstem(self) -> dict[str, Any]:
        """py4DSTEM-style rotation (radians) and transpose flag (see
        :func:`stemcal.apply.py4dstem_params`)."""
        from .apply import py4dstem_params
        return py4dstem_params(self)
