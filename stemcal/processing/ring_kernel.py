"""Project frames into several rings of the bright-field disk in one sweep.

The final stage of a fit (:mod:`stemcal.fit.rings`) needs the shifted sum and
coverage of each ring between nested disks of radii ``r_out[0] < r_out[1] <
...`` (detector px from the beam centre). Projecting each nested disk and
taking differences reads the inner pixels once per disk (three times for the
innermost ring of three); :func:`splat_rings` reads every pixel once, computes
its target position once, and adds it to the ring(s) it belongs to.

Ring ``j`` weighs a pixel by ``w_j(r) - w_{j-1}(r)`` (``w_{-1} = 0``), where
``w_j`` is the disk weight of :mod:`stemcal.processing.kernels` (1 inside
``r_in[j]``, falling linearly to 0 at ``r_out[j]``): exactly the difference of
the nested disks' projections, without its rounding. With ``sectors=8`` each ring
is split further into the octants of the angle of a pixel's offset from its
frame's beam centre (the shift estimate of :mod:`stemcal.fit.sectors`).
Coordinates (y, x) and the detector-pixel convention ``i * pix_scale + pix_offset`` as in
:mod:`stemcal.processing.kernels`; :func:`splat_rings_numpy` is the NumPy twin.
"""
from __future__ import annotations

import math

import numba
import numpy as np

from .kernels import bilinear_weights, disk_weight, splat_frames_numpy, sweep_stride

__all__ = ["octant", "splat_rings", "splat_rings_numpy"]


@numba.njit(nogil=True, cache=True, inline="always")
def _ring_splat(acc, iy, ix, w00, w01, w10, w11, ring, value):
    """Add one pixel's bilinear shares to ring ``ring`` of ``acc`` (R, H, W, 2): intensity
    and coverage of a target pixel side by side (one cache line)."""
    acc[ring, iy, ix, 0] += w00 * value
    acc[ring, iy, ix, 1] += w00
    acc[ring, iy, ix + 1, 0] += w01 * value
    acc[ring, iy, ix + 1, 1] += w01
    acc[ring, iy + 1, ix, 0] += w10 * value
    acc[ring, iy + 1, ix, 1] += w10
    acc[ring, iy + 1, ix + 1, 0] += w11 * value
    acc[ring, iy + 1, ix + 1, 1] += w11


@numba.njit(nogil=True, cache=True, inline="always")
def octant(dy: float, dx: float) -> int:
    """Octant of the offset (dy, dx) from the beam centre: ``k`` for angles
    ``atan2(dy, dx)`` in ``[k, k + 1) * 45`` degrees (0..360), by comparisons only."""
    if dy >= 0.0:
        if dx >= 0.0:
            return 0 if dx > dy else 1
        return 2 if dy >= -dx else 3
    if dx < 0.0:
        return 4 if -dx > -dy else 5
    return 6 if -dy >= dx else 7


@numba.njit(nogil=True, cache=True)
def splat_rings(frames, rows, pix_scale, pix_offset, centres, offsets, A, r_in, r_out, out, cov,
                sectors=1):
    """Bilinear splat of each frame pixel into the ring(s) of the disk it lies in.

    Parameters
    ----------
    frames : (N, h, w) array
        Whole frames (detector index (0, 0) at the top left).
    rows : (n,) int64
        The frames projected, ``frames[rows]`` (read in place, not copied).
    pix_scale, pix_offset : float
        Detector pixel coordinate of index ``i`` is ``i * pix_scale + pix_offset``.
    centres, offsets : (n, 2) float64
        Beam centre of each frame ``rows[i]`` (detector px), and its offset: pixel ``p`` lands at
        target pixel ``A @ p + offsets[i]``.
    A : (2, 2) float64
        Target px per detector px.
    r_in, r_out : (R,) float64
        The nested disks' full-weight and outer radii, detector px, increasing.
    out, cov : (R * sectors, H, W) float64
        Per ring (and sector): weighted intensity and weight (coverage), added to. A pixel
        landing outside the target image is dropped, as in ``splat_frames``.
    sectors : {1, 8}
        1: rings only. 8: each ring split into octants of the angle of the pixel's offset
        from its frame's beam centre (:func:`octant`); part ``ring * 8 + octant``.
    """
    n = rows.shape[0]
    h = frames.shape[1]
    w = frames.shape[2]
    R = r_out.shape[0]
    P, H, W = out.shape
    a00 = A[0, 0]
    a01 = A[0, 1]
    a10 = A[1, 0]
    a11 = A[1, 1]
    ro = r_out[R - 1]
    ro2 = ro * ro
    acc = np.zeros((P, H, W, 2))
    stride = sweep_stride(pix_scale, a01, a11)  # a row's pixels in interleaved sweeps
    for i in range(n):
        f = rows[i]
        cy = centres[i, 0]
        cx = centres[i, 1]
        oy = offsets[i, 0]
        ox = offsets[i, 1]
        for y in range(h):
            py = y * pix_scale + pix_offset
            dy2 = (py - cy) * (py - cy)
            if dy2 >= ro2:
                continue
            half = math.sqrt(ro2 - dy2)
            x0 = max(int(math.floor((cx - half - pix_offset) / pix_scale)), 0)
            x1 = min(int(math.ceil((cx + half - pix_offset) / pix_scale)), w - 1)
            base_y = a00 * py + oy
            base_x = a10 * py + ox
            for phase in range(stride):
                for x in range(x0 + phase, x1 + 1, stride):
                    px = x * pix_scale + pix_offset
                    r2 = dy2 + (px - cx) * (px - cx)
                    if r2 >= ro2:
                        continue
                    uy = base_y + a01 * px
                    ux = base_x + a11 * px
                    if not (uy >= 0.0 and uy < H - 1 and ux >= 0.0 and ux < W - 1):
                        continue
                    value = float(frames[f, y, x])
                    iy, ix, b00, b01, b10, b11 = bilinear_weights(uy, ux, 1.0)
                    sec = 0 if sectors == 1 else octant(py - cy, px - cx)
                    prev = 0.0
                    for j in range(R):
                        wj = disk_weight(r2, r_in[j], r_out[j])
                        share = wj - prev
                        prev = wj
                        if share != 0.0:
                            _ring_splat(acc, iy, ix, b00 * share, b01 * share, b10 * share,
                                        b11 * share, j * sectors + sec, value)
    for j in range(P):
        for yy in range(H):
            for xx in range(W):
                out[j, yy, xx] += acc[j, yy, xx, 0]
                cov[j, yy, xx] += acc[j, yy, xx, 1]


def splat_rings_numpy(frames, rows, pix_scale, pix_offset, centres, offsets, A, r_in, r_out,
                      out, cov):
    """NumPy twin of :func:`splat_rings` (the test oracle; slow): each nested disk projected
    by :func:`~stemcal.processing.kernels.splat_frames_numpy`, rings as differences.

    Differs from the kernel only where a pixel lands within one target pixel of the
    image's edge (the oracle keeps the shares that fall inside, the kernel drops the
    pixel); the fits keep a margin round the scan, so nothing lands there.
    """
    frames = frames[rows]
    R = len(r_out)
    disks_S, disks_C = [], []
    for j in range(R):
        S = np.zeros(out.shape[1:])
        C = np.zeros(out.shape[1:])
        splat_frames_numpy(frames, 0, 0, pix_scale, pix_offset, centres, offsets, A,
                           float(r_in[j]), float(r_out[j]), S, C)
        disks_S.append(S)
        disks_C.append(C)
    for j in range(R):
        out[j] += disks_S[j] - (disks_S[j - 1] if j else 0.0)
        cov[j] += disks_C[j] - (disks_C[j - 1] if j else 0.0)
