"""The generator's conventions, checked against abTEM itself (not against stemcal).

* abTEM's ``defocus`` is ``-C10``: ``defocus=-d`` is a focused probe propagated ``d``
  downstream by abTEM's own multislice (the crossover before the plane: stemcal's
  overfocus), ``+d`` is not;
* a scatterer at ``+Delta`` from the probe shows up at ``+Delta / (d alpha)`` far-field
  px for ``defocus=-d`` (an upright shadow image), at ``-Delta / (d alpha)`` for ``+d``;
* the generator puts the vacuum disk's centre where the truth says.
"""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

import multislice

pytestmark = pytest.mark.wave

E, W, N, D = 200e3, 180.0, 240, 5000.0   # eV, cell A, grid points, defocus A


def _probe(defocus: float):
    abtem = multislice.abtem_configured()
    return abtem.Probe(semiangle_cutoff=6, energy=E, extent=W, gpts=N, defocus=defocus)


def test_abtem_defocus_is_minus_c10():
    abtem = multislice.abtem_configured()
    at = [(W / 2, W / 2)]
    vacuum = abtem.PotentialArray(np.zeros((1, N, N), np.float32), slice_thickness=D, extent=W)
    propagated = _probe(0.0).multislice(vacuum, scan=at, lazy=False).array.squeeze()

    def overlap(a, b):
        return float(abs(np.vdot(a, b)) / np.linalg.norm(a) / np.linalg.norm(b))
    assert overlap(_probe(-D).build(scan=at, lazy=False).array.squeeze(), propagated) > 0.9999
    assert overlap(_probe(D).build(scan=at, lazy=False).array.squeeze(), propagated) < 0.1


@pytest.mark.parametrize("offset", [(20.0, 0.0), (0.0, -15.0)])
def test_shadow_image_is_upright_in_overfocus(offset):
    import ase
    abtem = multislice.abtem_configured()
    alpha = multislice.wavelength(E) * 1e10 / W     # rad per far-field px
    atoms = ase.Atoms("Au", positions=[(W / 2 + offset[0], W / 2 + offset[1], 1.0)],
                      cell=[W, W, 2.0])
    pot = abtem.Potential(atoms, gpts=N, slice_thickness=2.0, projection="infinite")
    at = [(W / 2, W / 2)]
    for sign in (-1, 1):
        probe = _probe(sign * D)
        with_atom = probe.multislice(pot, scan=at, lazy=False).array.squeeze()
        without = probe.build(scan=at, lazy=False).array.squeeze()
        diff = np.abs(np.fft.fftshift(abs(np.fft.fft2(with_atom)) ** 2
                                      - abs(np.fft.fft2(without)) ** 2))
        i, j = np.unravel_index(np.argmax(ndimage.gaussian_filter(diff, 2)), diff.shape)
        expected = -sign * np.array(offset) / (D * alpha)    # upright for defocus = -d
        assert np.hypot(i - N // 2 - expected[0], j - N // 2 - expected[1]) <= 1.5


def test_vacuum_disk_centre(multislice_cache):
    data, truth = multislice.generate("vacuum", nav_shape=(4, 4), sig_shape=(64, 64),
                                      cy=30.6, cx=35.2, cache_dir=multislice_cache)
    frame = data.mean(axis=(0, 1))
    mask = frame > 0.5 * frame.max()
    cy, cx = ndimage.center_of_mass(mask)
    assert abs(cy - truth["cy"]) < 0.05 and abs(cx - truth["cx"]) < 0.05
    r = np.sqrt(mask.sum() / np.pi)
    assert abs(r - truth["disk_radius_px"]) < 0.5
