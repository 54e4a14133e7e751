"""Apply a calibration in analysis software: LiberTEM's CoM and py4DSTEM-style values.

Conventions
-----------
stemcal stores the scan-to-detector geometry in LiberTEM's convention
(:mod:`stemcal.twin.model`): a vector ``v`` measured in the detector frame,
(y, x) order, is expressed in the scan frame as ``T @ v`` with::

    T = R(scan_rotation) @ F,   R(a) = [[cos a, sin a], [-sin a, cos a]],
    F = diag(-1, 1) if flip_y else identity

(``libertem.udf.com.apply_correction``). The beam centre at scan position
``s`` (scan pixels, (y, x)) is ``c + D @ (s - s_mid)`` with ``c = (cy, cx)``
(detector pixels), ``D`` the descan matrix (detector pixels per scan pixel;
rows detector (y, x), columns scan (y, x)) and ``s_mid = (ny // 2, nx // 2)``.

The functions take anything with the attributes ``scan_rotation``, ``flip_y``,
``cy``, ``cx`` and ``descan`` (a :class:`~stemcal.record.CalibrationRecord`,
:class:`~stemcal.twin.OverfocusParams`, or the ``calibration`` a run's start
document carries, via :func:`geometry_of`).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from .checks import finite

from .twin.model import detector_to_scan, scan_middle

__all__ = ["geometry_of", "descan_regression", "libertem_com_params", "py4dstem_params"]


def geometry_of(source: Any) -> dict[str, Any]:
    """``scan_rotation`` (deg), ``flip_y``, ``cy``, ``cx`` (px), ``descan`` (2x2) of ``source``.

    ``source`` is an object with those attributes or a mapping with those keys
    (e.g. ``start["calibration"]`` of a run taken with
    :func:`stemcal.attach.attach_calibration`); a missing ``descan`` is zero.

    Raises
    ------
    ValueError
        A value is missing or not finite, or ``descan`` is not 2x2.
    """
    get = source.get if isinstance(source, Mapping) else (lambda k, d=None: getattr(source, k, d))
    if source is None:
        raise ValueError("no calibration given (None)")
    out: dict[str, Any] = {}
    for key in ("scan_rotation", "cy", "cx"):
        out[key] = finite(f"calibration {key}", get(key))
    flip = get("flip_y")
    if not isinstance(flip, (bool, np.bool_)):
        raise ValueError(f"calibration flip_y must be a bool, got {flip!r}")
    out["flip_y"] = bool(flip)
    descan = np.asarray(get("descan") if get("descan") is not None else np.zeros((2, 2)),
                        dtype=float)
    if descan.shape != (2, 2) or not np.all(np.isfinite(descan)):
        raise ValueError(f"calibration descan must be a finite 2x2 matrix, got {descan.tolist()!r}")
    out["descan"] = descan
    return out


def _nav_shape(nav_shape: Any) -> tuple[int, int]:
    try:
        ny, nx = (int(v) for v in nav_shape)
    except (TypeError, ValueError):
        raise ValueError(f"nav_shape must be (ny, nx), got {nav_shape!r}") from None
    if ny < 1 or nx < 1 or (ny, nx) != tuple(nav_shape):
        raise ValueError(f"nav_shape must be two positive integers, got {nav_shape!r}")
    return ny, nx


def descan_regression(source: Any, nav_shape: tuple[int, int]) -> np.ndarray:
    """The descan of ``source`` as the (3, 2) ``regression`` LiberTEM's ``CoMUDF`` subtracts.

    ``CoMUDF`` subtracts ``[1, y, x] @ regression`` from the *corrected* field
    (scan frame, after rotation and flip), with ``(y, x)`` the scan pixel
    indices counted from the first scan position: rows are ``(offset,
    d field / d y, d field / d x)``. Descan moves the beam centre by
    ``D (s - s_mid)`` on the detector, i.e. by ``T D (s - s_mid)`` in the scan
    frame, so::

        regression[0] = -T D s_mid,    regression[1:] = (T D).T

    Parameters
    ----------
    source : CalibrationRecord or similar
        See :func:`geometry_of`.
    nav_shape : (ny, nx)
        Scan shape of the dataset to analyse; its middle ``(ny // 2, nx // 2)``
        is where the beam is at ``(cy, cx)``.

    Returns
    -------
    ndarray, shape (3, 2)
        Detector pixels in the scan frame (the unit of LiberTEM's field).
    """
    g = geometry_of(source)
    TD = detector_to_scan(g["scan_rotation"], g["flip_y"]) @ g["descan"]
    reg = np.zeros((3, 2))
    reg[0] = -TD @ scan_middle(_nav_shape(nav_shape))
    reg[1:] = TD.T
    return reg


def libertem_com_params(source: Any, nav_shape: tuple[int, int] | None = None) -> dict[str, Any]:
    """Keyword arguments of ``libertem.udf.com.CoMUDF.with_params`` for this calibration.

    Parameters
    ----------
    source : CalibrationRecord or similar
        See :func:`geometry_of`.
    nav_shape : (ny, nx), optional
        Scan shape of the dataset; needed for the descan regression (its
        reference point is the scan middle). Without it no ``regression`` is
        given, and ``CoMUDF`` keeps its default (none).

    Returns
    -------
    dict
        ``scan_rotation`` (deg), ``flip_y`` (bool), ``cy``, ``cx`` (detector px;
        the beam centre at the scan middle) and, with ``nav_shape``,
        ``regression`` ((3, 2) nested list, :func:`descan_regression`). Use as
        ``CoMUDF.with_params(**params)``; add ``r`` / ``ri`` for a mask.
    """
    g = geometry_of(source)
    out: dict[str, Any] = {"scan_rotation": g["scan_rotation"], "flip_y": g["flip_y"],
                           "cy": g["cy"], "cx": g["cx"]}
    if nav_shape is not None:
        out["regression"] = descan_regression(source, nav_shape).tolist()
    return out


def py4dstem_params(source: Any) -> dict[str, Any]:
    """py4DSTEM-style values for this calibration: rotation in radians and a transpose flag.

    Assumed convention (py4DSTEM 0.14, ``PhaseReconstruction.
    _solve_for_center_of_mass_relative_rotation``): py4DSTEM calls the first
    array axis (rows) ``x`` and the second ``y``, in real and in diffraction
    space. A CoM vector ``(com_x, com_y)`` of the detector frame becomes, in the
    scan frame, ``P(theta) @ S^t @ (com_x, com_y)`` with::

        P(theta) = [[cos theta, -sin theta], [sin theta, cos theta]],
        S = [[0, 1], [1, 0]]  (swap the two components: "transpose")

    As ``P(theta) = R(-theta)`` and ``S = R(90 deg) F`` (with LiberTEM's ``R``
    and ``F``), LiberTEM's ``T = R(phi) F^f`` is matched by::

        flip_y False:  theta = -phi,          transpose False
        flip_y True:   theta = 90 deg - phi,  transpose True

    (angles wrapped to [-pi, pi)).

    Returns
    -------
    dict
        ``rotation_rad`` (theta, radians), ``transpose`` (bool),
        ``force_com_rotation`` (theta in degrees, as py4DSTEM's DPC/ptychography
        ``preprocess(force_com_rotation=...)`` takes it), ``force_com_transpose``
        (= ``transpose``), ``qx0``, ``qy0`` (the beam centre, detector rows and
        columns, = ``cy``, ``cx``).
    """
    g = geometry_of(source)
    phi = math.radians(g["scan_rotation"])
    theta = (math.pi / 2 - phi) if g["flip_y"] else -phi
    theta = (theta + math.pi) % (2 * math.pi) - math.pi
    return {"rotation_rad": theta, "transpose": g["flip_y"],
            "force_com_rotation": math.degrees(theta), "force_com_transpose": g["flip_y"],
            "qx0": g["cy"], "qy0": g["cx"]}

