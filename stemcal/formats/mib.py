"""Quantum Detectors Merlin ``.mib`` frames with their ``.hdr``: reader check and writer."""
from __future__ import annotations

import datetime as _dt
import glob
import os
from pathlib import Path
from typing import Any

import numpy as np

from .common import MAX_SIDE, DatasetError, Probe, atomic, check_4d, nav_from_counts

__all__ = ["probe_mib", "write_mib", "MIB_HEADER_SIZE"]

#: Header size of a single-chip (1x1) Merlin frame, in bytes.
MIB_HEADER_SIZE = 384


def _read_hdr(path: Path) -> dict[str, str]:
    """Parse a Merlin ``.hdr`` file into a dict of ``Key -> value`` strings."""
    try:
        lines = path.read_text(encoding="ascii", errors="replace").splitlines()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc})") from exc
    if not lines or not lines[0].startswith("HDR"):
        raise DatasetError(f"{path}: not a Merlin .hdr file (first line must start with 'HDR')")
    fields = {}
    for line in lines[1:]:
        key, sep, value = line.partition("\t")
        if sep and key != "End":
            fields[key.rstrip(":")] = value.strip()
    return fields


def _mib_frame_layout(path: Path) -> tuple[int, tuple[int, int], np.dtype]:
    """Frame size in bytes, frame shape and pixel dtype from a ``.mib`` file's first header."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(64).decode("ascii").split(",")
            if head[0] != "MQ1":
                raise ValueError("does not start with 'MQ1'")
            header_size = int(head[2])
            if not 64 <= header_size <= 2**20:
                raise ValueError(f"header size {header_size} outside 64..{2**20} bytes")
            fh.seek(0)
            fields = fh.read(header_size).decode("ascii").split(",")
            width, height, pixel = int(fields[4]), int(fields[5]), fields[6].upper()
    except (OSError, ValueError, IndexError) as exc:
        raise DatasetError(f"{path}: not a readable Merlin .mib frame header ({exc})") from exc
    if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE):
        raise DatasetError(f"{path}: MIB frame header gives a {height} x {width} frame "
                           f"(each side must be 1..{MAX_SIDE}; corrupt header?)")
    if pixel not in ("U08", "U16", "U32"):
        raise DatasetError(f"{path}: MIB pixel type {pixel!r} is not supported (U08/U16/U32)")
    dtype = np.dtype(f">u{int(pixel[1:]) // 8}")
    return header_size + width * height * dtype.itemsize, (height, width), dtype


def probe_mib(path: Path) -> Probe:
    if path.suffix.lower() == ".hdr":
        hdr: dict[str, str] | None = _read_hdr(path)
        files = sorted(Path(p) for p in glob.glob(glob.escape(str(path.with_suffix(""))) + "*.mib"))
        if not files:
            raise DatasetError(f"{path}: no .mib file next to this .hdr")
        kwargs: dict[str, Any] = {"path": str(path)}
    else:
        sibling = path.with_suffix(".hdr")
        hdr = _read_hdr(sibling) if sibling.is_file() else None
        files = [path]
        kwargs = {"path": str(path), "disable_glob": True}
    n_frames, layout = 0, None
    for f in files:
        this = _mib_frame_layout(f) if f.stat().st_size else None
        if this is None:
            raise DatasetError(f"{f}: empty .mib file (zero frames)")
        if layout is not None and this != layout:
            raise DatasetError(f"{f}: frame size or type differs from {files[0].name}")
        layout = this
        size = f.stat().st_size
        if size % layout[0]:
            raise DatasetError(f"{f}: {size} bytes is not a whole number of {layout[0]}-byte "
                               f"frames (truncated or corrupt)")
        n_frames += size // layout[0]
    assert layout is not None
    nav = None
    if hdr is not None:
        try:
            declared = int(hdr["Frames in Acquisition (Number)"])
            per_trigger = int(hdr["Frames per Trigger (Number)"])
        except (KeyError, ValueError) as exc:
            raise DatasetError(f"{path}: .hdr lacks a valid frame count ({exc!r})") from exc
        if declared != n_frames:
            raise DatasetError(f"{path}: .hdr declares {declared} frames but the .mib data holds "
                               f"{n_frames} (truncated or mismatched)")
        if "ScanX" in hdr and "ScanY" in hdr:
            try:
                scan_x, scan_y = int(hdr["ScanX"]), int(hdr["ScanY"])
            except ValueError as exc:
                raise DatasetError(f"{path}: .hdr has an invalid ScanX/ScanY ({exc})") from exc
            nav = nav_from_counts(n_frames, scan_x, scan_y)
        else:
            nav = nav_from_counts(n_frames, per_trigger)
    return Probe("mib", n_frames, layout[1], nav, kwargs)


def _to_mib_dtype(arr: np.ndarray) -> np.ndarray:
    """Convert to ``uint8``/``uint16``, refusing values that would change."""
    if arr.dtype in (np.uint8, np.uint16):
        return arr
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ValueError("MIB data must be integer-valued; got non-integer or "
                             "non-finite floats")
    elif arr.dtype.kind not in "biu":
        raise ValueError(f"MIB data must be unsigned integers, got dtype {arr.dtype}")
    lo, hi = arr.min(), arr.max()
    if lo < 0 or hi > np.iinfo(np.uint16).max:
        raise ValueError(f"MIB data must lie in [0, 65535], got range [{lo}, {hi}]")
    return arr.astype(np.uint16)


def _mib_frame_header(seq: int, width: int, height: int, pixel: str, depth: int,
                      stamp: _dt.datetime) -> bytes:
    """One single-chip Merlin frame header, NUL-padded to :data:`MIB_HEADER_SIZE` bytes."""
    thresholds = ["1.000000E+1"] + ["0.000000E+0"] * 7
    dacs = ["000"] * 27
    fields = [
        "MQ1", f"{seq:06d}", f"{MIB_HEADER_SIZE:05d}", "01", f"{width:04d}", f"{height:04d}",
        pixel, "   1x1", "01", stamp.strftime("%Y-%m-%d %H:%M:%S.%f"), "0.001000",
        "0", "0", "0", *thresholds, "3RX", *dacs, "MQ1A",
        stamp.strftime("%Y-%m-%dT%H:%M:%S.%f000Z"), "1000000ns", str(depth),
    ]
    text = (",".join(fields) + ",").encode("ascii")  # the reader needs the trailing comma
    if len(text) > MIB_HEADER_SIZE:  # pragma: no cover - fixed-width fields
        raise AssertionError("MIB header too long")
    return text.ljust(MIB_HEADER_SIZE, b"\0")


def _mib_hdr_text(n_frames: int, per_trigger: int, depth: int, stamp: _dt.datetime) -> str:
    """Merlin ``.hdr`` acquisition header (tab-separated ``Key:\\tvalue`` lines)."""
    rows = [
        ("Time and Date Stamp (day, mnth, yr, hr, min, s)", stamp.strftime("%d/%m/%Y %H:%M:%S")),
        ("Chip ID", "stemcal-twin,-,-,-"),
        ("Chip Type (Medipix 3.0, Medipix 3.1, Medipix 3RX)", "Medipix 3RX"),
        ("Assembly Size (NX1, 2X2)", "   1x1"),
        ("Chip Mode  (SPM, CSM, CM, CSCM)", "SPM"),
        ("Counter Depth (number)", str(depth)),
        ("Gain", "SLGM"),
        ("Active Counters", "Alternating"),
        ("Acquisition Type (Normal, Th_scan, Config)", "Normal"),
        ("Frames in Acquisition (Number)", str(n_frames)),
        ("Frames per Trigger (Number)", str(per_trigger)),
        ("Trigger Start (Positive, Negative, Internal)", "Rising Edge"),
        ("Trigger Stop (Positive, Negative, Internal)", "Internal"),
        ("Readout System", "stemcal digital twin"),
    ]
    return "HDR,\t\n" + "".join(f"{k}:\t{v}\n" for k, v in rows) + "End\t"


def write_mib(path: str | os.PathLike, data: np.ndarray) -> Path:
    """Write a 4D array as Quantum Detectors Merlin ``<stem>.mib`` + ``<stem>.hdr``.

    Each frame is a 384-byte single-chip ASCII header followed by big-endian
    pixels (``U08`` for ``uint8`` input, ``U16`` otherwise). The ``.hdr`` sets
    ``Frames per Trigger`` to the scan width ``nx`` (one trigger per scan line),
    from which LiberTEM infers the navigation shape ``(ny, nx)``.

    Parameters
    ----------
    path
        ``<stem>.mib`` or ``<stem>.hdr`` (either names the pair).
    data
        Array of shape ``(ny, nx, sy, sx)``: ``uint8``, ``uint16`` or any
        integer-valued array within ``[0, 65535]``.

    Returns
    -------
    Path
        The ``.hdr`` path (what to pass to ``ctx.load('mib', path=...)``).

    Raises
    ------
    ValueError
        If ``data`` is not 4D or does not fit ``uint16`` exactly.
    """
    arr = _to_mib_dtype(check_4d(data))
    ny, nx, sy, sx = arr.shape
    pixel, depth = ("U08", 6) if arr.dtype == np.uint8 else ("U16", 12)
    frames = arr.reshape(ny * nx, sy, sx).astype(arr.dtype.newbyteorder(">"), copy=False)
    base = Path(path).with_suffix("")
    mib, hdr = base.with_suffix(".mib"), base.with_suffix(".hdr")
    stamp = _dt.datetime.now()
    with atomic(hdr) as tmp_hdr, atomic(mib) as tmp_mib:  # .mib lands first
        with open(tmp_mib, "wb") as fh:
            for i, frame in enumerate(frames):
                fh.write(_mib_frame_header(i + 1, sx, sy, pixel, depth, stamp))
                fh.write(np.ascontiguousarray(frame).tobytes())
        tmp_hdr.write_text(_mib_hdr_text(ny * nx, nx, depth, stamp), encoding="ascii")
    return hdr
