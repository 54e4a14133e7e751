"""Normal equations of the Lucas-Kanade shift of images against their references.

Fitting ``image(x) = a ref(x) + b + a d . grad ref(x)`` (a shift ``d``
linearised, a gain ``a`` and an offset ``b`` free) over a mask is linear least
squares in ``(a, b, -a d_y, -a d_x)``; :func:`shift_normal_equations` sums its
normal equations for several image/reference pairs in one sweep, the
reference's gradient by central differences along (y, x).
"""
from __future__ import annotations

import numba

__all__ = ["shift_normal_equations"]


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
