"""Cold-start calibration (issue 3): everything from the data, no close guess."""
from __future__ import annotations

import numpy as np
import pytest

from stemcal.fit.coarse import cold_start
from stemcal.fit.disk import NoFeaturesError
from stemcal.twin import OverfocusParams, SimulatedSpecimen, simulate

CAMERA_LENGTH = 0.2
DET_PIXEL = 55e-6
N_CASES = 20



def random_case(seed: int):
    """Geometry as the acceptance criteria describe: any rotation, random flip,
    over- or underfocus, centre up to 10 px off the middle, detector 96-256 px,
    scan 32-64 px, descan up to 0.1 px/scan px in half of the cases."""
    rng = np.random.default_rng(1000 + seed)
    ns = int(rng.integers(32, 65))
    det = int(rng.integers(96, 257))
    overfocus = float(rng.choice([-1, 1]) * rng.uniform(0.6e-6, 1.5e-6))
    descan = rng.uniform(-0.1, 0.1, (2, 2)) if seed % 2 else np.zeros((2, 2))
    params = OverfocusParams(
        overfocus=overfocus, scan_pixel_size=0.5e-9 * det / 128, camera_length=CAMERA_LENGTH,
        detector_pixel_size=DET_PIXEL, semiconv=0.3 * det * DET_PIXEL / CAMERA_LENGTH,
        cy=det / 2 + rng.uniform(-10, 10), cx=det / 2 + rng.uniform(-10, 10),
        scan_rotation=float(rng.uniform(-180, 180)), flip_y=bool(rng.integers(2)), descan=descan)
    guess = overfocus * float(np.exp(rng.uniform(np.log(1 / 1.5), np.log(1.5))))
    return params, (ns, ns), (det, det), guess


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(N_CASES))
def test_cold_start_recovers_geometry(ctx, seed):
    truth, nav, sig, guess = random_case(seed)
    # About 3 counts per pixel in the bright-field disk.
    data = simulate(truth, nav, sig, dose=3.0, seed=seed)
    fit = cold_start(data, ctx=ctx, scan_pixel_size=truth.scan_pixel_size,
                     camera_length=CAMERA_LENGTH, detector_pixel_size=DET_PIXEL, overfocus=guess)
    p = fit.params
    rot_err = (p.scan_rotation - truth.scan_rotation + 180) % 360 - 180
    assert p.flip_y == truth.flip_y
    assert abs(rot_err) <= 0.1, f"rotation off by {rot_err:.3f} deg"
    assert abs(p.overfocus / truth.overfocus - 1) <= 0.005
    assert abs(p.cy - truth.cy) <= 0.5 and abs(p.cx - truth.cx) <= 0.5
    # Descan within 5 % of the 0.1 px/scan px full scale.
    assert np.abs(p.descan_matrix - truth.descan_matrix).max() <= 0.005
    assert np.allclose(fit.extra["descan"]["matrix"], p.descan_matrix)
    assert fit.quality == "ok", fit.quality
    unc = fit.extra["uncertainty"]
    assert 0 < unc["scan_rotation"] < 0.5 and 0 < unc["overfocus"] < 0.02 * abs(p.overfocus)
    assert fit.passes == 2


def _params(**kw):
    base = dict(overfocus=1e-6, scan_pixel_size=0.5e-9, camera_length=CAMERA_LENGTH,
                detector_pixel_size=DET_PIXEL, semiconv=10e-3, cy=66.0, cx=60.0,
                scan_rotation=30.0, flip_y=False)
    base.update(kw)
    return OverfocusParams(**base)


def _cold(ctx, data):
    return cold_start(data, ctx=ctx, scan_pixel_size=0.5e-9, camera_length=CAMERA_LENGTH,
                      detector_pixel_size=DET_PIXEL, overfocus=1e-6)


def test_blank_specimen_is_refused(ctx):
    blank = SimulatedSpecimen(np.ones((300, 300)), (-100.0, -100.0), 2.0)
    data = simulate(_params(), (32, 32), (128, 128), dose=5.0, specimen=blank, seed=1)
    with pytest.raises(NoFeaturesError, match="features"):
        _cold(ctx, data)


def test_blank_noise_free_specimen_is_refused(ctx):
    """No noise at all: the shadow motion is exactly zero (was a singular-matrix error)."""
    blank = SimulatedSpecimen(np.ones((300, 300)), (-100.0, -100.0), 2.0)
    data = simulate(_params(), (12, 12), (128, 128), dose=None, specimen=blank)
    with pytest.raises(NoFeaturesError, match="features|detail|shadow"):
        _cold(ctx, data)


def test_beam_off_detector_is_refused(ctx):
    data = np.zeros((16, 16, 64, 64), dtype=np.uint16)
    with pytest.raises(NoFeaturesError, match="uniform|disk"):
        _cold(ctx, data)


def test_uniform_frames_are_refused(ctx):
    data = np.full((16, 16, 64, 64), 7, dtype=np.uint16)
    with pytest.raises(NoFeaturesError):
        _cold(ctx, data)
