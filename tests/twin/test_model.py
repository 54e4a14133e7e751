"""The closed-form linear model, its parameters and the simulator that uses it."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from libertem.analysis.com import apply_correction

from stemcal.twin import (OverfocusParams, SimulatedSpecimen, beam_centres, decompose_matrix,
                          scan_middle, simulate, specimen_map)

NAV = (9, 12)


def random_params(rng: np.random.Generator, *, flip_y: bool, underfocus: bool,
                  descan: bool = True) -> OverfocusParams:
    sign = -1.0 if underfocus else 1.0
    return OverfocusParams(
        overfocus=sign * rng.uniform(0.2e-6, 5e-6),
        scan_pixel_size=rng.uniform(0.1e-9, 2e-9),
        camera_length=rng.uniform(0.1, 1.0),
        detector_pixel_size=rng.uniform(10e-6, 150e-6),
        semiconv=rng.uniform(1e-3, 20e-3),
        cy=rng.uniform(0, 64), cx=rng.uniform(0, 64),
        scan_rotation=rng.uniform(-180, 180),
        flip_y=flip_y,
        descan=rng.uniform(-0.1, 0.1, (2, 2)) if descan else ((0, 0), (0, 0)),
    )


CASES = [(seed, flip, under)
         for seed in range(3) for flip in (False, True) for under in (False, True)]


def case_params(seed, flip, under) -> OverfocusParams:
    return random_params(np.random.default_rng([seed, flip, under]), flip_y=flip, underfocus=under)


def angle_diff(a: float, b: float) -> float:
    return abs((a - b + 180.0) % 360.0 - 180.0)


# -- (a) LiberTEM's convention ---------------------------------------------------------------
@pytest.mark.parametrize("seed, flip, under", CASES)
def test_specimen_map_matches_libertem_apply_correction(seed, flip, under):
    params = case_params(seed, flip, under)
    k = params.magnification_ratio
    assert (k < 0) == under
    m = specimen_map(params, NAV)
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(10, 2)) * 10  # detector-frame displacements from the beam centre
    s = rng.uniform(0, 1, (10, 2)) * (np.array(NAV) - 1)
    c = beam_centres(params, s, NAV)
    got = m.forward(c + v, s) - m.forward(c, s)
    np.testing.assert_allclose(got, v @ m.A.T, atol=1e-12)
    ly, lx = apply_correction(v[:, 0].copy(), v[:, 1].copy(), params.scan_rotation, params.flip_y)
    np.testing.assert_allclose(got, k * np.stack([ly, lx], axis=-1), rtol=0,
                               atol=1e-12 * np.abs(got).max())
    # The beam centre itself shows the scan position.
    np.testing.assert_allclose(m.forward(c, s), s, atol=1e-9)


# -- (b) inverse ------------------------------------------------------------------------------
@pytest.mark.parametrize("seed, flip, under", CASES)
def test_inverse_of_forward(seed, flip, under):
    params = case_params(seed, flip, under)
    m = specimen_map(params, NAV)
    rng = np.random.default_rng(seed + 7)
    p = rng.uniform(0, 64, (20, 2))
    s = rng.uniform(0, 1, (20, 2)) * (np.array(NAV) - 1)
    np.testing.assert_allclose(m.inverse(m.forward(p, s), s), p, atol=1e-9)
    np.testing.assert_allclose(m.matrix, np.hstack([m.A, m.B, m.t[:, None]]))


# -- (c) decomposition ------------------------------------------------------------------------
@pytest.mark.parametrize("seed, flip, under", CASES)
def test_decompose_matrix_recovers_rotation_and_flip(seed, flip, under):
    params = case_params(seed, flip, under)
    theta, got_flip, scale = decompose_matrix(specimen_map(params, NAV).A)
    expected = params.scan_rotation + (180.0 if under else 0.0)
    assert angle_diff(theta, expected) < 1e-9
    assert -180.0 <= theta < 180.0
    assert got_flip is flip
    assert scale == pytest.approx(abs(params.magnification_ratio), rel=1e-12)


# -- (d) parameter validation -----------------------------------------------------------------
GOOD = dict(overfocus=1e-6, scan_pixel_size=1e-9, camera_length=0.2, detector_pixel_size=55e-6,
            semiconv=5e-3, cy=32.0, cx=30.0, scan_rotation=12.0, flip_y=True,
            descan=((0.01, -0.02), (0.03, 0.0)))
FLOAT_FIELDS = ["overfocus", "scan_pixel_size", "camera_length", "detector_pixel_size",
                "semiconv", "cy", "cx", "scan_rotation"]


@pytest.mark.parametrize("name", FLOAT_FIELDS)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_rejected(name, bad):
    with pytest.raises(ValueError, match=name):
        OverfocusParams(**{**GOOD, name: bad})


@pytest.mark.parametrize("name", FLOAT_FIELDS)
def test_non_number_rejected(name):
    with pytest.raises(ValueError, match=name):
        OverfocusParams(**{**GOOD, name: "1.0"})


@pytest.mark.parametrize("name", ["scan_pixel_size", "camera_length", "detector_pixel_size",
                                  "semiconv"])
@pytest.mark.parametrize("bad", [0.0, -1e-3])
def test_non_positive_sizes_rejected(name, bad):
    with pytest.raises(ValueError, match=name):
        OverfocusParams(**{**GOOD, name: bad})


def test_degenerate_overfocus_rejected():
    with pytest.raises(ValueError, match="overfocus"):
        OverfocusParams(**{**GOOD, "overfocus": 0.0})
    with pytest.raises(ValueError, match="overfocus"):
        OverfocusParams(**{**GOOD, "overfocus": -GOOD["camera_length"]})


@pytest.mark.parametrize("bad", [np.eye(3), [[0, 0], [0, math.nan]], "x"])
def test_bad_descan_rejected(bad):
    with pytest.raises(ValueError, match="descan"):
        OverfocusParams(**{**GOOD, "descan": bad})


def test_bad_flip_rejected():
    with pytest.raises(ValueError, match="flip_y"):
        OverfocusParams(**{**GOOD, "flip_y": 1})


def test_dict_round_trip():
    params = OverfocusParams(**GOOD)
    d = json.loads(json.dumps(params.to_dict()))
    assert OverfocusParams.from_dict(d) == params
    with pytest.raises(ValueError, match="unknown"):
        OverfocusParams.from_dict({**d, "bogus": 1})
    assert params.replace(scan_rotation=-5.0).scan_rotation == -5.0
    with pytest.raises(ValueError, match="semiconv"):
        params.replace(semiconv=0.0)


# -- (e) the simulator puts the shadow image where the model says -----------------------------
SIG = (64, 64)
BASE = dict(scan_pixel_size=1e-9, camera_length=0.2, detector_pixel_size=55e-6, semiconv=5.5e-3,
            cy=31.3, cx=32.6)
D_OVER = 0.2 * 1e-9 * 0.2 / (55e-6 - 0.2 * 1e-9)  # |k| = 0.2 specimen px per detector px


def dot_specimen(centre_yx, sigma: float = 0.5, pps: float = 8.0) -> SimulatedSpecimen:
    """A bright Gaussian dot (scan px) on an opaque specimen covering [-12, 24) scan px."""
    origin = (-12.0, -12.0)
    n = int(36 * pps)
    yy, xx = (np.mgrid[0:n, 0:n] / pps + np.array(origin)[:, None, None])
    img = np.exp(-((yy - centre_yx[0]) ** 2 + (xx - centre_yx[1]) ** 2) / (2 * sigma ** 2))
    return SimulatedSpecimen(img, origin, pps)


def centroid(frame: np.ndarray) -> np.ndarray:
    yy, xx = np.mgrid[0:frame.shape[0], 0:frame.shape[1]]
    return np.array([(yy * frame).sum(), (xx * frame).sum()]) / frame.sum()


@pytest.mark.parametrize("overfocus, rotation, flip", [
    (D_OVER, 33.0, True),     # rotated and flipped
    (-D_OVER, -71.0, False),  # underfocused (inverted) and rotated
    (-D_OVER, 140.0, True),
])
def test_simulated_dot_lands_where_the_model_says(overfocus, rotation, flip):
    params = OverfocusParams(overfocus=overfocus, scan_rotation=rotation, flip_y=flip,
                             descan=((0.3, -0.2), (0.1, 0.4)), **BASE)
    assert abs(params.magnification_ratio) == pytest.approx(0.2, rel=1e-4)
    m = specimen_map(params, NAV)
    scan = np.array([2.0, 9.0])  # away from the scan middle: descan matters
    dot = scan + np.array([1.1, -0.8])
    frames = simulate(params, NAV, SIG, specimen=dot_specimen(dot), dtype="float64")
    frame = frames[int(scan[0]), int(scan[1])]
    expected = m.inverse(dot, scan)
    # well inside the disk, so the disk edge does not cut the dot
    assert np.linalg.norm(expected - beam_centres(params, scan, NAV)) < params.disk_radius_px - 8
    np.testing.assert_allclose(centroid(frame), expected, atol=0.3)
    # a wrong orientation would put the dot elsewhere
    wrong = specimen_map(params.replace(flip_y=not flip), NAV).inverse(dot, scan)
    assert np.linalg.norm(wrong - expected) > 2


@pytest.mark.parametrize("overfocus", [D_OVER, -D_OVER])
def test_simulated_disk_radius_and_descan(overfocus):
    D = np.array([[0.4, -0.3], [0.25, 0.5]])
    params = OverfocusParams(overfocus=overfocus, scan_rotation=20.0, flip_y=False,
                             descan=D, **BASE)
    assert params.disk_radius_px == pytest.approx(20.0, abs=0.1)
    flat = SimulatedSpecimen(np.ones((8, 8)), (-100.0, -100.0), 0.01)  # transmission 1
    frames = simulate(params, NAV, SIG, specimen=flat, intensity=1.0, dtype="float64")
    s_mid = scan_middle(NAV)
    for s in [(0, 0), (8, 11), (4, 6), (1, 10)]:
        frame = frames[s]
        radius = math.sqrt(frame.sum() / math.pi)
        assert radius == pytest.approx(params.disk_radius_px, abs=1.0)
        expected = np.array([params.cy, params.cx]) + D @ (np.array(s) - s_mid)
        np.testing.assert_allclose(centroid(frame), expected, atol=0.05)
