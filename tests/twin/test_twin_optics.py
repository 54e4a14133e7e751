"""The temgym-core digital twin reproduces the closed-form linear model."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from stemcal.twin import OverfocusParams, beam_centres, specimen_map

optics = pytest.importorskip("stemcal.twin.optics")
jdc = pytest.importorskip("jax_dataclasses")

NAV = (17, 24)
SIG = (64, 72)
N_CASES = 24


def random_params(seed: int) -> OverfocusParams:
    """Random geometry; even seeds underfocus, flip_y alternating in pairs."""
    rng = np.random.default_rng(1000 + seed)
    sign = -1.0 if seed % 2 == 0 else 1.0
    return OverfocusParams(
        overfocus=sign * rng.uniform(0.2e-6, 5e-6),
        scan_pixel_size=rng.uniform(0.1e-9, 2e-9),
        camera_length=rng.uniform(0.1, 1.0),
        detector_pixel_size=rng.uniform(10e-6, 150e-6),
        semiconv=rng.uniform(1e-3, 20e-3),
        cy=rng.uniform(0, SIG[0]), cx=rng.uniform(0, SIG[1]),
        scan_rotation=rng.uniform(-180, 180),
        flip_y=bool((seed // 2) % 2),
        descan=rng.uniform(-0.1, 0.1, (2, 2)),
    )


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b))


def test_cases_cover_both_flips_and_focus_signs():
    cases = [random_params(i) for i in range(N_CASES)]
    assert {(p.flip_y, p.overfocus > 0) for p in cases} == {
        (False, False), (False, True), (True, False), (True, True)}


@pytest.mark.parametrize("seed", range(N_CASES))
def test_linearised_map_equals_closed_form(seed):
    params = random_params(seed)
    twin = optics.linearised_map(params, NAV, SIG)
    ref = specimen_map(params, NAV)
    for name in ("A", "B", "t"):
        assert rel_err(getattr(twin, name), getattr(ref, name)) <= 1e-9, name


@pytest.mark.parametrize("seed", [0, 3, 6, 9])
def test_trace_agrees_with_forward(seed):
    params = random_params(seed)
    rng = np.random.default_rng(seed)
    scan = rng.uniform(0, 1, (7, 2)) * (np.array(NAV) - 1)
    slope = rng.uniform(-1, 1, (7, 2)) * params.semiconv
    det, spec = optics.trace(params, NAV, SIG, scan, slope)
    assert det.shape == spec.shape == (7, 2)
    expected = specimen_map(params, NAV).forward(det, scan)
    np.testing.assert_allclose(spec, expected, rtol=0, atol=1e-9 * np.abs(expected).max())


@pytest.mark.parametrize("seed", [1, 2])
def test_trace_geometry(seed):
    """Independent of conventions: distances follow from similar triangles."""
    params = random_params(seed)
    d, L = params.overfocus, params.camera_length
    rng = np.random.default_rng(seed)
    scan = rng.uniform(0, 1, (5, 2)) * (np.array(NAV) - 1)
    slope = rng.uniform(-1, 1, (5, 2)) * params.semiconv
    det, spec = optics.trace(params, NAV, SIG, scan, slope)
    det0, spec0 = optics.trace(params, NAV, SIG, scan, np.zeros(2))
    # The central ray lands on the beam centre (with descan) and on the scan position.
    np.testing.assert_allclose(det0, beam_centres(params, scan, NAV), atol=1e-9)
    np.testing.assert_allclose(spec0, scan, atol=1e-9)
    u = np.linalg.norm(slope, axis=-1)
    np.testing.assert_allclose(np.linalg.norm(spec - scan, axis=-1) * params.scan_pixel_size,
                               abs(d) * u, rtol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(det - det0, axis=-1) * params.detector_pixel_size,
                               abs(d + L) * u, rtol=1e-9)


def test_unflipped_rotation_convention_for_flipped_detector_is_wrong():
    """temgym flips after rotating: Detector(rotation=+theta, flip_y=True) is LiberTEM's -theta."""
    params = random_params(2)  # flipped
    assert params.flip_y
    model = optics.build_model(params, NAV, SIG)
    assert model.detector.rotation == pytest.approx(-params.scan_rotation)
    naive_det = jdc.replace(model.detector, rotation=params.scan_rotation)
    naive = model._replace(detector=naive_det,
                           components=model.components[:-1] + (naive_det,))
    naive_map = optics._linearise(naive, NAV)
    assert rel_err(naive_map.A, specimen_map(params, NAV).A) > 1e-3
    mirrored = params.replace(scan_rotation=-params.scan_rotation)
    assert rel_err(naive_map.A, specimen_map(mirrored, NAV).A) <= 1e-9


def test_trace_broadcasts_and_validates():
    params = random_params(5)
    det, spec = optics.trace(params, NAV, SIG, np.zeros((3, 4, 2)), np.zeros(2))
    assert det.shape == spec.shape == (3, 4, 2)
    with pytest.raises(ValueError, match="shape"):
        optics.trace(params, NAV, SIG, np.zeros((3, 3)), np.zeros(3))


def test_twin_package_does_not_import_jax_twin():
    code = ("import sys, stemcal.twin; "
            "assert 'stemcal.twin.optics' not in sys.modules; "
            "assert 'temgym_core' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
