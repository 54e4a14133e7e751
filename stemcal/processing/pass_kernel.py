"""The one-pass kernel of :class:`~stemcal.processing.OverfocusUDF`.

:func:`~stemcal.processing.tile.project_tile` reads each frame of a tile once and, in the same loop,

* sums ``b x b`` detector blocks ("bins") on the fly,
* adds the binned values to a binned frame sum (for the ``sum`` image), and
* splats each binned value bilinearly into the specimen-plane accumulators
  with the disk weight of its bin centre (as :func:`~stemcal.processing.kernels.splat_frames`
  with ``pix_scale=b``, ``pix_offset=(b - 1) / 2``).

Only bins whose centre lies within ``r_out`` of the frame's own beam centre
(for the shifted sum) or of the reference centre (for the frame sum) are
read; everything else contributes nothing to the images, so it is not
touched at all.

Without descan every frame has the same beam centre, and with an integer
``upsample`` the offsets of two frames differ by whole target pixels: each bin
then lands at the same sub-pixel position with the same bilinear and disk
weights in every frame, only shifted. Those weights are computed once per call
(a stencil); each frame's bin values are splatted through it into a small
block, which is added to the accumulators with the stencil's coverage. Frames
that do not share the stencil, and bin rows the tile does not hold whole, are
splatted bin by bin with weights computed on the spot.

Tiles may hold any part of a frame: a bin cut by a tile border is summed in
parts, and each part is splatted at the bin's position with its share of the
bin's pixels as coverage weight; splatting is linear, so the result is the same
as for whole bins. (A bin cut by the detector edge keeps its smaller share.)

The kernels here run on one thread, into one accumulator; :mod:`.tile`
shares a tile's frames out to threads (:mod:`.threads`).
"""
from __future__ import annotations

import math

import numba
import numpy as np

from .kernels import (bilinear_cell, bilinear_weights, disk_weight, splat_interleaved,
                      sweep_stride)

__all__ = ["project_frames", "flat_pixels", "STENCIL_TOL"]


@numba.njit(nogil=True, cache=True, inline="always")
def _bin_range(pyb, cy, cx, r_out, b, nbx):
    """Bin columns ``[lo, hi]`` whose centres (y ``pyb``) lie within ``r_out`` of (cy, cx);
    ``lo > hi`` when none."""
    dy = pyb - cy
    q = r_out * r_out - dy * dy
    if q <= 0.0:
        return 1, 0
    half = math.sqrt(q)
    off = (b - 1) / 2.0
    lo = int(math.ceil((cx - half - off) / b))
    hi = int(math.floor((cx + half - off) / b))
    return max(lo, 0), min(hi, nbx - 1)


@numba.njit(nogil=True, cache=True, inline="always")
def _bin_weight(bx, b, off, cx, dy2, r_in, r_out):
    """Column ``pxb`` of the centre of bin ``bx`` (detector px) and its disk weight, for a bin
    row ``dy2`` (squared y distance) from the beam centre (cy, ``cx``)."""
    pxb = bx * b + off
    dx = pxb - cx
    return pxb, disk_weight(dy2 + dx * dx, r_in, r_out)


@numba.njit(nogil=True, cache=True, inline="always")
def _splat_checked(acc, uy, ux, value, weight, share):
    H = acc.shape[0]
    W = acc.shape[1]
    iy, ix, wy, wx = bilinear_cell(uy, ux)
    for dy in range(2):
        yy = iy + dy
        if yy < 0 or yy >= H:
            continue
        wgy = (wy if dy else 1.0 - wy) * weight
        for dx in range(2):
            xx = ix + dx
            if xx < 0 or xx >= W:
                continue
            wgt = wgy * (wx if dx else 1.0 - wx)
            acc[yy, xx, 0] += wgt * value
            acc[yy, xx, 1] += wgt * share


@numba.njit(nogil=True, cache=True)
def _inside(acc, cy, cx, r_out, a00, a01, a10, a11, oy, ox):
    """Whether every point within ``r_out`` of (cy, cx) lands where a bilinear splat
    stays inside ``acc``: the disk projects to an ellipse whose half-extents are
    ``r_out`` times the norms of the rows of ``A``."""
    H = acc.shape[0]
    W = acc.shape[1]
    uy = a00 * cy + a01 * cx + oy
    ux = a10 * cy + a11 * cx + ox
    ey = r_out * math.sqrt(a00 * a00 + a01 * a01) + 1e-9
    ex = r_out * math.sqrt(a10 * a10 + a11 * a11) + 1e-9
    return uy - ey >= 0.0 and uy + ey < H - 1 and ux - ex >= 0.0 and ux + ex < W - 1


@numba.njit(nogil=True, cache=True, inline="always")
def _bin_row(pix, f0, rstride, h, w, org_y, org_x, b, by, lo, hi, fsum, rsum, rowv):
    """Sum the bins ``[lo, hi]`` of bin row ``by`` (the parts inside this tile) into
    ``rowv[lo:hi + 1]`` and add them to ``fsum[by]``; returns the share of a bin's pixels per
    column that lie in this tile. The frame's row ``y`` (of ``h``, ``w`` px) is
    ``pix[f0 + y * rstride:][:w]``."""
    y_a = max(by * b, org_y) - org_y
    y_b = min(by * b + b, org_y + h) - org_y
    whole = (y_b - y_a == b and lo * b >= org_x and hi * b + b <= org_x + w)
    if b == 1:
        for bx in range(lo, hi + 1):
            v = float(pix[f0 + y_a * rstride + bx - org_x])
            rowv[bx] = v
            fsum[by, bx] += v
    elif whole:
        # whole bins: the bin row's raw rows summed column by column (contiguous, so
        # it vectorises), then each bin's b columns
        xa0 = lo * b - org_x
        xb0 = hi * b + b - org_x
        nx = xb0 - xa0
        rs = rsum[xa0:xb0]
        row0 = pix[f0 + y_a * rstride + xa0:f0 + y_a * rstride + xb0]
        for x in range(nx):
            rs[x] = row0[x]
        for y in range(y_a + 1, y_b):
            row = pix[f0 + y * rstride + xa0:f0 + y * rstride + xb0]
            for x in range(nx):
                rs[x] += row[x]
        nbin = hi + 1 - lo
        rv = rowv[lo:hi + 1]
        fs = fsum[by, lo:hi + 1]
        if b == 2:
            for k in range(nbin):
                v = rs[2 * k] + rs[2 * k + 1]
                rv[k] = v
                fs[k] += v
        else:
            for k in range(nbin):
                v = 0.0
                for x in range(k * b, k * b + b):
                    v += rs[x]
                rv[k] = v
                fs[k] += v
    else:
        x_a = max(lo * b, org_x) - org_x
        x_b = min(hi * b + b, org_x + w) - org_x
        # the raw rows of this bin row, summed column by column ...
        for x in range(x_a, x_b):
            rsum[x] = pix[f0 + y_a * rstride + x]
        for y in range(y_a + 1, y_b):
            for x in range(x_a, x_b):
                rsum[x] += pix[f0 + y * rstride + x]
        # ... then across the columns of each bin
        for bx in range(lo, hi + 1):
            xs = max(bx * b, org_x) - org_x
            xe = min(bx * b + b, org_x + w) - org_x
            v = 0.0
            for x in range(xs, xe):
                v += rsum[x]
            rowv[bx] = v
        for bx in range(lo, hi + 1):
            fsum[by, bx] += rowv[bx]
    return (y_b - y_a) / (b * b)


@numba.njit(nogil=True, cache=True, inline="always")
def _row_span(by, b, cy, cx, c0y, c0x, r_out, nbx, org_x, w):
    """Bins ``[lo, hi]`` of bin row ``by`` that any image needs (within ``r_out`` of the
    frame's centre or of ``c0``) and that meet the tile's columns, and ``[lo_f, hi_f]``,
    those within ``r_out`` of the frame's centre."""
    off = (b - 1) / 2.0
    pyb = by * b + off
    lo_f, hi_f = _bin_range(pyb, cy, cx, r_out, b, nbx)
    lo_0, hi_0 = _bin_range(pyb, c0y, c0x, r_out, b, nbx)
    if lo_f > hi_f:
        lo, hi = lo_0, hi_0
    elif lo_0 > hi_0:
        lo, hi = lo_f, hi_f
    else:
        lo, hi = min(lo_f, lo_0), max(hi_f, hi_0)
    lo = max(lo, org_x // b)
    hi = min(hi, (org_x + w - 1) // b)
    return lo, hi, lo_f, hi_f


@numba.njit(nogil=True, cache=True)
def _project_frame(pix, f0, rstride, h, w, org_y, org_x, b, cy, cx, c0y, c0x, oy, ox, A, r_in, r_out,
                   acc, fsum, rsum, rowv, stride, st, tst, block, use_st, ty, tx):
    """One frame of :func:`_project_frames`.

    With ``use_st``, the bin rows ``r`` of the stencil ``st`` (:func:`_build_stencil`) that
    this tile holds whole (``tst`` of :func:`_tile_stencil`) go through the stencil into
    ``block`` (zero on entry and on return), which is then added with their coverage to
    ``acc`` at target pixel (ty, tx). Every other bin has its target position and weights
    computed on the spot. The frame is ``pix`` as in :func:`_bin_row`.
    """
    nby, nbx = fsum.shape
    a00 = A[0, 0]
    a01 = A[0, 1]
    a10 = A[1, 0]
    a11 = A[1, 1]
    off = (b - 1) / 2.0
    st_by0, starts, bxs, cells, weights, ws = st[0], st[1], st[2], st[3], st[4], st[8]
    row_ok, coverage, r0, r1, q0, q1 = tst
    nrows = starts.shape[0] - 1
    fast = _inside(acc, cy, cx, r_out, a00, a01, a10, a11, oy, ox)
    by0 = org_y // b
    by1 = min((org_y + h - 1) // b, nby - 1)
    for by in range(by0, by1 + 1):
        lo, hi, lo_f, hi_f = _row_span(by, b, cy, cx, c0y, c0x, r_out, nbx, org_x, w)
        if lo > hi:
            continue
        rows = _bin_row(pix, f0, rstride, h, w, org_y, org_x, b, by, lo, hi, fsum, rsum, rowv)
        r = by - st_by0
        if use_st and r >= 0 and r < nrows and row_ok[r]:
            for k in range(starts[r], starts[r + 1]):
                v = rowv[bxs[k]]
                c = cells[k]
                block[c] += weights[k, 0] * v
                block[c + 1] += weights[k, 1] * v
                block[c + ws] += weights[k, 2] * v
                block[c + ws + 1] += weights[k, 3] * v
            continue
        pyb = by * b + off
        dy = pyb - cy
        dy2 = dy * dy
        base_y = a00 * pyb + oy
        base_x = a10 * pyb + ox
        # Neighbouring bins land < 1 target px apart and would update the same target
        # pixels back to back (each update waiting for the previous store); visiting every
        # `stride`-th bin per sweep keeps consecutive updates on different pixels.
        b_lo = max(lo, lo_f)
        b_hi = min(hi, hi_f)
        if fast and b_lo <= b_hi:
            # the whole disk lands inside acc, no bounds checks
            whole_row = b == 1 or (lo * b >= org_x and hi * b + b <= org_x + w)
            share_w = 1.0 if b == 1 else rows * b  # every bin of the row is whole
            dpx = float(stride * b)
            for phase in range(stride):
                bx0 = b_lo + phase
                if bx0 > b_hi:
                    break
                pxb = bx0 * b + off  # bin centres are multiples of 1/2: the sums are exact
                for bx in range(bx0, b_hi + 1, stride):
                    dx = pxb - cx
                    r2 = dy2 + dx * dx
                    p = pxb
                    pxb += dpx
                    wgt = disk_weight(r2, r_in, r_out)
                    if wgt <= 0.0:
                        continue
                    if whole_row:
                        share = share_w
                    else:
                        share = rows * (min(bx * b + b, org_x + w) - max(bx * b, org_x))
                    splat_interleaved(acc, base_y + a01 * p, base_x + a11 * p, rowv[bx], wgt, share)
            continue
        for phase in range(stride):
            for bx in range(b_lo + phase, b_hi + 1, stride):
                pxb, wgt = _bin_weight(bx, b, off, cx, dy2, r_in, r_out)
                if wgt <= 0.0:
                    continue
                uy = base_y + a01 * pxb
                ux = base_x + a11 * pxb
                share = 1.0
                if b > 1:
                    share = rows * (min(bx * b + b, org_x + w) - max(bx * b, org_x))
                _splat_checked(acc, uy, ux, rowv[bx], wgt, share)
    if use_st:
        for rr in range(r0, r1):
            a = acc[ty + rr]
            for q in range(q0, q1):
                c = rr * ws + q
                a[tx + q, 0] += block[c]
                a[tx + q, 1] += coverage[c]
                block[c] = 0.0


@numba.njit(nogil=True, cache=True)
def _build_stencil(b, cy, cx, oy, ox, A, r_in, r_out, nby, nbx, stride):
    """The splat of one frame's disk as a stencil.

    For a frame with beam centre (cy, cx) and offset (oy, ox): every bin within ``r_out``
    with its target pixel and its four bilinear weights times its disk weight, as the
    bin-by-bin splat of :func:`_project_frame` computes them for a whole bin. A frame with
    the same beam centre whose offset differs by whole target pixels ``(ny, nx)`` (no
    descan, integer ``upsample``) splats the same weights at pixels shifted by
    ``(ny, nx)``; only its bin values differ.

    Returns ``(by0, starts, bxs, cells, weights, py0, px0, hs, ws)``: bin row ``by0 + r``
    has the entries ``starts[r]:starts[r + 1]`` (in the kernel's stride order), ``bxs``
    their bin columns, ``cells`` their top-left pixel as a flat index into an ``(hs, ws)``
    block whose pixel (0, 0) is target pixel ``(py0, px0)`` for this frame, ``weights``
    (n, 4) for the pixels (0, 0), (0, 1), (1, 0), (1, 1) of the cell.
    """
    a00 = A[0, 0]
    a01 = A[0, 1]
    a10 = A[1, 0]
    a11 = A[1, 1]
    off = (b - 1) / 2.0
    by_lo = max(int(math.ceil((cy - r_out - off) / b)), 0)
    by_hi = min(int(math.floor((cy + r_out - off) / b)), nby - 1)
    nrows = max(by_hi - by_lo + 1, 0)
    starts = np.zeros(nrows + 1, dtype=np.int64)
    cap = 0
    for r in range(nrows):
        lo, hi = _bin_range((by_lo + r) * b + off, cy, cx, r_out, b, nbx)
        cap += max(hi - lo + 1, 0)
    bxs = np.empty(cap, dtype=np.int64)
    iys = np.empty(cap, dtype=np.int64)
    ixs = np.empty(cap, dtype=np.int64)
    weights = np.empty((cap, 4))
    n = 0
    for r in range(nrows):
        pyb = (by_lo + r) * b + off
        lo, hi = _bin_range(pyb, cy, cx, r_out, b, nbx)
        dy = pyb - cy
        dy2 = dy * dy
        base_y = a00 * pyb + oy
        base_x = a10 * pyb + ox
        for phase in range(stride):
            for bx in range(lo + phase, hi + 1, stride):
                pxb, wgt = _bin_weight(bx, b, off, cx, dy2, r_in, r_out)
                if wgt <= 0.0:
                    continue
                iy, ix, w00, w01, w10, w11 = bilinear_weights(base_y + a01 * pxb,
                                                              base_x + a11 * pxb, wgt)
                weights[n, 0] = w00
                weights[n, 1] = w01
                weights[n, 2] = w10
                weights[n, 3] = w11
                bxs[n] = bx
                iys[n] = iy
                ixs[n] = ix
                n += 1
        starts[r + 1] = n
    py0 = 0
    px0 = 0
    hs = 0
    ws = 0
    if n:
        py0 = iys[:n].min()
        px0 = ixs[:n].min()
        hs = iys[:n].max() - py0 + 2
        ws = ixs[:n].max() - px0 + 2
    cells = np.empty(n, dtype=np.int64)
    for k in range(n):
        cells[k] = (iys[k] - py0) * ws + (ixs[k] - px0)
    return by_lo, starts, bxs[:n], cells, weights[:n], py0, px0, hs, ws


@numba.njit(nogil=True, cache=True)
def _tile_stencil(st, b, org_y, org_x, h, w):
    """Which bin rows of the stencil ``st`` a tile (top-left detector pixel
    ``(org_y, org_x)``, ``(h, w)``) holds whole, with all of the row's bins: ``(row_ok,
    coverage, r0, r1, q0, q1)``, ``coverage`` the summed weights of those rows in the
    stencil's block and ``[r0:r1, q0:q1]`` the part of the block they reach (empty when
    none)."""
    st_by0, starts, bxs, cells, weights, hs, ws = st[0], st[1], st[2], st[3], st[4], st[7], st[8]
    nrows = starts.shape[0] - 1
    row_ok = np.zeros(nrows, dtype=np.bool_)
    coverage = np.zeros(hs * ws)
    r0 = hs
    r1 = 0
    q0 = ws
    q1 = 0
    for r in range(nrows):
        by = st_by0 + r
        if starts[r] == starts[r + 1] or by * b < org_y or by * b + b > org_y + h:
            continue
        ok = True
        for k in range(starts[r], starts[r + 1]):
            if bxs[k] * b < org_x or bxs[k] * b + b > org_x + w:
                ok = False
                break
        if not ok:
            continue
        row_ok[r] = True
        for k in range(starts[r], starts[r + 1]):
            c = cells[k]
            coverage[c] += weights[k, 0]
            coverage[c + 1] += weights[k, 1]
            coverage[c + ws] += weights[k, 2]
            coverage[c + ws + 1] += weights[k, 3]
            r0 = min(r0, c // ws)
            r1 = max(r1, c // ws + 2)
            q0 = min(q0, c % ws)
            q1 = max(q1, c % ws + 2)
    return row_ok, coverage, r0, r1, q0, q1


#: Largest difference from whole target pixels between two frames' offsets for them to
#: share a stencil, target px (rounding of offsets that differ by whole scan steps).
STENCIL_TOL = 1e-11


@numba.njit(nogil=True, cache=True)
def project_frames(pix, fstride, rstride, n, h, w, org_y, org_x, b, centres, c0, offsets, A,
                    r_in, r_out, acc, fsum, stencil):
    """:func:`~stemcal.processing.tile.project_tile` for one thread: ``n`` frames of ``h`` x ``w`` px into ``acc``
    (H, W, 2), ``fsum``; pixel (y, x) of frame i is ``pix[i * fstride + y * rstride + x]``
    (a flat array, so that Numba sees unit steps along the rows and vectorises them).

    Frames with the first frame's beam centre and an offset a whole number of target
    pixels from its offset (no descan and an integer ``upsample``: usually all of them)
    splat their bins through one stencil of the disk (:func:`_build_stencil`), built once
    per call; bins of other frames, bins in rows this tile does not hold whole, and frames
    whose stencil would reach outside ``acc`` are splatted bin by bin (all of them when
    ``stencil`` is False). Returns how many frames went through the stencil.
    """
    stride = sweep_stride(float(b), A[0, 1], A[1, 1])  # bins of a row in interleaved sweeps
    rsum = np.empty(w)
    rowv = np.empty(fsum.shape[1])
    if n == 0:
        return 0
    H, W = acc.shape[0], acc.shape[1]
    nby, nbx = fsum.shape
    scy, scx = centres[0, 0], centres[0, 1]
    soy, sox = offsets[0, 0], offsets[0, 1]
    st = _build_stencil(b, scy, scx, soy, sox, A, r_in, r_out, nby, nbx, stride)
    py0, px0 = st[5], st[6]
    tst = _tile_stencil(st, b, org_y, org_x, h, w)
    r0, r1, q0, q1 = tst[2], tst[3], tst[4], tst[5]
    usable = stencil and r0 < r1
    block = np.zeros(st[7] * st[8])
    n_st = 0
    for i in range(n):
        cy, cx = centres[i, 0], centres[i, 1]
        oy, ox = offsets[i, 0], offsets[i, 1]
        use_st = False
        ty = 0
        tx = 0
        if usable and cy == scy and cx == scx:
            ny = round(oy - soy)
            nx = round(ox - sox)
            ty = py0 + int(ny)
            tx = px0 + int(nx)
            use_st = (abs(oy - soy - ny) <= STENCIL_TOL and abs(ox - sox - nx) <= STENCIL_TOL
                      and ty + r0 >= 0 and tx + q0 >= 0 and ty + r1 <= H and tx + q1 <= W)
        _project_frame(pix, i * fstride, rstride, h, w, org_y, org_x, b, cy, cx, c0[0], c0[1],
                       oy, ox, A, r_in, r_out, acc, fsum, rsum, rowv, stride, st, tst, block,
                       use_st, ty, tx)
        n_st += use_st
    return n_st


def flat_pixels(frames: np.ndarray) -> tuple[np.ndarray, int, int]:
    """The pixels of ``frames`` (n, h, w) as one flat array ``pix`` with frame and row strides
    in elements: pixel (y, x) of frame i is ``pix[i * fstride + y * rstride + x]``.

    A view of the same memory wherever the rows are contiguous (a tile cut from a larger
    array or an mmap, as LiberTEM hands them over), else of a contiguous copy. Numba treats
    a cut-out 3D view as of unknown strides and does not vectorise along its rows; the
    flat array has unit steps.
    """
    frames = np.asarray(frames)
    n, h, w = frames.shape
    isz = frames.dtype.itemsize
    if frames.size == 0:
        return np.zeros(0, dtype=frames.dtype), 0, 0
    s0, s1, s2 = frames.strides
    fs, rs = s0 // isz, s1 // isz
    usable = ((s2 == isz or w == 1) and s0 % isz == 0 and s1 % isz == 0
              and (h == 1 or rs >= w) and (n == 1 or fs >= (h - 1) * rs + w))
    if not usable:
        frames = np.ascontiguousarray(frames)
        fs, rs = h * w, w
    if n == 1:
        fs = 0
    if h == 1:
        rs = 0
    span = (n - 1) * fs + (h - 1) * rs + w
    pix = np.lib.stride_tricks.as_strided(frames, shape=(span,), strides=(isz,), writeable=False)
    return pix, fs, rs
