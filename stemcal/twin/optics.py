"""The ray-traced digital twin of an overfocused 4D-STEM experiment (temgym-core).

The closed-form model of :mod:`stemcal.twin.model` is rebuilt here from
``temgym_core`` components and traced with JAX, so that it can be checked
against the physics and later extended (lens aberrations, non-linear descan).
The geometry, along the optical axis ``z`` (metres, increasing downstream)::

    z = 0          point crossover (the focus), shifted laterally by the scan
    z = d          specimen plane (ScanGrid: scan px <-> metres), then Descanner
    z = d + L      Detector

with ``d = params.overfocus`` and ``L = params.camera_length``. A ray is given
by its scan position ``s`` (scan px) and its slope ``u`` (radians): it passes
the crossover at the scanned position ``x_s(s)`` and is at ``x_s + u z``
anywhere else. For underfocus ``d < 0`` the specimen lies *upstream* of the
crossover; the ray then starts at the specimen plane (``z = d``) at
``x_s + u d`` so that all components stay in increasing ``z`` order and every
free-space step is a forward one (temgym's paraxial propagator would also
accept negative distances, but ``run_iter`` documents an increasing-z model).

Conventions found by computation (temgym-core 0.1.1)
----------------------------------------------------
temgym's grids map pixels to metres as
``F(flip_y) @ F0 @ rotate_deg(rotation) @ (S (p - p0) + centre)`` where ``F0 =
diag(-1, 1)`` turns pixel y (down) into optical y (up), ``S`` the pixel size
and ``p0 = (shape - 1) / 2`` (``coordinate_transforms.pixels_to_metres_transform``).
With an unrotated, unflipped ScanGrid the detector -> specimen map is therefore
``k F(flip_y) @ rotate_deg(rotation_det)`` (``F0`` cancels): temgym applies the
detector flip *after* the rotation (pixels -> metres), LiberTEM's
``rotate_deg(scan_rotation) @ flip_y()`` flips *first*. Because
``F R(a) = R(-a) F``, the twin reproduces LiberTEM's ``scan_rotation`` with
``Detector(rotation=scan_rotation, flip_y=False)`` and
``Detector(rotation=-scan_rotation, flip_y=True)``: the sign of temgym's
detector rotation must be inverted when the detector is flipped (an equivalent
choice is ``ScanGrid(rotation=-scan_rotation)`` with ``Detector(flip_y=flip_y)``
for both handedness). Also, in 0.1.1 the grids' ``centre`` is added as a
``(y, x)`` shift in the unrotated, pixel-scaled frame, not as the ``(x, y)``
metres position its docstring states; :func:`_grid_centre` relies on that and
the tests check the result.

This module imports JAX (slow import); :mod:`stemcal.twin` does not import it.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import jax_dataclasses as jdc
import numpy as np
from temgym_core.components import DescanError, Descanner, Detector, ScanGrid, Scanner
from temgym_core.ray import Ray
from temgym_core.run import run_iter

from .model import SpecimenMap, scan_middle
from .params import OverfocusParams

jax.config.update("jax_enable_x64", True)

__all__ = ["OpticsModel", "build_model", "trace", "linearised_map", "detector_rotation"]


class OpticsModel(NamedTuple):
    """The twin's components (a JAX pytree).

    Attributes
    ----------
    components : tuple
        ``(Scanner, ScanGrid, Descanner, Detector)`` in increasing ``z``. The
        Scanner and Descanner carry scan position 0; :func:`trace` replaces it
        per ray.
    scan_grid : temgym_core.components.ScanGrid
        Scan px <-> metres at the specimen plane (specimen px = scan px).
    detector : temgym_core.components.Detector
        Detector px <-> metres at the detector plane.
    """

    components: tuple
    scan_grid: ScanGrid
    detector: Detector


def detector_rotation(scan_rotation: float, flip_y: bool) -> float:
    """temgym ``Detector.rotation`` (degrees) equivalent to LiberTEM's ``scan_rotation``.

    ``scan_rotation`` if not flipped, ``-scan_rotation`` if ``flip_y``: temgym
    flips after rotating, LiberTEM before (see the module docstring).
    """
    return -float(scan_rotation) if flip_y else float(scan_rotation)


def _grid_centre(ref_yx: tuple[float, float], shape: tuple[int, int],
                 pixel_size: float) -> tuple[float, float]:
    """temgym grid ``centre`` that puts pixel ``ref_yx`` on the optical axis (metres 0)."""
    return (float((shape[0] - 1) / 2.0 - ref_yx[0]) * pixel_size,
            float((shape[1] - 1) / 2.0 - ref_yx[1]) * pixel_size)


def _linear_part_xy(grid) -> np.ndarray:
    """d(metres x, y) / d(pixel y, x) of a temgym grid, (2, 2)."""
    M = np.asarray(grid.pixels_to_metres_mat, dtype=float)[:2, :2]  # rows (y_m, x_m)
    return M[::-1, :]  # rows (x_m, y_m)


def build_model(params: OverfocusParams, nav_shape: tuple[int, int],
                sig_shape: tuple[int, int]) -> OpticsModel:
    """Build the twin's temgym components for a geometry.

    Parameters
    ----------
    params : OverfocusParams
        Geometry (lengths in metres, ``scan_rotation`` in degrees, beam centre
        and descan in pixels).
    nav_shape, sig_shape : (int, int)
        Scan and detector shape, pixels (y, x).

    Returns
    -------
    OpticsModel
        Scanner at the crossover (or at the specimen plane for underfocus,
        see the module docstring), ScanGrid at the specimen plane ``z = d``
        with the scan middle ``(ny // 2, nx // 2)`` on the optical axis,
        Descanner directly after the specimen (it removes the scan shift; its
        ``DescanError`` position terms reproduce ``params.descan``), Detector
        at ``z = d + L`` with the optical axis at pixel ``(cy, cx)`` and
        rotation/flip from :func:`detector_rotation`.
    """
    nav_shape = (int(nav_shape[0]), int(nav_shape[1]))
    sig_shape = (int(sig_shape[0]), int(sig_shape[1]))
    if min(nav_shape) < 1 or min(sig_shape) < 1:
        raise ValueError(f"nav_shape and sig_shape must be positive (y, x), got {nav_shape}, "
                         f"{sig_shape}")
    d = float(params.overfocus)
    L = float(params.camera_length)
    z_start = min(0.0, d)
    s_mid = scan_middle(nav_shape)
    scan_grid = ScanGrid(
        z=d, pixel_size=(params.scan_pixel_size, params.scan_pixel_size), shape=nav_shape,
        rotation=0.0, centre=_grid_centre((s_mid[0], s_mid[1]), nav_shape, params.scan_pixel_size),
        flip_y=False,
    )
    detector = Detector(
        z=d + L, pixel_size=(params.detector_pixel_size, params.detector_pixel_size),
        shape=sig_shape, rotation=detector_rotation(params.scan_rotation, params.flip_y),
        centre=_grid_centre((params.cy, params.cx), sig_shape, params.detector_pixel_size),
        flip_y=params.flip_y,
    )
    # Descan error: D is detector px per scan px; the Descanner wants metres at the detector
    # per metre of scan, (x, y) order. Its position offset reaches the detector unchanged
    # (it adds no slope), so P = J_det D J_scan^-1 with J = d(metres x, y) / d(pixel y, x).
    P = (_linear_part_xy(detector) @ params.descan_matrix
         @ np.linalg.inv(_linear_part_xy(scan_grid)))
    error = DescanError(pxo_pxi=float(P[0, 0]), pxo_pyi=float(P[0, 1]),
                        pyo_pxi=float(P[1, 0]), pyo_pyi=float(P[1, 1]))
    components = (
        Scanner(z=z_start, scan_pos_x=0.0, scan_pos_y=0.0),
        scan_grid,
        Descanner(z=d, scan_pos_x=0.0, scan_pos_y=0.0, descan_error=error),
        detector,
    )
    return OpticsModel(components=components, scan_grid=scan_grid, detector=detector)


def _trace_one(model: OpticsModel, scan_yx: jnp.ndarray, slope_yx: jnp.ndarray) -> jnp.ndarray:
    """One ray -> ``[det_y, det_x, spec_y, spec_x]`` in pixels (JAX, traceable)."""
    scan_xy = model.scan_grid.pixels_to_metres((scan_yx[0], scan_yx[1]))
    components = [
        jdc.replace(c, scan_pos_x=scan_xy.x, scan_pos_y=scan_xy.y)
        if isinstance(c, (Scanner, Descanner)) else c
        for c in model.components
    ]
    z_start = components[0].z
    # Before the Scanner the ray passes the unscanned crossover (optical axis, z = 0).
    ray = Ray(x=slope_yx[1] * z_start, y=slope_yx[0] * z_start, dx=slope_yx[1], dy=slope_yx[0],
              z=z_start, pathlength=0.0)
    at_specimen = None
    for component, ray in run_iter(ray, components):
        if isinstance(component, ScanGrid):
            at_specimen = ray
    spec = model.scan_grid.metres_to_pixels((at_specimen.x, at_specimen.y), cast=False)
    det = model.detector.metres_to_pixels((ray.x, ray.y), cast=False)
    return jnp.stack([det.y, det.x, spec.y, spec.x])


_trace_batch = jax.jit(jax.vmap(_trace_one, in_axes=(None, 0, 0)))
_trace_one_jit = jax.jit(_trace_one)
_trace_jacobian = jax.jit(jax.jacfwd(_trace_one, argnums=(1, 2)))


def trace(params: OverfocusParams, nav_shape: tuple[int, int], sig_shape: tuple[int, int],
          scan_yx: np.ndarray, slope_yx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Trace rays through the twin.

    Parameters
    ----------
    params : OverfocusParams
        Geometry.
    nav_shape, sig_shape : (int, int)
        Scan and detector shape.
    scan_yx : (..., 2) array_like
        Scan position of each ray, scan pixels (y, x).
    slope_yx : (..., 2) array_like
        Ray slope after the crossover, radians (y, x; optical y points
        against detector pixel y, see the module docstring). Broadcast
        against ``scan_yx``.

    Returns
    -------
    det_yx : (..., 2) float64
        Where each ray hits the detector, detector pixels (y, x).
    spec_yx : (..., 2) float64
        Where it crosses the specimen plane, specimen (= scan) pixels (y, x).
    """
    scan_yx, slope_yx = np.broadcast_arrays(np.asarray(scan_yx, dtype=float),
                                            np.asarray(slope_yx, dtype=float))
    if scan_yx.shape[-1:] != (2,):
        raise ValueError(f"scan_yx and slope_yx must have shape (..., 2), got {scan_yx.shape}")
    batch = scan_yx.shape[:-1]
    model = build_model(params, nav_shape, sig_shape)
    out = np.asarray(_trace_batch(model, jnp.asarray(scan_yx.reshape(-1, 2)),
                                  jnp.asarray(slope_yx.reshape(-1, 2))))
    out = out.reshape(batch + (4,))
    return out[..., :2], out[..., 2:]


def linearised_map(params: OverfocusParams, nav_shape: tuple[int, int],
                   sig_shape: tuple[int, int]) -> SpecimenMap:
    """The twin's (detector px, scan px) -> specimen px map, from its Jacobian.

    ``jax.jacfwd`` of the traced detector position ``p(s, u)`` and specimen
    position ``q(s, u)`` with respect to the scan position ``s`` and the slope
    ``u`` at ``(s_mid, 0)`` gives ``p = p0 + P_s ds + P_u u`` and
    ``q = q0 + Q_s ds + Q_u u``; eliminating the slope,
    ``u = P_u^-1 (p - p0 - P_s ds)``, yields ``q = A p + B s + t`` with
    ``A = Q_u P_u^-1``, ``B = Q_s - A P_s`` and ``t = q0 - A p0 - B s_mid``.
    The twin is linear, so this is exact (to rounding) everywhere. ``params``,
    ``nav_shape`` and ``sig_shape`` are as for :func:`trace`.

    Returns
    -------
    SpecimenMap
        Comparable with :func:`stemcal.twin.model.specimen_map`.
    """
    return _linearise(build_model(params, nav_shape, sig_shape), nav_shape)


def _linearise(model: OpticsModel, nav_shape: tuple[int, int]) -> SpecimenMap:
    """:func:`linearised_map` of an already built (possibly modified) model."""
    s0 = jnp.asarray(scan_middle(nav_shape))
    u0 = jnp.zeros(2)
    value = np.asarray(_trace_one_jit(model, s0, u0))
    J_s, J_u = (np.asarray(j) for j in _trace_jacobian(model, s0, u0))
    P_s, Q_s = J_s[:2], J_s[2:]
    P_u, Q_u = J_u[:2], J_u[2:]
    p0, q0 = value[:2], value[2:]
    A = Q_u @ np.linalg.inv(P_u)
    B = Q_s - A @ P_s
    t = q0 - A @ p0 - B @ np.asarray(s0)
    return SpecimenMap(A=A, B=B, t=t)


