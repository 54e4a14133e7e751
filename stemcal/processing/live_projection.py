"""The OverfocusUDF's images, built up block by block as frames arrive.

:class:`LiveProjection` runs the same pass kernels as
:class:`stemcal.processing.OverfocusUDF` (bin on the fly, frame sum,
bilinear splat; :func:`stemcal.processing.tile.add_block`) on blocks of
frames at known flat scan positions, so that a live callback can show the
images while a scan is being taken. Once every frame has been added, its
:meth:`~LiveProjection.images` equal a full OverfocusUDF pass with the same
parameters (tested).
"""
from __future__ import annotations

import threading

import numpy as np

from ..twin.model import scan_middle
from ..twin.params import OverfocusParams
from .geometry import ProjectionGeometry, nav_coordinates
from .images import pass_images
from .threads import available_cores
from .tile import add_block
from .window import choose_bin

__all__ = ["LiveProjection"]


class LiveProjection:
    """Accumulate the OverfocusUDF images of a scan from blocks of frames.

    Parameters
    ----------
    params : OverfocusParams
        Geometry the frames are projected with.
    nav_shape, sig_shape : (int, int)
        Scan shape (ny, nx) and detector shape (sy, sx), pixels.
    upsample, disk_fraction, bin_pitch : float
        As :class:`~stemcal.processing.OverfocusUDF`.
    threads : int, optional
        Threads of the pass kernel; default every core this process may use.

    Notes
    -----
    :meth:`add` may be called from one thread while another reads
    :meth:`images`; each frame position may be added once.
    """

    def __init__(self, params: OverfocusParams, nav_shape: tuple[int, int],
                 sig_shape: tuple[int, int], *, upsample: float = 1.0,
                 disk_fraction: float = 0.95, bin_pitch: float = 0.6,
                 threads: int | None = None) -> None:
        self.geometry = ProjectionGeometry(params, tuple(nav_shape), tuple(sig_shape),
                                           upsample=upsample, disk_fraction=disk_fraction)
        geo = self.geometry
        self.bin = choose_bin(geo.A, geo.sig_shape, float(bin_pitch))
        b = self.bin
        nb = (-(-geo.sig_shape[0] // b), -(-geo.sig_shape[1] // b))
        T = max(1, int(threads or available_cores()))
        self._A = np.ascontiguousarray(geo.A)
        self._c0 = np.array([geo.params.cy, geo.params.cx], dtype=float)
        self._acc = np.zeros((T,) + geo.shape + (2,))
        self._fsum = np.zeros((T,) + nb)
        self._selected = np.zeros(geo.shape + (2,))
        self._point = np.full(geo.nav_shape, np.nan)
        self._seen = np.zeros(geo.nav_shape[0] * geo.nav_shape[1], dtype=bool)
        mid = scan_middle(geo.nav_shape)
        self._mid = int(mid[0]) * geo.nav_shape[1] + int(mid[1])
        self._lock = threading.Lock()

    @property
    def n_frames(self) -> int:
        """Frames of the whole scan."""
        return int(self._seen.size)

    @property
    def frames_done(self) -> int:
        """Frames added so far."""
        return int(np.count_nonzero(self._seen))

    def add(self, start: int, frames: np.ndarray) -> None:
        """Project ``frames`` ``(k, sy, sx)`` taken at flat scan positions ``start .. start+k-1``.

        Raises
        ------
        ValueError
            Frames of the wrong shape, positions outside the scan, or
            positions already added.
        """
        frames = np.asarray(frames)
        geo = self.geometry
        if frames.ndim != 3 or frames.shape[1:] != geo.sig_shape:
            raise ValueError(f"frames must be (k, {geo.sig_shape[0]}, {geo.sig_shape[1]}), "
                             f"got {frames.shape}")
        k = frames.shape[0]
        if not 0 <= start <= self.n_frames - k:
            raise ValueError(f"frames at {start}..{start + k - 1} are outside the scan of "
                             f"{self.n_frames} frames")
        if k == 0:
            return
        idx = np.arange(start, start + k)
        if self._seen[idx].any():
            raise ValueError(f"frames at {start}..{start + k - 1} were already added")
        scan_yx = nav_coordinates(idx, geo.nav_shape)
        centres = geo.centres(scan_yx)
        offsets = geo.offsets(scan_yx, centres)
        acc = np.zeros_like(self._acc)
        fsum = np.zeros_like(self._fsum)
        pts = np.zeros(k)
        selected = np.zeros_like(self._selected)
        mid = self._mid - start if start <= self._mid < start + k else -1
        add_block(frames, 0, 0, self.bin, centres, self._c0, offsets, self._A, geo.r_in,
                  geo.r_out, acc=acc, fsum=fsum, points=pts, selected_acc=selected, mid=mid)
        with self._lock:  # readers see whole blocks only
            self._acc += acc
            self._fsum += fsum
            self._point.flat[idx] = pts
            if mid >= 0:
                self._selected += selected
            self._seen[idx] = True

    def images(self) -> dict[str, np.ndarray]:
        """The images of the frames added so far (names and meaning as the OverfocusUDF's).

        ``point`` is NaN at positions not yet added.
        """
        with self._lock:
            acc, fsum = self._acc.copy(), self._fsum.copy()
            point, selected = self._point.copy(), self._selected.copy()
        return pass_images(self.geometry, self.bin, acc, fsum, point, selected)
