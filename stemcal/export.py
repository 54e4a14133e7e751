"""Export calibration records: JSON text, or a group of attributes in an HDF5 file.

JSON is :meth:`CalibrationRecord.to_dict` (plain types, NaN as null). In HDF5
the record becomes one group (default ``stemcal_calibration``) of an existing
file -- e.g. the experiment's own data file -- holding only attributes, so the
file's datasets are left as they are:

* ``stemcal_record`` = ``"CalibrationRecord"`` and ``format_version`` = 1 (markers);
* strings: ``uid``, ``quality``, ``acquisition_uid`` and ``supersedes`` (absent when None);
* floats: ``time`` (s since the epoch), ``scan_rotation`` (deg, LiberTEM's
  convention), ``overfocus`` (m), ``cy``, ``cx`` (detector px), ``blur`` (NaN:
  not measured), ``scan_pixel_size``, ``camera_length``, ``detector_pixel_size`` (m),
  ``semiconv`` (rad);
* ``flip_y`` a bool; ``descan`` a 2x2 float array (detector px per scan px, rows
  detector (y, x), columns scan (y, x));
* ``uncertainty``, ``optics_state``, ``fit_settings``, ``versions``: JSON text;
* ``units``: JSON text mapping field -> unit.

:func:`read_hdf5` and :func:`record_from_json` give the same record back.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from .record import CalibrationRecord

__all__ = ["record_to_json", "record_from_json", "write_json", "write_hdf5", "read_hdf5",
           "DEFAULT_GROUP", "UNITS"]

#: Group the record goes to in an HDF5 file unless told otherwise.
DEFAULT_GROUP = "stemcal_calibration"
FORMAT_VERSION = 1
MARKER = "CalibrationRecord"
#: Units of the record's numeric fields.
UNITS = {"time": "s", "scan_rotation": "deg", "overfocus": "m", "cy": "px", "cx": "px",
         "descan": "px/scan px", "scan_pixel_size": "m", "camera_length": "m",
         "detector_pixel_size": "m", "semiconv": "rad", "blur": ""}
_OPTIONAL_STR = ("acquisition_uid", "supersedes")
_JSON_FIELDS = ("uncertainty", "optics_state", "fit_settings", "versions")


def record_to_json(record: CalibrationRecord, *, indent: int | None = 2) -> str:
    """``record`` as strict JSON text (:meth:`CalibrationRecord.to_dict`)."""
    return json.dumps(record.to_dict(), indent=indent, allow_nan=False)


def record_from_json(text: str) -> CalibrationRecord:
    """Inverse of :func:`record_to_json`.

    Raises
    ------
    ValueError
        Not JSON, not an object, or not a valid record.
    """
    try:
        d = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not a JSON calibration record: {exc}") from None
    if not isinstance(d, dict):
        raise ValueError(f"a JSON calibration record is an object, got {type(d).__name__}")
    return CalibrationRecord.from_dict(d)


def write_json(record: CalibrationRecord, path: str | os.PathLike) -> Path:
    """Write :func:`record_to_json` to a new file ``path``.

    Raises
    ------
    FileExistsError
        ``path`` exists (nothing is overwritten).
    """
    p = Path(path)
    with open(p, "x", encoding="utf-8") as f:
        f.write(record_to_json(record) + "\n")
    return p


def _check_group(group: str) -> str:
    parts = [s for s in str(group).split("/") if s]
    if not parts or any(s in (".", "..") for s in parts):
        raise ValueError(f"group must be an HDF5 path like 'stemcal_calibration', got {group!r}")
    return "/".join(parts)


def write_hdf5(record: CalibrationRecord, path: str | os.PathLike,
               group: str = DEFAULT_GROUP) -> str:
    """Write ``record`` as the attributes of a new group in the existing HDF5 file ``path``.

    Only the group (and missing parent groups) are created; the file's datasets
    and other groups are not touched.

    Parameters
    ----------
    record : CalibrationRecord
    path : path
        An existing HDF5 file, opened read-write.
    group : str
        Path of the new group inside the file.

    Returns
    -------
    str
        The group's absolute path in the file.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        ``path`` is not an HDF5 file, the group already exists, or ``group`` is
        not a valid path.
    """
    import h5py

    name = _check_group(group)
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no HDF5 file at {p} (export writes into an existing file)")
    if not h5py.is_hdf5(p):
        raise ValueError(f"{p} is not an HDF5 file")
    with h5py.File(p, "r+") as f:
        if name in f:
            raise ValueError(f"{p} already has {'/' + name!r}; choose another group")
        g = f.create_group(name)
        a = g.attrs
        a["stemcal_record"] = MARKER
        a["format_version"] = FORMAT_VERSION
        for fld in dataclasses.fields(record):
            value = getattr(record, fld.name)
            if fld.name in _JSON_FIELDS:
                a[fld.name] = json.dumps(record.to_dict()[fld.name], allow_nan=False)
            elif fld.name == "descan":
                a[fld.name] = np.asarray(value, dtype=np.float64)
            elif fld.name == "flip_y":
                a[fld.name] = np.bool_(value)
            elif isinstance(value, str):
                a[fld.name] = value
            elif value is None and fld.name in _OPTIONAL_STR:
                continue
            else:
                a[fld.name] = np.float64(value)
        a["units"] = json.dumps(UNITS)
        return g.name


def read_hdf5(path: str | os.PathLike, group: str = DEFAULT_GROUP) -> CalibrationRecord:
    """The record :func:`write_hdf5` wrote to ``group`` of ``path``.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    KeyError
        The file has no such group.
    ValueError
        The group is not a stemcal calibration record (or a newer format).
    """
    import h5py

    name = _check_group(group)
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no HDF5 file at {p}")
    with h5py.File(p, "r") as f:
        if name not in f:
            raise KeyError(f"{p} has no group {'/' + name!r}")
        a = dict(f[name].attrs)
    if _text(a.get("stemcal_record")) != MARKER:
        raise ValueError(f"{p}:/{name} is not a stemcal calibration record")
    if int(a.get("format_version", 0)) > FORMAT_VERSION:
        raise ValueError(f"{p}:/{name} has format {a['format_version']}, newer than this "
                         f"stemcal reads ({FORMAT_VERSION})")
    d: dict[str, Any] = {}
    for fld in dataclasses.fields(CalibrationRecord):
        if fld.name not in a:
            if fld.name in _OPTIONAL_STR:
                d[fld.name] = None
            continue  # from_dict names what is missing
        value = a[fld.name]
        if fld.name in _JSON_FIELDS:
            d[fld.name] = json.loads(_text(value))
        elif fld.name == "descan":
            d[fld.name] = np.asarray(value, dtype=float).tolist()
        elif fld.name == "flip_y":
            d[fld.name] = bool(value)
        elif isinstance(value, (str, bytes)):
            d[fld.name] = _text(value)
        else:
            v = float(value)
            d[fld.name] = None if fld.name == "blur" and math.isnan(v) else v
    return CalibrationRecord.from_dict(d)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
