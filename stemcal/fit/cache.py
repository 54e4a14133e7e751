"""A reduced in-memory copy of a dataset for fast loss evaluation.

One pass over the raw data bins each frame ``bin x bin`` and keeps every
``stride``-th scan position along each axis, bounded by a memory budget.
The same pass records the full-resolution frame sum.
"""
from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np
from libertem.udf import UDF

from ..processing.threads import run_threads, udf_threads
from ..processing.kernels import bin_and_sum

log = logging.getLogger(__name__)

#: Default memory budget of a cache, bytes.
DEFAULT_BUDGET = 512 * 2**20


def binned_dtype(input_dtype, factor: int) -> np.dtype:
    """The dtype a cache keeps its binned frames in: the data's own for unbinned counts
    of at most 16 bits (``uint8``, ``uint16``: the values as they are, in half the
    memory of float32 or less), else ``float32`` (block sums may exceed the input's
    range; float32 holds integers exactly up to 2**24)."""
    dt = np.dtype(input_dtype)
    if int(factor) == 1 and dt.kind == "u" and dt.itemsize <= 2:
        return dt
    return np.dtype(np.float32)


class BinFramesUDF(UDF):
    """Bin frames ``factor x factor`` (nav buffer, :func:`binned_dtype`) and sum full frames.

    Results: ``binned`` (nav, (sy // factor, sx // factor)) and ``frame_sum``
    ((sy, sx), float64). One read per pixel (:func:`~stemcal.processing.kernels.bin_and_sum`);
    the frames of a tile are shared out to LiberTEM's ``threads_per_worker`` threads.
    """

    def __init__(self, factor: int = 1, **kwargs):
        super().__init__(factor=factor, **kwargs)

    def get_preferred_input_dtype(self):
        return self.USE_NATIVE_DTYPE

    def get_tiling_preferences(self):
        # Large tiles: each one is shared out to the threads and waited for, and with small
        # tiles (4 MiB: 16 frames x 32 rows here) the hand-over cost more than the binning.
        return {"depth": self.TILE_DEPTH_MAX, "total_size": 32 * 2 ** 20}

    def get_result_buffers(self):
        f = int(self.params.factor)
        sy, sx = self.meta.dataset_shape.sig
        return {
            "binned": self.buffer(kind="nav", extra_shape=(sy // f, sx // f),
                                  dtype=binned_dtype(self.meta.input_dtype, f)),
            # one full-frame sum per thread, added up in get_results
            "sums": self.buffer(kind="single", extra_shape=(udf_threads(self.meta), sy, sx),
                                dtype="float64", use="private"),
            "frame_sum": self.buffer(kind="single", extra_shape=(sy, sx), dtype="float64",
                                     use="result_only"),
        }

    def process_tile(self, tile):
        sig = self.meta.sig_slice
        oy, ox = int(sig.origin[0]), int(sig.origin[1])
        data = np.asarray(tile).reshape((tile.shape[0],) + tuple(sig.shape))
        h, w = data.shape[1:]
        f = int(self.params.factor)
        binned = self.results.binned
        sums = self.results.sums

        def work(t: int, i0: int, i1: int) -> None:
            bin_and_sum(data[i0:i1], oy, ox, f, binned[i0:i1], sums[t])  # adds into both

        run_threads(work, len(data), sums.shape[0])

    def merge(self, dest, src):
        dest.binned[:] += src.binned
        dest.sums[0] += src.sums.sum(axis=0)

    def get_results(self):
        # The valid-frame mask given as the nav mask broadcast over the frame (no memory):
        # LiberTEM's default builds it as one bool per binned pixel (67 MB for a 64x64 scan
        # of 128x128 frames), at every partial result of a pass with a progress bar.
        valid = self.meta.get_valid_nav_mask()
        binned = self.results.binned
        mask = True if valid is None else np.asarray(valid).reshape((-1,) + (1,) * (binned.ndim - 1))
        return {"binned": self.with_mask(binned, mask),
                "frame_sum": np.asarray(self.results.sums).sum(axis=0)}


@dataclasses.dataclass
class ReducedCache:
    """Binned, sub-sampled frames held in memory.

    Attributes
    ----------
    frames : (n, hb, wb) float32, or the data's own uint8 / uint16 where ``bin`` is 1
        Binned frames (sums of ``bin x bin`` detector pixels; :func:`binned_dtype`). The
        kernels read either; :meth:`mean_frame` accumulates in float32 either way (NumPy's
        mean of integers would accumulate in float64).
    scan_yx : (n, 2) float64
        Scan position of each cached frame, scan px.
    bin : int
        Detector binning; binned index ``j`` has detector coordinate ``j * bin + (bin - 1) / 2``.
    stride : int
        Scan sub-sampling step.
    nav_shape, sig_shape : (int, int)
        Shape of the full dataset.
    frame_sum : (sy, sx) float64
        Full-resolution sum of the cached (sub-sampled) frames.
    defects : dict
        Defective pixels found and filled in ``frames`` (``hot``, ``dead``: counts of
        cache pixels; :mod:`.defects`); empty where none were.
    """

    frames: np.ndarray
    scan_yx: np.ndarray
    bin: int
    stride: int
    nav_shape: tuple[int, int]
    sig_shape: tuple[int, int]
    frame_sum: np.ndarray
    defects: dict = dataclasses.field(default_factory=dict)
    #: Sub-sampled caches and groups of rows made from this cache (:meth:`subsample`, :meth:`group_rows`).
    _memo: dict = dataclasses.field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def pix_scale(self) -> float:
        return float(self.bin)

    @property
    def pix_offset(self) -> float:
        return (self.bin - 1) / 2.0

    def mean_frame(self) -> np.ndarray:
        """The mean cached frame, (hb, wb) float32: accumulated in float32 whatever the
        frames' dtype (:func:`binned_dtype`), so that a cache of uint16 counts gives the
        mean its float32 copy would."""
        return self.frames.mean(axis=0, dtype=np.float32)

    @property
    def nbytes(self) -> int:
        return int(self.frames.nbytes)

    def _grid(self) -> np.ndarray:
        """Each cached frame's position on the cache's scan lattice, (n, 2) int."""
        return np.rint(self.scan_yx / self.stride).astype(int)

    def _every(self, step: int) -> np.ndarray:
        """Which cached frames lie on every ``step``-th cached position along each axis."""
        grid = self._grid()
        return (grid[:, 0] % step == 0) & (grid[:, 1] % step == 0)

    def subsample(self, k: int) -> "ReducedCache":
        """A cache of every ``k``-th cached scan position along each axis (a copy, made
        once per ``k`` and kept)."""
        if k <= 1:
            return self
        if ("sub", k) not in self._memo:
            keep = self._every(k)
            self._memo[("sub", k)] = dataclasses.replace(
                self, frames=np.ascontiguousarray(self.frames[keep]), scan_yx=self.scan_yx[keep],
                stride=self.stride * k)
        return self._memo[("sub", k)]

    def rebinned(self, factor: int) -> "ReducedCache":
        """This cache with its frames binned ``factor x factor`` further (made once and kept).

        Pixels beyond the last whole block are dropped; ``frame_sum`` stays at full resolution.
        """
        if factor <= 1:
            return self
        if ("bin", factor) not in self._memo:
            n, h, w = self.frames.shape
            H, W = h // factor, w // factor
            # rows first (adding whole rows vectorises), then the columns of each bin: five
            # times faster than one sum over both block axes
            rows = self.frames[:, :H * factor, :W * factor].reshape(n, H, factor, W * factor)
            rows = rows.sum(axis=2, dtype=np.float32)
            frames = np.ascontiguousarray(rows[..., 0::factor])
            for k in range(1, factor):
                frames += rows[..., k::factor]
            self._memo[("bin", factor)] = dataclasses.replace(self, frames=frames,
                                                              bin=self.bin * factor)
        return self._memo[("bin", factor)]

    def group_rows(self, groups: int, step: int = 1) -> list[tuple[np.ndarray, np.ndarray]]:
        """The cached frames split into ``groups`` interleaved sub-lattices of the scan.

        ``groups`` 9: a 3x3 sub-lattice of cached positions; 4: a 2x2 sub-lattice; 2: a
        checkerboard; 1: all frames. With ``step`` > 1 only every ``step``-th cached
        position along each axis takes part (the frames of :meth:`subsample`), grouped on
        that coarser lattice. Returns ``(rows, scan_yx)`` per group: the group's rows of
        :attr:`frames` (int64, increasing) and their scan positions. The frames are not
        copied (the kernels read ``frames[rows]`` in place: a copy per group touched as
        much fresh memory as the cache). Made once per ``(groups, step)`` and kept.
        """
        if ("groups", groups, step) not in self._memo:
            on = self._every(step)
            grid = self._grid() // step
            if groups == 1:
                label = np.zeros(len(grid), dtype=int)
            elif groups in (4, 9):
                side = 2 if groups == 4 else 3
                label = (grid[:, 0] % side) * side + grid[:, 1] % side
            elif groups == 2:
                label = (grid[:, 0] + grid[:, 1]) % 2
            else:
                raise ValueError(f"groups must be 1, 2, 4 or 9, got {groups}")
            parts = []
            for k in range(groups):
                rows = np.flatnonzero(on & (label == k)).astype(np.int64)
                parts.append((rows, self.scan_yx[rows]))
            self._memo[("groups", groups, step)] = parts
        return self._memo[("groups", groups, step)]

    def work(self, disk_radius: float | None = None, step: int = 1) -> float:
        """Pixels touched by one evaluation: frames (every ``step``-th cached position along
        each axis) x binned pixels inside the disk."""
        pix = self.frames.shape[1] * self.frames.shape[2]
        if disk_radius:
            pix = min(pix, math.pi * (disk_radius / self.bin) ** 2)
        n = int(self._every(step).sum()) if step > 1 else len(self.frames)
        return n * pix


#: Default bound on the work of one loss evaluation: cached frames x used binned pixels.
DEFAULT_WORK = 40_000_000


def loss_bin(ratio: float, sig_shape) -> int:
    """Detector binning for the loss: the projected pitch ``|ratio| * bin`` (specimen px
    per binned detector px) at or below 0.7, and at least 16 binned px per side."""
    b = max(1, int(0.7 / abs(ratio)))
    return min(b, max(1, min(sig_shape) // 16))


def choose_reduction(nav_shape, sig_shape, *, budget: int = DEFAULT_BUDGET,
                     ratio: float | None = None, disk_radius: float | None = None,
                     work: int = DEFAULT_WORK, dtype=np.float32) -> tuple[int, int]:
    """Choose (bin, stride) for a cache.

    Binning keeps the projected pixel pitch ``|ratio| * bin`` (specimen px per
    binned detector px) at or below 0.7, so that splatted frames leave no
    holes in a target grid of one specimen pixel; the scan is then
    sub-sampled until the cache fits ``budget`` bytes and one evaluation
    touches at most ``work`` pixels (frames x binned pixels inside the disk).

    Parameters
    ----------
    ratio : float, optional
        Specimen px per detector px (:attr:`OverfocusParams.magnification_ratio`).
        Unknown: binning only as far as the memory budget needs.
    disk_radius : float, optional
        Used disk radius, detector px. Unknown: the whole frame counts.
    dtype : dtype
        The data's pixel type: the cache's bytes per pixel are those of
        :func:`binned_dtype` (2 for unbinned ``uint16`` counts, 4 once binned; the
        default counts 4 whatever the bin).
    """
    ny, nx = nav_shape
    sy, sx = sig_shape
    b = loss_bin(ratio, sig_shape) if ratio else 1
    while True:
        itemsize = binned_dtype(dtype, b).itemsize
        for stride in range(1, max(ny, nx) + 1):
            n = math.ceil(ny / stride) * math.ceil(nx / stride)
            mem = n * (sy // b) * (sx // b) * itemsize
            pix = (sy // b) * (sx // b)
            if disk_radius:
                pix = min(pix, math.pi * (disk_radius / b) ** 2)
            if mem <= budget and n * pix <= work:
                return b, stride
            if n <= 256:
                break
        b += 1
        if b > min(sy, sx) // 2:
            raise ValueError(f"no reduction of {nav_shape} x {sig_shape} fits a {budget} byte budget")


def build_cache(ctx, dataset, *, params=None, budget: int = DEFAULT_BUDGET,
                work: int = DEFAULT_WORK, bin: int | None = None, stride: int | None = None,
                budget_dtype=None, progress: bool = False) -> ReducedCache:
    """Read ``dataset`` once into a :class:`ReducedCache` (one pass over the raw data).

    Parameters
    ----------
    ctx : libertem.api.Context
        Context (and so executor) that runs the pass.
    dataset : libertem DataSet
        2D scan, 2D frames.
    params : OverfocusParams, optional
        Expected geometry; its magnification and disk radius guide the
        reduction (:func:`choose_reduction`).
    budget, work : int
        Bounds on the cache's size (bytes) and on one loss evaluation's work,
        used to choose ``bin``/``stride`` when they are not given.
    budget_dtype : dtype, optional
        Pixel type the budget counts the data as (:func:`choose_reduction`); default the
        dataset's own, so that unbinned ``uint16`` counts, cached as they are, take 2
        bytes a pixel (a 128x128 scan of 128x128 frames: every position in 512 MiB, where
        4 bytes a pixel kept every other one). ``np.float32`` counts 4 bytes whatever
        the data.
    """
    nav_shape = tuple(int(v) for v in dataset.shape.nav)
    sig_shape = tuple(int(v) for v in dataset.shape.sig)
    if len(nav_shape) != 2 or len(sig_shape) != 2:
        raise ValueError(f"need a 2D scan of 2D frames, got nav {nav_shape}, sig {sig_shape}")
    if bin is None or stride is None:
        ratio = params.magnification_ratio if params is not None else None
        radius = params.disk_radius_px if params is not None else None
        b, s = choose_reduction(nav_shape, sig_shape, budget=budget, ratio=ratio,
                                disk_radius=radius, work=work,
                                dtype=(budget_dtype if budget_dtype is not None
                                       else getattr(dataset, "dtype", np.float32)))
        bin = bin or b
        stride = stride or s
    roi = np.zeros(nav_shape, dtype=bool)
    roi[::stride, ::stride] = True
    log.info("building cache: bin %d, stride %d", bin, stride)
    # Every position (stride 1): no roi. With one, LiberTEM's HDF5 reader reads frame by
    # frame (a 40x40 scan of 96x96 frames: 0.27-0.30 s against 0.13-0.16 s without).
    res = ctx.run_udf(dataset=dataset, udf=BinFramesUDF(factor=bin),
                      roi=None if stride == 1 else roi, progress=progress)
    frames = np.asarray(res["binned"].raw_data)
    frame_sum = np.asarray(res["frame_sum"].data, dtype=np.float64)
    iy, ix = np.nonzero(roi)
    scan_yx = np.stack([iy, ix], axis=-1).astype(float)
    frames, defects = _repaired(frames, frame_sum, int(bin))
    return ReducedCache(frames=frames, scan_yx=scan_yx, bin=int(bin), stride=int(stride),
                        nav_shape=nav_shape, sig_shape=sig_shape, frame_sum=frame_sum,
                        defects=defects)


def _repaired(frames: np.ndarray, frame_sum: np.ndarray, factor: int) -> tuple[np.ndarray, dict]:
    """``frames`` with their hot and dead pixels filled (:mod:`.defects`), and the counts
    (empty where there were none: the frames are then returned untouched). The defects
    are found on the mean frame, from the pass's full-resolution ``frame_sum`` binned as
    the frames are (``factor``): no second pass over the cache."""
    from .defects import fill_defects, find_defects

    n, H, W = frames.shape
    if n == 0 or (n >= 3 and np.array_equal(frames[0], frames[n // 2])
                  and np.array_equal(frames[0], frames[-1])):
        # one frame repeated (nothing moves with the scan: the cold start says so): its
        # zeros and peaks are one draw of counting noise, not pixels that never count
        return frames, {}
    summed = frame_sum[:H * factor, :W * factor].reshape(H, factor, W, factor).sum(axis=(1, 3))
    found = find_defects(summed / n, frames=n)
    if not found.mask.any():
        return frames, {}
    if not frames.flags.writeable:
        frames = frames.copy()
    filled = fill_defects(frames, found)
    counts = found.counts()
    log.warning("detector defects: %d hot and %d dead pixels (in the cache's %s px) filled "
                "from their neighbours in every frame", counts["hot"], counts["dead"],
                "x".join(map(str, frames.shape[1:])))
    return frames, {**counts, "filled": filled}
