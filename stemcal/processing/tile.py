"""One block of frames into a pass's accumulators: what a LiberTEM tile and a live block share.

:class:`~stemcal.processing.OverfocusUDF` (``process_tile``) and
:class:`~stemcal.processing.live_projection.LiveProjection` (``add``) hand
their frames here: the bin-sum-splat of :func:`project_tile` (threaded,
:mod:`.threads`; or started without waiting, :func:`start_tile`), the point
samples at the beam centres and the scan-middle frame's own projection
(:func:`add_block`).
"""
from __future__ import annotations

import numpy as np

from .kernels import sample_points
from .pass_kernel import flat_pixels, project_frames
from .threads import run_threads, start_threads

__all__ = ["project_tile", "start_tile", "add_block"]


def _tile_work(frames, org_y, org_x, b, centres, c0, offsets, A, r_in, r_out, acc, fsum, stencil):
    def work(t: int, i0: int, i1: int) -> None:
        part = frames[i0:i1]
        pix, fs, rs = flat_pixels(part)
        project_frames(pix, fs, rs, part.shape[0], part.shape[1], part.shape[2], org_y, org_x,
                        int(b), centres[i0:i1], c0, offsets[i0:i1], A, float(r_in),
                        float(r_out), acc[t], fsum[t], bool(stencil))
    return work


def project_tile(frames, org_y, org_x, b, centres, c0, offsets, A, r_in, r_out, acc, fsum, *,
                 stencil: bool = True):
    """Bin, sum and splat a tile of frames in one read (see the module docstring).

    Parameters
    ----------
    frames : (n, h, w) array, any numeric dtype
        The tile; its top-left detector pixel is ``(org_y, org_x)``.
    org_y, org_x : int
        Detector index of the tile's first row and column.
    b : int
        Bin side, detector px (1: no binning).
    centres : (n, 2) float64
        Beam centre of each frame, detector px.
    c0 : (2,) float64
        Reference beam centre of the ``sum`` image, detector px.
    offsets : (n, 2) float64
        A detector point ``p`` (px) of frame ``i`` lands at target px ``A @ p + offsets[i]``.
    A : (2, 2) float64
        Target px per detector px.
    r_in, r_out : float
        Disk weight radii, detector px; a bin is weighted at its centre.
    acc : (T, H, W, 2) float64
        Per-thread accumulators; ``[..., 0]`` weighted intensity, ``[..., 1]`` weight
        (coverage). Added to.
    fsum : (T, nby, nbx) float64
        Per-thread binned frame sums (bins within ``r_out`` of ``c0`` are complete,
        others partial). Added to.
    stencil : bool
        Splat frames that share the first frame's beam centre and sub-pixel offset through
        one precomputed stencil (default); False splats every bin on its own. Both give
        the same images up to rounding.

    Notes
    -----
    ``T > 1`` runs the chunks in a thread pool of ``T`` threads (the kernel
    releases the GIL); ``T == 1`` runs in the calling thread.
    """
    work = _tile_work(frames, org_y, org_x, b, centres, c0, offsets, A, r_in, r_out, acc, fsum,
                      stencil)
    run_threads(work, frames.shape[0], acc.shape[0])


def start_tile(frames, org_y, org_x, b, centres, c0, offsets, A, r_in, r_out, acc, fsum,
               threads: int | None = None, *, stencil: bool = True) -> list:
    """:func:`project_tile` on the pool without waiting, in ``threads`` chunks (default and at
    most ``T``); returns the futures (see :func:`wait_jobs`). ``frames`` must stay unchanged
    until they are done."""
    work = _tile_work(frames, org_y, org_x, b, centres, c0, offsets, A, r_in, r_out, acc, fsum,
                      stencil)
    T = acc.shape[0] if threads is None else max(1, min(int(threads), acc.shape[0]))
    return start_threads(work, frames.shape[0], T)


def add_block(frames: np.ndarray, org_y: int, org_x: int, b: int, centres: np.ndarray,
              c0: np.ndarray, offsets: np.ndarray, A: np.ndarray, r_in: float, r_out: float, *,
              acc: np.ndarray, fsum: np.ndarray, points: np.ndarray, selected_acc: np.ndarray,
              mid: int, splat: bool = True) -> None:
    """Add a block of frames to every accumulator of a pass.

    Parameters
    ----------
    frames, org_y, org_x, b, centres, c0, offsets, A, r_in, r_out
        As :func:`project_tile`.
    acc, fsum : arrays
        The pass's shifted-sum and frame-sum accumulators (:func:`project_tile`),
        added to when ``splat`` (the UDF's pipelined path splats them itself,
        with :func:`start_tile`).
    points : (n,) float64
        Added to: each frame's bilinear sample at its beam centre
        (:func:`~stemcal.processing.kernels.sample_points`).
    selected_acc : (H, W, 2) float64
        Added to: the projection of frame ``mid`` alone (the scan middle).
    mid : int
        Index of the scan-middle frame in ``frames``, or -1 if it is not there.
    """
    if splat:
        project_tile(frames, org_y, org_x, b, centres, c0, offsets, A, r_in, r_out, acc, fsum)
    pts = np.zeros(len(frames))
    sample_points(frames, org_y, org_x, centres, pts)
    points += pts
    if mid >= 0:
        project_tile(frames[mid:mid + 1], org_y, org_x, b, centres[mid:mid + 1], c0,
                     offsets[mid:mid + 1], A, r_in, r_out, selected_acc[None],
                     np.zeros((1,) + fsum.shape[1:]))
