"""The Cramer-Rao bound that ``make validate`` prints beside the fits (benchmarks/validation/bound.py).

The bound says how far the fits' errors are from what the data allow, so it is
checked against physics it did not write: its derivatives of the expected counts
against the simulator's own frames at nearby geometries (finite differences), and
its stand-in specimen for wave-optical data (the image the noise-free frames show)
against the simulator's true image.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "validation"))
import bound  # noqa: E402
import cases  # noqa: E402

from stemcal.processing.geometry import nav_coordinates  # noqa: E402
from stemcal.twin.model import beam_centres  # noqa: E402
from stemcal.twin.simulator import default_specimen, simulate  # noqa: E402

NAV, SIG, DOSE = (16, 16), (128, 128), 3.0


@pytest.fixture(scope="module")
def small_case():
    p = cases.geometric_truth(3, ((0.02, -0.01), (0.015, 0.03)))
    spec = default_specimen(p, NAV, SIG, seed=3)
    return p, spec, nav_coordinates(np.arange(NAV[0] * NAV[1]), NAV)


def _render(p, spec, scan) -> np.ndarray:
    """The simulator's noise-free frames, (scan positions, sy, sx), at ``DOSE``."""
    frames = simulate(p, NAV, SIG, specimen=spec, intensity=DOSE, dtype="float64")
    return frames.reshape((len(scan),) + SIG)


def test_the_bound_is_the_fisher_information_of_the_simulator_s_frames(small_case):
    p, spec, scan = small_case
    got = bound.specimen_bounds(spec.image, spec.origin, spec.pixels_per_scan_px, p, scan,
                                beam_centres(p, scan, NAV), SIG, DOSE, np.inf)["known"]
    # Poisson Fisher information from the simulator's frames at +-h (per degree, per %)
    mu = _render(p, spec, scan)
    d_rot = (_render(p.replace(scan_rotation=p.scan_rotation + 1e-3), spec, scan)
             - _render(p.replace(scan_rotation=p.scan_rotation - 1e-3), spec, scan)) / 2e-3
    d_of = (_render(p.replace(overfocus=p.overfocus * 1.00001), spec, scan)
            - _render(p.replace(overfocus=p.overfocus * 0.99999), spec, scan)) / 2e-3
    ok = mu > 0
    D = np.stack([d_rot[ok], d_of[ok]])
    info = (D / mu[ok]) @ D.T
    want = np.sqrt(np.diag(np.linalg.inv(info)))
    assert got == pytest.approx(tuple(want), rel=0.01)
    assert 0.01 < got[0] < 1.0   # degree: the case is informative, not degenerate


def test_the_specimen_the_frames_show_gives_a_bound_a_little_wide(small_case):
    """The stand-in for wave-optical data, on geometric frames whose image is known:
    back-projection blurs the image a little, so its bound is wider, but not by much
    (1.12x straight onto the fit's grid, 1.03x from a finer one on a 64x64 scan)."""
    p, spec, scan = small_case
    centres = beam_centres(p, scan, NAV)
    true = bound.specimen_bounds(spec.image, spec.origin, spec.pixels_per_scan_px, p, scan,
                                 centres, SIG, DOSE, 0.95)
    frames = _render(p, spec, scan).reshape(NAV + SIG) / DOSE
    ratios = {}
    for how, (T, origin) in (("straight", bound.effective_specimen(frames, p)),
                             ("finer", bound.shown_specimen(frames, p))):
        shown = bound.specimen_bounds(T, origin, 2.0, p, scan, centres, SIG, DOSE, 0.95)
        ratios[how] = np.array([shown[k][i] / true[k][i] for k in ("known", "unknown")
                                for i in (0, 1)])
    # on this 16x16 scan: 1.11-1.13 straight, 1.07 from the finer grid
    assert np.all(ratios["straight"] >= 1.0) and np.all(ratios["straight"] <= 1.2), ratios
    assert np.all(ratios["finer"] >= 1.0) and np.all(ratios["finer"] < ratios["straight"]), ratios
    # learning the specimen from the same frames costs information
    assert true["unknown"][0] > true["known"][0]
