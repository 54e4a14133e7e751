"""A calibration record applied in LiberTEM's CoMUDF and as py4DSTEM-style values.

Truth: an in-focus 4D-STEM dataset whose bright-field disk is deflected by a
known field ``E(s)`` defined in scan coordinates. The detector is rotated and
flipped as the record says (the record's convention: a detector-frame vector
``v`` is ``T v`` in the scan frame, ``T = detector_to_scan(rotation, flip)``,
the one the twin and the fit use), so the disk sits at
``c + D (s - s_mid) + T^-1 E(s)`` on the detector, ``D`` the descan.
LiberTEM's real ``CoMUDF`` with the exported parameters must give back ``E``.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from libertem.api import Context
from libertem.udf.com import CoMUDF

from stemcal.apply import descan_regression, libertem_com_params, py4dstem_params
from stemcal.record import CalibrationRecord
from stemcal.twin.model import detector_to_scan

NAV = (15, 18)            # odd/even: the scan middle is (7, 9)
SIG = (48, 48)
ROTATION, FLIP = -33.0, True
CY, CX = 23.6, 25.1
DESCAN = [[0.06, -0.03], [0.02, 0.05]]   # detector px per scan px
P0 = np.array([6.3, 9.7])                # centre of the radial field, scan px


def field_truth(nav_shape=NAV) -> np.ndarray:
    """E(s), scan frame, detector px: radial from P0 plus a uniform part, (ny, nx, 2)."""
    s = np.stack(np.meshgrid(np.arange(nav_shape[0]), np.arange(nav_shape[1]), indexing="ij"),
                 axis=-1).astype(float)
    d = s - P0
    r = np.linalg.norm(d, axis=-1, keepdims=True)
    return 2.0 * d / (r + 2.0) + np.array([0.4, -0.25])


def simulate(rotation=ROTATION, flip=FLIP, descan=DESCAN, nav_shape=NAV) -> np.ndarray:
    """Smooth-edged disk (radius 6 px, edge 1.2 px wide) at the deflected beam position."""
    E = field_truth(nav_shape)
    Tinv = np.linalg.inv(detector_to_scan(rotation, flip))
    mid = np.array([nav_shape[0] // 2, nav_shape[1] // 2], dtype=float)
    yy, xx = np.mgrid[:SIG[0], :SIG[1]].astype(float)
    data = np.empty(nav_shape + SIG, dtype=np.float32)
    for iy in range(nav_shape[0]):
        for ix in range(nav_shape[1]):
            s = np.array([iy, ix], dtype=float)
            py, px = np.array([CY, CX]) + np.asarray(descan) @ (s - mid) + Tinv @ E[iy, ix]
            r = np.hypot(yy - py, xx - px)
            data[iy, ix] = 500.0 * (1 - np.tanh((r - 6.0) / 1.2))
    return data


def record(**changes) -> CalibrationRecord:
    kw = dict(scan_rotation=ROTATION, flip_y=FLIP, overfocus=1e-6, cy=CY, cx=CX, descan=DESCAN,
              scan_pixel_size=0.5e-9, camera_length=0.2, detector_pixel_size=55e-6,
              semiconv=0.01)
    kw.update(changes)
    return CalibrationRecord(**kw)


def angle_error_deg(field: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Angle between two vector fields (..., 2), degrees, where the truth is not tiny."""
    cross = field[..., 0] * truth[..., 1] - field[..., 1] * truth[..., 0]
    dot = (field * truth).sum(-1)
    err = np.degrees(np.abs(np.arctan2(cross, dot)))
    return err[np.linalg.norm(truth, axis=-1) > 0.3]


@pytest.fixture(scope="module")
def ctx():
    c = Context.make_with("inline")
    yield c
    c.close()


@pytest.fixture(scope="module")
def dataset(ctx):
    return ctx.load("memory", data=simulate(), sig_dims=2)


def com_field(ctx, ds, params) -> np.ndarray:
    res = ctx.run_udf(dataset=ds, udf=CoMUDF.with_params(**params))
    return res["field"].data.reshape(NAV + (2,))


def test_exported_parameters_give_the_true_field(ctx, dataset):
    params = record().to_libertem_com(NAV)
    assert params["scan_rotation"] == ROTATION and params["flip_y"] is FLIP
    assert (params["cy"], params["cx"]) == (CY, CX)
    assert np.asarray(params["regression"]).shape == (3, 2)
    field = com_field(ctx, dataset, params)
    err = angle_error_deg(field, field_truth())
    assert err.size > 200
    assert err.max() < 0.5, f"max angle error {err.max():.3f} deg"
    assert np.abs(field - field_truth()).max() < 1e-3  # detector px (measured 2e-5)


def test_wrong_flip_or_ignored_descan_gives_a_wrong_field(ctx, dataset):
    wrong_flip = record(flip_y=not FLIP).to_libertem_com(NAV)
    err = angle_error_deg(com_field(ctx, dataset, wrong_flip), field_truth())
    assert np.median(err) > 20, f"median angle error only {np.median(err):.1f} deg"
    no_descan = record().to_libertem_com()  # no nav_shape: no regression
    assert "regression" not in no_descan
    err = angle_error_deg(com_field(ctx, dataset, no_descan), field_truth())
    assert err.max() > 5, f"descan ignored, yet max angle error only {err.max():.2f} deg"
    off_by_one = record(scan_rotation=ROTATION + 1.0).to_libertem_com(NAV)
    err = angle_error_deg(com_field(ctx, dataset, off_by_one), field_truth())
    assert 0.9 < err.min() and err.max() < 1.1  # the test resolves a 1 degree error


def test_regression_rows_are_offset_and_slopes():
    reg = descan_regression(record(), NAV)
    TD = detector_to_scan(ROTATION, FLIP) @ np.array(DESCAN)
    assert np.allclose(reg[1], TD[:, 0]) and np.allclose(reg[2], TD[:, 1])
    assert np.allclose(reg[0], -TD @ [7, 9])
    # zero descan: zero regression, also from a start document's calibration dict
    d = record(descan=[[0, 0], [0, 0]]).to_dict()
    assert np.all(descan_regression(d, NAV) == 0)
    assert libertem_com_params(d)["scan_rotation"] == ROTATION
    with pytest.raises(ValueError, match="nav_shape"):
        descan_regression(d, (0, 4))
    with pytest.raises(ValueError, match="flip_y"):
        libertem_com_params({**d, "flip_y": "yes"})


# -- py4DSTEM-style values -----------------------------------------------------------

def py4dstem_rotate(com_x: np.ndarray, com_y: np.ndarray, theta: float, transpose: bool):
    """Reference of py4DSTEM's CoM rotation (x = first axis): transpose swaps, then
    ``x' = cos t x - sin t y``, ``y' = sin t x + cos t y``."""
    if transpose:
        com_x, com_y = com_y, com_x
    return (math.cos(theta) * com_x - math.sin(theta) * com_y,
            math.sin(theta) * com_x + math.cos(theta) * com_y)


def test_py4dstem_values_give_the_true_field(ctx, dataset):
    p = record().to_py4dstem()
    assert p["transpose"] is True and p["force_com_transpose"] is True
    assert math.isclose(p["rotation_rad"], math.radians(90 - ROTATION))  # 123 deg
    assert math.isclose(p["force_com_rotation"], 123.0)
    assert (p["qx0"], p["qy0"]) == (CY, CX)
    # raw CoM shifts about (qx0, qy0), descan removed in the detector frame
    res = ctx.run_udf(dataset=dataset, udf=CoMUDF.with_params(cy=p["qx0"], cx=p["qy0"]))
    raw = res["raw_shifts"].data.reshape(NAV + (2,))
    s = np.stack(np.meshgrid(np.arange(NAV[0]), np.arange(NAV[1]), indexing="ij"), -1)
    raw = raw - (s - np.array([7, 9])) @ np.array(DESCAN).T
    fx, fy = py4dstem_rotate(raw[..., 0], raw[..., 1], p["rotation_rad"], p["transpose"])
    field = np.stack([fx, fy], -1)
    err = angle_error_deg(field, field_truth())
    assert err.max() < 0.5, f"max angle error {err.max():.3f} deg"
    fx, fy = py4dstem_rotate(raw[..., 0], raw[..., 1], p["rotation_rad"], not p["transpose"])
    assert np.median(angle_error_deg(np.stack([fx, fy], -1), field_truth())) > 20


@pytest.mark.parametrize("rotation", [-179.0, -90.0, -33.0, 0.0, 12.5, 90.0, 145.0])
@pytest.mark.parametrize("flip", [False, True])
def test_py4dstem_conversion_matches_libertem_transform(rotation, flip):
    p = py4dstem_params(record(scan_rotation=rotation, flip_y=flip))
    assert -math.pi <= p["rotation_rad"] < math.pi and p["transpose"] is flip
    v = np.array([[1.0, 0.0], [0.0, 1.0], [0.3, -0.7]])  # detector-frame vectors (row, col)
    ref = np.stack(py4dstem_rotate(v[:, 0], v[:, 1], p["rotation_rad"], p["transpose"]), -1)
    assert np.allclose(ref, v @ detector_to_scan(rotation, flip).T)
