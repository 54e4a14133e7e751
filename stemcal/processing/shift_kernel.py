"""Normal equations of the Lucas-Kanade shift of images against their references.

Fitting ``image(x) = a ref(x) + b + a d . grad ref(x)`` (a shift ``d``
linearised, a gain ``a`` and an offset ``b`` free) over a mask is linear least
squares in ``(a, b, -a d_y, -a d_x)``; :func:`shift_normal_equations` sums its
normal equations for several image/reference pairs in one sweep, the
reference's gradient by central differences along (y, x).
:func:`octant_shift_equations` makes the pairs of the final stage's octants
itself (each octant's image against the sum of the others, smoothed alike) for
all groups of frames and for each group left out, in one call and without
copies per row.
"""
from __future__ import annotations

import numba
import numpy as np

__all__ = ["shift_normal_equations", "octant_shift_equations"]


@numba.njit(nogil=True, cache=True)
def shift_normal_equations(img, ref, good, XtX, Xty):
    """Add each pair's ``X^T X`` (n, 4, 4) and ``X^T y`` (n, 4) over ``good`` (n, H, W).

    ``img``, ``ref`` (n, H, W). Columns of ``X``: the reference, 1, its y and x
    gradient; ``y`` the image. ``good`` must be False on the outer pixel frame and
    next to any pixel where the reference is not valid (the gradient reads the four
    neighbours).
    """
    n, H, W = img.shape
    for k in range(n):
        for y in range(1, H - 1):
            for x in range(1, W - 1):
                if not good[k, y, x]:
                    continue
                v = img[k, y, x]
                r = ref[k, y, x]
                gy = 0.5 * (ref[k, y + 1, x] - ref[k, y - 1, x])
                gx = 0.5 * (ref[k, y, x + 1] - ref[k, y, x - 1])
                XtX[k, 0, 0] += r * r
                XtX[k, 0, 1] += r
                XtX[k, 0, 2] += r * gy
                XtX[k, 0, 3] += r * gx
                XtX[k, 1, 1] += 1.0
                XtX[k, 1, 2] += gy
                XtX[k, 1, 3] += gx
                XtX[k, 2, 2] += gy * gy
                XtX[k, 2, 3] += gy * gx
                XtX[k, 3, 3] += gx * gx
                Xty[k, 0] += r * v
                Xty[k, 1] += v
                Xty[k, 2] += gy * v
                Xty[k, 3] += gx * v
        for i in range(4):
            for j in range(i):
                XtX[k, i, j] = XtX[k, j, i]


@numba.njit(nogil=True, cache=True)
def _smooth(a, tmp, passes):
    """``a`` (H, W) filtered in place by [1, 2, 1] / 4 along y, then x, ``passes`` times;
    the edge value repeated beyond the edges (``mode='nearest'``). ``tmp``: scratch."""
    H, W = a.shape
    for _ in range(passes):
        for y in range(H):
            y0 = max(y - 1, 0)
            y1 = min(y + 1, H - 1)
            for x in range(W):
                tmp[y, x] = 0.25 * a[y0, x] + 0.5 * a[y, x] + 0.25 * a[y1, x]
        for y in range(H):
            for x in range(W):
                x0 = max(x - 1, 0)
                x1 = min(x + 1, W - 1)
                a[y, x] = 0.25 * tmp[y, x0] + 0.5 * tmp[y, x] + 0.25 * tmp[y, x1]


@numba.njit(nogil=True, cache=True)
def octant_shift_equations(all_S, all_C, part_S, part_C, good, passes, XtX, Xty):
    """Normal equations of each octant's shift against the sum of the others, for all
    groups of frames and for each group left out, in one call.

    ``all_S``, ``all_C`` (n, H, W): shifted sums and coverages of the n octants over all
    groups; ``part_S``, ``part_C`` (K, n, H, W): each group's share. Row 0 of the outputs
    is all groups, row ``1 + g`` all but group ``g`` (its sums minus group ``g``'s). Per
    row and octant ``k``: the image ``S_k / C_k`` and the reference ``(sum S - S_k) /
    (sum C - C_k)`` (0 where the coverage is not positive), both smoothed ``passes``
    times by [1, 2, 1] / 4 along y and x (edge values repeated), then
    :func:`shift_normal_equations` over ``good`` (n, H, W), which must be False within
    ``passes + 1`` px of the edges. Adds into ``XtX`` (K + 1, n, 4, 4) and ``Xty``
    (K + 1, n, 4).
    """
    K = part_S.shape[0]
    n, H, W = all_S.shape
    Sr = np.empty((n, H, W))
    Cr = np.empty((n, H, W))
    totS = np.empty((H, W))
    totC = np.empty((H, W))
    img = np.empty((1, H, W))
    ref = np.empty((1, H, W))
    tmp = np.empty((H, W))
    for row in range(K + 1):
        for y in range(H):
            for x in range(W):
                totS[y, x] = 0.0
                totC[y, x] = 0.0
        for k in range(n):
            for y in range(H):
                for x in range(W):
                    s = all_S[k, y, x]
                    c = all_C[k, y, x]
                    if row > 0:
                        s -= part_S[row - 1, k, y, x]
                        c -= part_C[row - 1, k, y, x]
                    Sr[k, y, x] = s
                    Cr[k, y, x] = c
                    totS[y, x] += s
                    totC[y, x] += c
        for k in range(n):
            for y in range(H):
                for x in range(W):
                    c = Cr[k, y, x]
                    img[0, y, x] = Sr[k, y, x] / c if c > 0 else 0.0
                    rest = totC[y, x] - c
                    ref[0, y, x] = (totS[y, x] - Sr[k, y, x]) / rest if rest > 0 else 0.0
            _smooth(img[0], tmp, passes)
            _smooth(ref[0], tmp, passes)
            shift_normal_equations(img, ref, good[k:k + 1], XtX[row, k:k + 1], Xty[row, k:k + 1])
