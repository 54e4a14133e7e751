"""Numba kernels that project detector frames into the specimen plane.

Every kernel has a NumPy twin (``*_numpy``) used as the test oracle. Pixel
coordinates are (y, x). A detector pixel index ``i`` along an axis has the
physical detector-pixel coordinate ``i * pix_scale + pix_offset`` (1 and 0 for
raw frames; ``b`` and ``(b - 1) / 2`` for frames binned by ``b``).

Sampling is bilinear *splatting* (the adjoint of bilinear interpolation): each
detector pixel's value is spread over the four target pixels around its
projected position. The output is therefore continuous in the geometry, which
keeps the blur loss continuous (nearest-neighbour sampling makes it piecewise
constant).

Only pixels inside the bright-field disk contribute, with a weight that falls
linearly from 1 at ``r_in`` to 0 at ``r_out`` (detector px from the frame's
beam centre); the same weight is splatted into a coverage image.
"""
from __future__ import annotations

import math

import numba
import numpy as np


@numba.njit(nogil=True, cache=True, inline="always")
def disk_weight(r2: float, r_in: float, r_out: float) -> float:
    if r2 >= r_out * r_out:
        return 0.0
    if r2 <= r_in * r_in:
        return 1.0
    return (r_out - np.sqrt(r2)) / (r_out - r_in)


@numba.njit(nogil=True, cache=True, inline="always")
def bilinear_cell(uy, ux):
    """Bilinear cell of the point (uy, ux): top-left pixel (iy, ix) and the fractions (wy, wx)."""
    fy = math.floor(uy)
    fx = math.floor(ux)
    return int(fy), int(fx), uy - fy, ux - fx


@numba.njit(nogil=True, cache=True, inline="always")
def _splat_sq(out, cov, sq, uy, ux, value, weight, want_sq):
    H, W = out.shape
    iy, ix, wy, wx = bilinear_cell(uy, ux)
    if iy >= 0 and iy < H:
        w = (1.0 - wy) * weight
        if ix >= 0 and ix < W:
            out[iy, ix] += w * (1.0 - wx) * value
            if want_sq:
                sq[iy, ix] += (w * (1.0 - wx) * value) ** 2
            cov[iy, ix] += w * (1.0 - wx)
        if ix + 1 >= 0 and ix + 1 < W:
            out[iy, ix + 1] += w * wx * value
            if want_sq:
                sq[iy, ix + 1] += (w * wx * value) ** 2
            cov[iy, ix + 1] += w * wx
    if iy + 1 >= 0 and iy + 1 < H:
        w = wy * weight
        if ix >= 0 and ix < W:
            out[iy + 1, ix] += w * (1.0 - wx) * value
            if want_sq:
                sq[iy + 1, ix] += (w * (1.0 - wx) * value) ** 2
            cov[iy + 1, ix] += w * (1.0 - wx)
        if ix + 1 >= 0 and ix + 1 < W:
            out[iy + 1, ix + 1] += w * wx * value
            if want_sq:
                sq[iy + 1, ix + 1] += (w * wx * value) ** 2
            cov[iy + 1, ix + 1] += w * wx


@numba.njit(nogil=True, cache=True, inline="always")
def bilinear_weights(uy, ux, weight):
    """Top-left pixel (iy, ix) of the bilinear cell of (uy, ux) and ``weight`` shared out to
    its pixels (0, 0), (0, 1), (1, 0), (1, 1): ``(iy, ix, w00, w01, w10, w11)``."""
    iy, ix, wy, wx = bilinear_cell(uy, ux)
    w0 = (1.0 - wy) * weight
    w1 = wy * weight
    return iy, ix, w0 * (1.0 - wx), w0 * wx, w1 * (1.0 - wx), w1 * wx


@numba.njit(nogil=True, cache=True, inline="always")
def splat_interleaved(acc, uy, ux, value, weight, share):
    """Bilinear splat of ``value`` with ``weight`` at (uy, ux) into ``acc`` (H, W, 2): ``[..., 0]``
    gets ``weight * value``, ``[..., 1]`` ``weight * share`` (coverage); no bounds checks
    (the caller guarantees ``0 <= uy < H - 1``, ``0 <= ux < W - 1``). The two channels of a
    pixel share a cache line, so a splat touches four lines instead of eight."""
    iy, ix, w00, w01, w10, w11 = bilinear_weights(uy, ux, weight)
    acc[iy, ix, 0] += w00 * value
    acc[iy, ix, 1] += w00 * share
    acc[iy, ix + 1, 0] += w01 * value
    acc[iy, ix + 1, 1] += w01 * share
    acc[iy + 1, ix, 0] += w10 * value
    acc[iy + 1, ix, 1] += w10 * share
    acc[iy + 1, ix + 1, 0] += w11 * value
    acc[iy + 1, ix + 1, 1] += w11 * share


@numba.njit(nogil=True, cache=True, inline="always")
def sweep_stride(pix_scale, a01, a11):
    """Sweeps over a row's pixels such that pixels splatted one after the other land at
    least 2 target px apart (``A[:, 1] * pix_scale`` target px per pixel along x; at
    most 16): neighbours would otherwise update the same target pixels back to back,
    each waiting for the store before it."""
    step = pix_scale * math.sqrt(a01 * a01 + a11 * a11)
    return 1 if step <= 0.0 else min(16, max(1, int(math.ceil(2.0 / step))))


@numba.njit(nogil=True, cache=True)
def _splat_loop(frames, rows, sig_origin_y, sig_origin_x, pix_scale, pix_offset,
                centres, offsets, A, r_in, r_out, out, cov, sq, want_sq):
    n = rows.shape[0]
    h = frames.shape[1]
    w = frames.shape[2]
    H, W = out.shape
    a00 = A[0, 0]
    a01 = A[0, 1]
    a10 = A[1, 0]
    a11 = A[1, 1]
    ro2 = r_out * r_out
    # Frames whose disk lands wholly inside go into one interleaved accumulator, pixels
    # of a row in `stride` sweeps: neighbouring pixels land < 1 target px apart and would
    # update the same target pixels back to back (each waiting for the previous store).
    acc = np.zeros((H, W, 2))
    stride = sweep_stride(pix_scale, a01, a11)
    for i in range(n):
        f = rows[i]   # the frame; centres and offsets are the i-th
        cy = centres[i, 0]
        cx = centres[i, 1]
        oy = offsets[i, 0]
        ox = offsets[i, 1]
        # Whole disk lands inside the image: no bounds checks needed.
        fast = not want_sq
        for sy in (-1.0, 1.0):
            for sx in (-1.0, 1.0):
                py = cy + sy * (r_out + pix_scale)
                px = cx + sx * (r_out + pix_scale)
                uy = a00 * py + a01 * px + oy
                ux = a10 * py + a11 * px + ox
                if not (uy >= 0.0 and uy < H - 1 and ux >= 0.0 and ux < W - 1):
                    fast = False
        for y in range(h):
            py = (sig_origin_y + y) * pix_scale + pix_offset
            dy2 = (py - cy) * (py - cy)
            if dy2 >= ro2:
                continue
            # columns whose pixel centre may lie inside r_out
            half = np.sqrt(ro2 - dy2)
            x0 = max(int(np.floor((cx - half - pix_offset) / pix_scale)) - sig_origin_x, 0)
            x1 = min(int(np.ceil((cx + half - pix_offset) / pix_scale)) - sig_origin_x, w - 1)
            base_y = a00 * py + oy
            base_x = a10 * py + ox
            if fast:
                for phase in range(stride):
                    for x in range(x0 + phase, x1 + 1, stride):
                        px = (sig_origin_x + x) * pix_scale + pix_offset
                        wgt = disk_weight(dy2 + (px - cx) * (px - cx), r_in, r_out)
                        if wgt <= 0.0:
                            continue
                        splat_interleaved(acc, base_y + a01 * px, base_x + a11 * px,
                                          float(frames[f, y, x]), wgt, 1.0)
                continue
            for x in range(x0, x1 + 1):
                px = (sig_origin_x + x) * pix_scale + pix_offset
                wgt = disk_weight(dy2 + (px - cx) * (px - cx), r_in, r_out)
                if wgt <= 0.0:
                    continue
                _splat_sq(out, cov, sq, base_y + a01 * px, base_x + a11 * px,
                          float(frames[f, y, x]), wgt, want_sq)
    for yy in range(H):
        for xx in range(W):
            out[yy, xx] += acc[yy, xx, 0]
            cov[yy, xx] += acc[yy, xx, 1]


@numba.njit(nogil=True, cache=True)
def splat_frames(frames, sig_origin_y, sig_origin_x, pix_scale, pix_offset,
                 centres, offsets, A, r_in, r_out, out, cov):
    """Project frames into a target image by bilinear splatting.

    Parameters
    ----------
    frames : (n, h, w) array
        Frames, or a tile of them whose top-left detector index is
        ``(sig_origin_y, sig_origin_x)``.
    pix_scale, pix_offset : float
        Detector pixel coordinate of index ``i`` is ``i * pix_scale + pix_offset``.
    centres : (n, 2) float64
        Beam centre of each frame on the detector, detector px.
    offsets : (n, 2) float64
        A detector pixel ``p`` of frame ``i`` lands at target pixel ``A @ p + offsets[i]``.
    A : (2, 2) float64
        Target pixels per detector pixel.
    r_in, r_out : float
        Disk weight radii, detector px.
    out, cov : (H, W) float64
        Accumulators for weighted intensity and weight (coverage), added to.
    """
    _splat_loop(frames, np.arange(frames.shape[0]), sig_origin_y, sig_origin_x, pix_scale,
                pix_offset, centres, offsets, A, r_in, r_out, out, cov, out, False)


@numba.njit(nogil=True, cache=True)
def splat_frame_rows(frames, rows, pix_scale, pix_offset, centres, offsets, A, r_in, r_out,
                     out, cov):
    """:func:`splat_frames` of the whole frames ``frames[rows]``, without copying them.

    ``rows`` (m,) int64 picks the frames; ``centres[i]`` and ``offsets[i]`` belong to
    frame ``rows[i]``. For the fit's interleaved groups of cached frames: each group a
    set of rows of the one cache (a copy per group would touch as much fresh memory as
    the cache, which on this project's VM cost 2 s for 268 MB).
    """
    _splat_loop(frames, rows, 0, 0, pix_scale, pix_offset, centres, offsets, A, r_in, r_out,
                out, cov, out, False)


@numba.njit(nogil=True, cache=True)
def splat_frames_moments(frames, sig_origin_y, sig_origin_x, pix_scale, pix_offset,
                         centres, offsets, A, r_in, r_out, out, cov, sq):
    """:func:`splat_frames` that also adds each splatted contribution squared into ``sq``.

    ``sq`` is the part of ``out**2`` that comes from every contribution with
    itself; ``out**2 - sq`` holds only products of different detector pixels,
    whose noise is independent, so it estimates the squared signal without
    noise bias.
    """
    _splat_loop(frames, np.arange(frames.shape[0]), sig_origin_y, sig_origin_x, pix_scale,
                pix_offset, centres, offsets, A, r_in, r_out, out, cov, sq, True)


def splat_frames_numpy(frames, sig_origin_y, sig_origin_x, pix_scale, pix_offset,
                       centres, offsets, A, r_in, r_out, out, cov, sq=None):
    """NumPy twin of :func:`splat_frames` and, with ``sq``, of
    :func:`splat_frames_moments` (the test oracle; slow)."""
    n, h, w = frames.shape
    H, W = out.shape
    yy, xx = np.mgrid[0:h, 0:w]
    py = (sig_origin_y + yy) * pix_scale + pix_offset
    px = (sig_origin_x + xx) * pix_scale + pix_offset
    for i in range(n):
        r = np.hypot(py - centres[i, 0], px - centres[i, 1])
        wgt = np.clip((r_out - r) / (r_out - r_in), 0.0, 1.0)
        uy = A[0, 0] * py + A[0, 1] * px + offsets[i, 0]
        ux = A[1, 0] * py + A[1, 1] * px + offsets[i, 1]
        fy = np.floor(uy)
        fx = np.floor(ux)
        for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1)):
            ty = fy.astype(int) + dy
            tx = fx.astype(int) + dx
            bw = (uy - fy if dy else 1 - (uy - fy)) * (ux - fx if dx else 1 - (ux - fx)) * wgt
            ok = (ty >= 0) & (ty < H) & (tx >= 0) & (tx < W) & (wgt > 0)
            np.add.at(out, (ty[ok], tx[ok]), (bw * frames[i])[ok])
            np.add.at(cov, (ty[ok], tx[ok]), bw[ok])
            if sq is not None:
                np.add.at(sq, (ty[ok], tx[ok]), ((bw * frames[i])[ok]) ** 2)


@numba.njit(nogil=True, cache=True)
def sample_points(frames, sig_origin_y, sig_origin_x, centres, out):
    """Bilinear sample of each frame at its beam centre, added into ``out`` (n,).

    A tile holding only part of a frame adds the part of the bilinear sum that
    falls inside it, so summing over the tiles of a frame gives the full value.
    """
    n, h, w = frames.shape
    for i in range(n):
        iy, ix, wy, wx = bilinear_cell(centres[i, 0] - sig_origin_y,
                                       centres[i, 1] - sig_origin_x)
        acc = 0.0
        for dy in range(2):
            yy = iy + dy
            if yy < 0 or yy >= h:
                continue
            wgy = wy if dy else 1.0 - wy
            for dx in range(2):
                xx = ix + dx
                if xx < 0 or xx >= w:
                    continue
                wgx = wx if dx else 1.0 - wx
                acc += wgy * wgx * frames[i, yy, xx]
        out[i] += acc


@numba.njit(nogil=True, cache=True)
def bin_frames(frames, sig_origin_y, sig_origin_x, factor, out):
    """Sum ``factor x factor`` detector blocks of ``frames`` into ``out`` (n, H/f, W/f).

    Tiles may start anywhere; pixels beyond the last whole block are dropped.
    """
    n, h, w = frames.shape
    H = out.shape[1]
    W = out.shape[2]
    for i in range(n):
        for y in range(h):
            by = (sig_origin_y + y) // factor
            if by >= H:
                continue
            for bx in range(sig_origin_x // factor, min(W, (sig_origin_x + w - 1) // factor + 1)):
                x0 = max(bx * factor - sig_origin_x, 0)
                x1 = min(bx * factor + factor - sig_origin_x, w)
                acc = 0.0
                for x in range(x0, x1):
                    acc += frames[i, y, x]
                out[i, by, bx] += acc


@numba.njit(nogil=True, cache=True)
def _bin_row_sums(rsum, sig_origin_x, factor, out_row, bx0, bx1):
    """Add the sums of each bin's columns of ``rsum`` (the tile's row sums) to ``out_row``."""
    w = rsum.shape[0]
    if sig_origin_x % factor == 0 and (bx1 - bx0) * factor <= w:
        # whole bins: one strided sweep per column offset (vectorises)
        for k in range(factor):
            for bx in range(bx0, bx1):
                out_row[bx] += rsum[(bx - bx0) * factor + k]
        return
    for bx in range(bx0, bx1):
        x0 = max(bx * factor - sig_origin_x, 0)
        x1 = min(bx * factor + factor - sig_origin_x, w)
        acc = 0.0
        for x in range(x0, x1):
            acc += rsum[x]
        out_row[bx] += acc


@numba.njit(nogil=True, cache=True)
def bin_and_sum(frames, sig_origin_y, sig_origin_x, factor, out, frame_sum):
    """:func:`bin_frames` that also adds every frame into ``frame_sum``, one read.

    ``frame_sum`` is the full-frame sum (sy, sx); the tile covers
    ``frame_sum[sig_origin_y:sig_origin_y + h, sig_origin_x:sig_origin_x + w]``.
    Rows are summed element-wise (vectorised) into a row buffer per bin row,
    which is then reduced across each bin's columns.
    """
    n, h, w = frames.shape
    H = out.shape[1]
    W = out.shape[2]
    bx0 = sig_origin_x // factor
    bx1 = min(W, (sig_origin_x + w - 1) // factor + 1)
    rsum = np.zeros(w)
    for i in range(n):
        y = 0
        while y < h:
            by = (sig_origin_y + y) // factor
            y_end = min(h, (by + 1) * factor - sig_origin_y)  # rows of this bin row in the tile
            for x in range(w):
                rsum[x] = 0.0
            for yy in range(y, y_end):
                row = frames[i, yy]
                for x in range(w):
                    rsum[x] += row[x]
                fs_row = frame_sum[sig_origin_y + yy, sig_origin_x:sig_origin_x + w]
                for x in range(w):
                    fs_row[x] += row[x]
            if by < H:
                _bin_row_sums(rsum, sig_origin_x, factor, out[i, by], bx0, bx1)
            y = y_end
