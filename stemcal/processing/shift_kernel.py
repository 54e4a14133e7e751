"""Normal equations of the Lucas-Kanade shift between each part's image and the rest.

For images ``k`` = 0..n-1 given as shifted sums ``S[k]`` and coverages ``C[k]``
(``image = S / C``), the reference of image ``k`` is the sum of the others,
``(sum S - S[k]) / (sum C - C[k])``. Fitting ``image(x) = a ref(x) + b +
a d . grad ref(x)`` (a shift ``d`` linearised, a gain ``a`` and offset ``b``
free) over a mask is linear least squares in ``(a, b, -a d_y, -a d_x)``;
:func:`shift_normal_equations` sums its normal equations in one sweep, the
gradient by central differences (y, x), without building the reference images.
"""
from __future__ import annotations

import numba

__all__ = ["shift_normal_equations"]


@numba.njit(nogil=True, cache=True)
def shift_normal_equations(S, C, good, XtX, Xty):
    """Add each image's ``X^T X`` (n, 4, 4) and ``X^T y`` (n, 4) over ``good`` (n, H, W).

    Columns of ``X``: the reference, 1, its y and x gradient (per pixel); ``y`` the
    image. ``good`` must be False on the outer pixel frame and where any of a pixel's
    four neighbours has no coverage in the reference (the gradient reads them).
    """
    n, H, W = S.shape
    for k in range(n):
        for y in range(1, H - 1):
            for x in range(1, W - 1):
                if not good[k, y, x]:
                    continue
                c = C[k, y, x]
                if c <= 0.0:
                    continue
                v = S[k, y, x] / c
                # the reference at the pixel and its four neighbours
                s0 = 0.0
                c0 = 0.0
                sn = 0.0
                cn = 0.0
                ss = 0.0
                cs = 0.0
                sw = 0.0
                cw = 0.0
                se = 0.0
                ce = 0.0
                for j in range(n):
                    if j == k:
                        continue
                    s0 += S[j, y, x]
                    c0 += C[j, y, x]
                    sn += S[j, y - 1, x]
                    cn += C[j, y - 1, x]
                    ss += S[j, y + 1, x]
                    cs += C[j, y + 1, x]
                    sw += S[j, y, x - 1]
                    cw += C[j, y, x - 1]
                    se += S[j, y, x + 1]
                    ce += C[j, y, x + 1]
                if c0 <= 0.0 or cn <= 0.0 or cs <= 0.0 or cw <= 0.0 or ce <= 0.0:
                    continue
                r = s0 / c0
                gy = 0.5 * (ss / cs - sn / cn)
                gx = 0.5 * (se / ce - sw / cw)
                col0 = r
                col2 = gy
                col3 = gx
                XtX[k, 0, 0] += col0 * col0
                XtX[k, 0, 1] += col0
                XtX[k, 0, 2] += col0 * col2
                XtX[k, 0, 3] += col0 * col3
                XtX[k, 1, 1] += 1.0
                XtX[k, 1, 2] += col2
                XtX[k, 1, 3] += col3
                XtX[k, 2, 2] += col2 * col2
                XtX[k, 2, 3] += col2 * col3
                XtX[k, 3, 3] += col3 * col3
                Xty[k, 0] += col0 * v
                Xty[k, 1] += v
                Xty[k, 2] += col2 * v
                Xty[k, 3] += col3 * v
        for i in range(4):
            for j in range(i):
                XtX[k, i, j] = XtX[k, j, i]
