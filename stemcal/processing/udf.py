"""LiberTEM UDF that projects overfocused frames into the specimen plane."""
from __future__ import annotations

import numpy as np
from libertem.udf import UDF

from ..checks import nonnegative
from ..twin.model import scan_middle
from ..twin.params import OverfocusParams
from .geometry import ProjectionGeometry
from .images import pass_images
from .threads import udf_threads, wait_jobs
from .tile import add_block, start_tile
from .window import choose_bin, disk_extent, disk_window


class OverfocusUDF(UDF):
    """Project every frame of an overfocused 4D-STEM scan into the specimen plane.

    Parameters
    ----------
    params : OverfocusParams
        Geometry (rotation, flip, overfocus, centre, descan, sizes).
    upsample : float
        Target pixels per scan pixel (default 1).
    disk_fraction : float
        Fraction of the bright-field disk radius used (default 0.95).
    bin_pitch : float
        Detector pixels are summed in ``b x b`` bins before they are projected,
        with ``b`` the largest side whose bin projects to at most ``bin_pitch``
        target pixels (:func:`~stemcal.processing.window.choose_bin`; default 0.6).
        Where the detector oversamples the shadow image (a detector pixel is a
        small fraction of a scan pixel) this saves most of the work and adds a
        box blur narrower than the bilinear footprint. ``0`` projects every
        detector pixel on its own.

    Results (all float64; target images have the shape of
    :class:`~stemcal.processing.geometry.ProjectionGeometry`)
    -------
    point : nav
        Bilinear sample of each frame at its beam centre (a bright-field image).
    selected : single (H, W)
        The frame at the scan middle ``(ny // 2, nx // 2)`` projected to specimen coordinates.
    shifted_sum : single (H, W)
        All frames projected at their own scan positions and summed.
    sum : single (H, W)
        The sum of all frames projected as if taken at the scan middle (no descan).
    coverage : single (H, W)
        Summed disk weights behind ``shifted_sum``.
    shifted_sum_normalised : single (H, W)
        ``shifted_sum / coverage``, NaN where coverage is below 5 % of its maximum.

    Notes
    -----
    Dataset navigation must be 2D (ny, nx) and the signal 2D (detector y, x).
    Frames are read once, in their native dtype, by
    :func:`~stemcal.processing.tile.project_tile`; only detector pixels that
    can reach an image (those inside the used disk of their own frame or of the
    scan middle) are read. Within a task the frames are shared out to
    LiberTEM's ``threads_per_worker`` Numba threads (both cores inline, one
    thread per dask worker).
    """

    def __init__(self, params: OverfocusParams, upsample: float = 1.0,
                 disk_fraction: float = 0.95, bin_pitch: float = 0.6, **kwargs):
        nonnegative("bin_pitch", bin_pitch)
        super().__init__(params=params, upsample=upsample, disk_fraction=disk_fraction,
                         bin_pitch=bin_pitch, **kwargs)

    # -- set-up -------------------------------------------------------------
    def _geometry(self) -> ProjectionGeometry:
        nav = tuple(self.meta.dataset_shape.nav)
        sig = tuple(self.meta.dataset_shape.sig)
        if len(nav) != 2:
            raise ValueError(f"OverfocusUDF needs a 2D scan (ny, nx), dataset nav shape is {nav}")
        if len(sig) != 2:
            raise ValueError(f"OverfocusUDF needs 2D frames, dataset signal shape is {sig}")
        return ProjectionGeometry(self.params.params, nav, sig, upsample=self.params.upsample,
                                  disk_fraction=self.params.disk_fraction)

    def get_preferred_input_dtype(self):
        return self.USE_NATIVE_DTYPE

    def _bin(self, geo: ProjectionGeometry) -> int:
        return choose_bin(geo.A, geo.sig_shape, float(self.params.bin_pitch))

    def get_task_data(self):
        geo = self._geometry()
        return {"A": np.ascontiguousarray(geo.A), "geometry": geo, "bin": self._bin(geo)}

    def get_tiling_preferences(self):
        # Large tiles: LiberTEM's per-tile work runs between the threaded kernel calls, so
        # fewer tiles leave the cores idle less (measured on 128x128 x 256x256: 32 MiB tiles
        # 0.62-0.66 s a pass, 4 MiB tiles 0.74-0.88 s, before the stencil). LiberTEM grows
        # the depth first: on an mmap'd file a tile is a band of rows of every frame of
        # the partition (32 of 256 rows here), and a frame is seen in several tiles.
        return {"depth": self.TILE_DEPTH_MAX, "total_size": 32 * 2 ** 20}

    def get_result_buffers(self):
        geo = self._geometry()
        shape = geo.shape
        b = self._bin(geo)
        nb = (-(-geo.sig_shape[0] // b), -(-geo.sig_shape[1] // b))
        T = udf_threads(self.meta)
        return {
            "point": self.buffer(kind="nav", dtype="float64"),
            "selected_acc": self.buffer(kind="single", extra_shape=shape + (2,),
                                        dtype="float64", use="private"),
            "selected": self.buffer(kind="single", extra_shape=shape, dtype="float64",
                                    use="result_only"),
            "acc": self.buffer(kind="single", extra_shape=(T,) + shape + (2,), dtype="float64",
                               use="private"),
            "fsum": self.buffer(kind="single", extra_shape=(T,) + nb, dtype="float64",
                                use="private"),
            "shifted_sum": self.buffer(kind="single", extra_shape=shape, dtype="float64",
                                       use="result_only"),
            "coverage": self.buffer(kind="single", extra_shape=shape, dtype="float64",
                                    use="result_only"),
            "sum": self.buffer(kind="single", extra_shape=shape, dtype="float64",
                               use="result_only"),
            "shifted_sum_normalised": self.buffer(kind="single", extra_shape=shape,
                                                  dtype="float64", use="result_only"),
        }

    # -- processing ---------------------------------------------------------
    def _frames(self):
        """Beam centres, offsets, the index of the scan-middle frame (or -1), the reference
        centre and the centres' extent of the current tile's frames; the sig-split tiles of
        the same frames share them."""
        geo: ProjectionGeometry = self.task_data.geometry
        sl = self.meta.slice
        key = (geo, int(sl.origin[0]), int(sl.shape[0]))  # the geometry object of this task
        cached = getattr(self, "_frames_cache", None)
        if cached is not None and cached[0][0] is geo and cached[0][1:] == key[1:]:
            return cached[1]
        scan_yx = np.asarray(self.meta.coordinates, dtype=float).reshape(-1, 2)
        centres = geo.centres(scan_yx)
        offsets = geo.offsets(scan_yx, centres)
        mid = scan_middle(geo.nav_shape)
        hit = np.flatnonzero((scan_yx[:, 0] == mid[0]) & (scan_yx[:, 1] == mid[1]))
        c0 = np.array([geo.params.cy, geo.params.cx], dtype=float)
        value = (centres, offsets, int(hit[0]) if hit.size else -1, c0, disk_extent(centres, c0))
        self._frames_cache = (key, value)
        return value

    def _wait(self, keep: int = 0) -> None:
        """Wait for the oldest kernel calls until at most ``keep`` are still running."""
        pending = self.__dict__.setdefault("_pending", [])
        while len(pending) > keep:
            wait_jobs(pending.pop(0)[0])

    def _own_copy(self, window: np.ndarray) -> np.ndarray:
        """``window`` copied into one of three buffers of this UDF, used in turn (the other
        two may still be read by the kernel calls of the two tiles before)."""
        bufs = getattr(self, "_copy_bufs", None)
        if bufs is None:
            bufs = self._copy_bufs = [np.empty(0, dtype=np.uint8) for _ in range(3)]
            self._copy_turn = 0
        self._copy_turn = (self._copy_turn + 1) % len(bufs)
        nbytes = window.size * window.dtype.itemsize
        if bufs[self._copy_turn].size < nbytes:
            bufs[self._copy_turn] = np.empty(nbytes, dtype=np.uint8)
        out = bufs[self._copy_turn][:nbytes].view(window.dtype).reshape(window.shape)
        np.copyto(out, window)
        return out

    def process_tile(self, tile):
        geo: ProjectionGeometry = self.task_data.geometry
        b = int(self.task_data.bin)
        centres, offsets, mid, c0, extent = self._frames()
        sig = self.meta.sig_slice
        oy, ox = int(sig.origin[0]), int(sig.origin[1])
        data = np.asarray(tile).reshape((tile.shape[0],) + tuple(sig.shape))
        # Only the part of the tile within reach of the used disks is read at all.
        y0, y1, x0, x1 = disk_window(extent, geo.r_out, b, (oy, ox), data.shape[1:])
        if y0 >= y1 or x0 >= x1:
            return
        data = data[:, y0:y1, x0:x1]
        oy, ox = oy + y0, ox + x0
        A = self.task_data.A
        acc, fsum = self.results.acc, self.results.fsum
        if acc.shape[0] > 1:
            # Pipelined: the pool works on this tile while LiberTEM reads (and decodes) the
            # next one; the next call, or postprocess, waits for it. A read-only tile is a
            # view of the file's mmap, kept alive by the reference held here; any other
            # tile's buffer may be refilled by LiberTEM, so its window is copied first.
            # While LiberTEM decodes on this thread, one kernel thread fewer leaves it a core.
            # With that one thread, two tiles may be queued for it (it takes them in turn, so
            # they never write the same accumulator at once): decoded tiles are small, and
            # waiting for each one's kernel before the next decode left both threads idle
            # in turn. Chunks on a pool of several threads must not overlap: one at a time;
            # so must calls on different pools (each entry keeps its thread count).
            jobs, depth = acc.shape[0], 1
            if data.flags.writeable:
                data = self._own_copy(data)
                jobs = acc.shape[0] - 1
                depth = 2 if jobs == 1 else 1
            pending = self.__dict__.setdefault("_pending", [])
            same_pool = all(entry[2] == jobs for entry in pending)
            self._wait(keep=depth - 1 if same_pool else 0)
            pending.append((start_tile(data, oy, ox, b, centres, c0, offsets, A, geo.r_in,
                                       geo.r_out, acc, fsum, threads=jobs), data, jobs))
        add_block(data, oy, ox, b, centres, c0, offsets, A, geo.r_in, geo.r_out, acc=acc,
                  fsum=fsum, points=self.results.point, selected_acc=self.results.selected_acc,
                  mid=mid, splat=acc.shape[0] == 1)

    def postprocess(self):
        # the last tile's kernel of this partition must be done before LiberTEM sends results
        self._wait()

    def merge(self, dest, src):
        dest.point[:] += src.point
        dest.selected_acc[:] += src.selected_acc
        dest.acc[0] += src.acc.sum(axis=0)
        dest.fsum[0] += src.fsum.sum(axis=0)

    def get_results(self):
        geo = self._geometry()
        return pass_images(geo, self._bin(geo), np.asarray(self.results.acc),
                           np.asarray(self.results.fsum, dtype=float), self.results.point,
                           np.asarray(self.results.selected_acc))
