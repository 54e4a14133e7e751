"""What the app adjusts: a dataset, where it came from, and the geometry it starts at.

A :class:`Source` is opened from a data file and the sizes (:func:`open_file`),
or from a calibration record whose ``fit_settings["data"]`` says where its
frames are (:func:`open_record`; the recorder writes that for every acquisition
it calibrates, and the app for every manual record). Its :attr:`Source.data`
is what a manual record made from it stores there in turn.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..fit.cache import ReducedCache
from ..fit.disk import NoFeaturesError, find_disk
from ..formats import open_dataset
from ..record import CalibrationRecord
from ..runs import resource_path
from ..twin.params import OverfocusParams, semiconv_for_disk

__all__ = ["Sizes", "Source", "open_file", "open_record", "neutral_geometry", "initial_geometry"]


@dataclasses.dataclass(frozen=True)
class Sizes:
    """What the data do not say: the sizes (m), the overfocus guess (m; its sign must be
    right) and, if known, the convergence semi-angle (rad)."""

    scan_pixel_size: float
    camera_length: float
    detector_pixel_size: float
    overfocus: float
    semiconv: float | None = None

    def cold_start_kwargs(self) -> dict[str, Any]:
        """The size arguments of :func:`stemcal.fit.coarse.cold_start`."""
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Source:
    """A dataset opened for the app.

    Attributes
    ----------
    dataset : libertem DataSet
        Opened on the app's context.
    label : str
        For people: the file, or the record and its run.
    data : dict
        Where the frames are, as a record's ``fit_settings["data"]`` holds it
        (``uri``, ``nav_shape``, ``sig_shape``; ``dataset`` for an HDF5 dataset path).
    sizes : Sizes
        The inputs of a cold start (Auto).
    start : OverfocusParams or None
        The geometry to show first (a record's values); None: measured from the
        data by :func:`initial_geometry`.
    record : CalibrationRecord or None
        The record it was opened from.
    """

    dataset: Any
    label: str
    data: dict[str, Any]
    sizes: Sizes
    start: OverfocusParams | None = None
    record: CalibrationRecord | None = None

    @property
    def nav_shape(self) -> tuple[int, int]:
        return tuple(int(n) for n in self.dataset.shape.nav)  # type: ignore[return-value]

    @property
    def sig_shape(self) -> tuple[int, int]:
        return tuple(int(n) for n in self.dataset.shape.sig)  # type: ignore[return-value]


def open_file(ctx: Any, path: str | Path, sizes: Sizes, *,
              nav_shape: tuple[int, int] | None = None) -> Source:
    """A data file (``.npy``, ``.hdr``/``.mib``, ``.h5``) with the sizes given for it.

    Raises
    ------
    stemcal.formats.DatasetError
        The file cannot be read (one line naming the problem).
    """
    path = Path(path).resolve()
    ds = open_dataset(ctx, path, nav_shape=nav_shape)
    source = Source(dataset=ds, label=str(path), data={}, sizes=sizes)
    source.data = {"uri": path.as_uri(), "nav_shape": list(source.nav_shape),
                   "sig_shape": list(source.sig_shape)}
    return source


def open_record(ctx: Any, record: CalibrationRecord) -> Source:
    """The frames a record was made from, starting at the record's values.

    Raises
    ------
    ValueError
        The record does not say where its frames are, or they cannot be read
        (one line naming the record and the file).
    """
    data = dict(record.fit_settings.get("data") or {})
    if not data.get("uri"):
        raise ValueError(f"record {record.uid[:8]} does not say where its frames are")
    path = resource_path(str(data["uri"]))
    if not path.is_file():
        raise ValueError(f"record {record.uid[:8]}: its frames are not here any more ({path})")
    if data.get("dataset"):  # an acquisition's HDF5 file (the recorder's record)
        try:
            ds = ctx.load("hdf5", path=str(path), ds_path=str(data["dataset"]),
                          nav_shape=tuple(data["nav_shape"]), sig_shape=tuple(data["sig_shape"]))
        except Exception as exc:  # noqa: BLE001 - LiberTEM's errors vary; say which file
            raise ValueError(f"record {record.uid[:8]}: cannot read {path}: {exc}") from None
    else:
        nav = data.get("nav_shape")
        ds = open_dataset(ctx, path, nav_shape=tuple(nav) if nav else None)
    p = record.params()
    sizes = Sizes(scan_pixel_size=p.scan_pixel_size, camera_length=p.camera_length,
                  detector_pixel_size=p.detector_pixel_size, overfocus=p.overfocus,
                  semiconv=p.semiconv)
    label = f"record {record.uid[:8]} ({path.name})"
    return Source(dataset=ds, label=label, data=data, sizes=sizes, start=p, record=record)


def neutral_geometry(sizes: Sizes, sig_shape: tuple[int, int], *, cy: float | None = None,
                     cx: float | None = None, radius: float | None = None) -> OverfocusParams:
    """The sizes with rotation 0, no flip and no descan; the beam centre ``(cy, cx)``
    (default the detector middle) and, unless the sizes give it, the semi-angle of a disk of
    ``radius`` detector px (default a quarter of the smaller detector side)."""
    sy, sx = sig_shape
    semiconv = sizes.semiconv or semiconv_for_disk(
        radius if radius is not None else min(sy, sx) / 4,
        detector_pixel_size=sizes.detector_pixel_size, overfocus=sizes.overfocus,
        camera_length=sizes.camera_length)
    return OverfocusParams(overfocus=sizes.overfocus, scan_pixel_size=sizes.scan_pixel_size,
                           camera_length=sizes.camera_length,
                           detector_pixel_size=sizes.detector_pixel_size, semiconv=semiconv,
                           cy=float(sy / 2 if cy is None else cy),
                           cx=float(sx / 2 if cx is None else cx))


def initial_geometry(sizes: Sizes, cache: ReducedCache) -> OverfocusParams:
    """A first geometry from the sizes and the data, before any fit.

    :func:`neutral_geometry` with the beam centre and (unless given) the semi-angle
    from the bright-field disk of the frame sum, where one is found.
    """
    try:
        disk = find_disk(cache.frame_sum)
    except NoFeaturesError:
        return neutral_geometry(sizes, cache.sig_shape)
    return neutral_geometry(sizes, cache.sig_shape, cy=disk.cy, cx=disk.cx, radius=disk.radius)
