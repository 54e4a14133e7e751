"""A durable local spool for calibration records whose catalog could not be written.

:func:`stemcal.catalog.delivery.write_record_or_spool` puts every record into
the spool *before* writing it to the catalog and removes it once the catalog
has it, so a record whose write fails or is cut off (server down, permission
denied, disk full, path not creatable, the process killed) stays here: the
record, its images and the location of the catalog it was meant for, one
file per record in ``$XDG_STATE_HOME/stemcal/spool`` (default
``~/.local/state/stemcal/spool``; ``$STEMCAL_SPOOL`` overrides;
:func:`stemcal.locations.spool_dir`). :func:`stemcal.catalog.delivery.sync`
(``stemcal sync``) later delivers each to its catalog, exactly once. This
module knows the files only, not the catalog.

File format: ``<uid>.npz`` (NumPy ``savez``, no pickles) holding the images
under their names and, under ``__spool__``, the UTF-8 JSON of
``{"format": 1, "record": CalibrationRecord.to_dict(), "location": str,
"reason": str, "spooled_at": unix time, "refused": bool}``. It is written
to a temporary name, fsync'd, renamed and the directory fsync'd, so a crash
leaves either the whole file or none. While a process writes the record to
the catalog it holds an ``flock`` on the file, and ``sync`` leaves it alone. No credentials are stored: a location is a directory or
a URI with any user-info and ``api_key`` query parameter removed.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import re
import tempfile
import time
import urllib.parse
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from ..locations import spool_dir
from ..record import CalibrationRecord

log = logging.getLogger(__name__)

FORMAT = 1
_META = "__spool__"
_UID = re.compile(r"[0-9A-Za-z][0-9A-Za-z._-]{0,127}")


def redact_location(location: str | os.PathLike) -> str:
    """``location`` as text without credentials (URI user-info, ``api_key`` query parameter)."""
    text = str(location)
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https"):
        return text
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = urllib.parse.urlencode([(k, v) for k, v in urllib.parse.parse_qsl(parts.query)
                                    if k.lower() != "api_key"])
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact(text: str) -> str:
    """``text`` with ``api_key=...`` values and URI passwords blanked (for reasons and logs)."""
    text = re.sub(r"(?i)(api_key=)[^&\s'\"]+", r"\1[redacted]", text)
    return re.sub(r"(https?://)[^/@\s]+@", r"\1[redacted]@", text)


@dataclasses.dataclass(frozen=True)
class SpoolEntry:
    """One spooled record: where it was meant to go and why it is here."""

    path: Path
    record: CalibrationRecord
    images: dict[str, np.ndarray]
    location: str | None
    reason: str
    spooled_at: float
    refused: bool = False

    @property
    def uid(self) -> str:
        return self.record.uid


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def spool_record(record: CalibrationRecord, images: Mapping[str, np.ndarray] | None,
                 location: str | os.PathLike | None, reason: str, *,
                 directory: str | os.PathLike | None = None, refused: bool = False,
                 hold: bool = False, expected: bool = False) -> Path | tuple[Path, int]:
    """Store ``record`` durably for later delivery to the catalog at ``location``.

    Parameters
    ----------
    record : CalibrationRecord
    images : dict of str to ndarray, optional
        As for :func:`stemcal.catalog.write_record`.
    location : str or path or None
        The catalog it was meant for (directory or URI; credentials are removed).
        None: unknown, :func:`sync` reports it as undeliverable.
    reason : str
        Why it could not be written (shown by ``stemcal sync``).
    directory : path, optional
        Spool directory; default :func:`spool_dir`.
    refused : bool
        The catalog refused the API key (not an outage: the key must be fixed).
    hold : bool
        Return with an exclusive ``flock`` on the file held (taken before the file
        appears under its name), so that ``sync`` leaves it alone while the
        caller writes the record to the catalog itself.
    expected : bool
        Spooling is the normal course (a courier delivers it): logged at INFO, not WARNING.

    Returns
    -------
    Path, or (Path, int)
        The spool file (``<uid>.npz``), complete and fsync'd when this returns;
        with ``hold``, also the file descriptor holding the lock (close it to release).

    Raises
    ------
    OSError
        The spool itself cannot be written.
    ValueError
        An image name clashes with the metadata key, or the uid is not file-name safe.
    """
    if not _UID.fullmatch(record.uid):
        raise ValueError(f"record uid {record.uid!r} is not safe as a file name")
    arrays = {str(k): np.asarray(v) for k, v in (images or {}).items()}
    if _META in arrays:
        raise ValueError(f"image name {_META!r} is reserved")
    meta = {"format": FORMAT, "record": record.to_dict(),
            "location": None if location is None else redact_location(location),
            "reason": redact(" ".join(str(reason).split())), "spooled_at": time.time(),
            "refused": bool(refused)}
    blob = json.dumps(meta, allow_nan=True).encode()
    d = Path(directory) if directory is not None else spool_dir()
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    final = spool_path(record.uid, d)
    fd, tmp = tempfile.mkstemp(prefix=f".{record.uid}.", suffix=".tmp", dir=d)
    held = -1
    try:
        if hold:
            held = os.dup(fd)
            fcntl.flock(held, fcntl.LOCK_EX)
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays, **{_META: np.frombuffer(blob, dtype=np.uint8)})
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if held >= 0:
            os.close(held)
        raise
    fsync_dir(d)
    if hold:
        log.debug("calibration record %s spooled to %s before writing it", record.uid, final)
        return final, held
    log.log(logging.INFO if expected else logging.WARNING,
            "calibration record %s spooled to %s (catalog %s: %s)", record.uid, final,
            meta["location"], meta["reason"])
    return final


def read_entry(path: str | os.PathLike) -> SpoolEntry:
    """The spool file at ``path``.

    Raises
    ------
    ValueError
        Not a readable spool file of a known format.
    """
    p = Path(path)
    try:
        with np.load(p, allow_pickle=False) as z:
            meta = json.loads(bytes(z[_META]).decode())
            images = {k: z[k] for k in z.files if k != _META}
        if meta.get("format") != FORMAT:
            raise ValueError(f"unknown spool format {meta.get('format')!r}")
        record = CalibrationRecord.from_dict(meta["record"])
    except (OSError, EOFError, KeyError, TypeError, ValueError, zipfile.BadZipFile) as exc:
        raise ValueError(f"unreadable spool file {p}: {type(exc).__name__}: {exc}") from exc
    return SpoolEntry(path=p, record=record, images=images, location=meta.get("location"),
                      reason=str(meta.get("reason", "")),
                      spooled_at=float(meta.get("spooled_at", 0)),
                      refused=bool(meta.get("refused", False)))


def spooled(directory: str | os.PathLike | None = None,
            damaged: list[tuple[str, str]] | None = None) -> list[SpoolEntry]:
    """The spooled records, oldest spooled first; unreadable files are skipped with a warning
    (and, where ``damaged`` is given, added to it as ``(path, reason)``; they stay in place)."""
    d = Path(directory) if directory is not None else spool_dir()
    entries = []
    for p in sorted(d.glob("*.npz")) if d.is_dir() else ():
        try:
            entries.append(read_entry(p))
        except ValueError as exc:
            log.warning("%s", exc)
            if damaged is not None:
                damaged.append((str(p), str(exc)))
    entries.sort(key=lambda e: e.spooled_at)
    return entries


def spool_path(uid: str, directory: str | os.PathLike | None = None) -> Path:
    """Where record ``uid``'s spool file is (or would be): ``<directory>/<uid>.npz``."""
    d = Path(directory) if directory is not None else spool_dir()
    return d / f"{uid}.npz"


def find(uid: str, directory: str | os.PathLike | None = None) -> SpoolEntry | None:
    """The spool entry of record ``uid`` (full uid), or None."""
    p = spool_path(uid, directory)
    if not _UID.fullmatch(uid) or not p.is_file():
        return None
    return read_entry(p)


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    """An exclusive lock on the spool, so two syncs cannot deliver one record twice."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(directory / ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def failure_reason(exc: BaseException) -> str:
    """One short line naming ``exc``: type and message (for an HTTP error, the status and the
    server's explanation), SQL and credentials left out."""
    text = " ".join(str(exc).split())
    response = getattr(exc, "response", None)
    try:
        detail = response.json().get("detail") if response is not None else None
    except Exception:  # noqa: BLE001 - no JSON body: keep the message
        detail = None
    if isinstance(detail, str) and detail:
        text = f"{response.status_code} {' '.join(detail.split())}"
    text = re.split(r" \[SQL: | \(Background on this error", text)[0]
    text = redact(f"{type(exc).__name__}: {text}")
    return text if len(text) <= 300 else text[:297] + "..."


__all__ = ["failure_reason", "spool_dir", "spool_path", "spool_record", "spooled", "find",
           "read_entry", "SpoolEntry", "redact", "redact_location", "locked", "fsync_dir"]
