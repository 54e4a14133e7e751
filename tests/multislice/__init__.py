"""Wave-optical (multislice) overfocused 4D-STEM test data with known stemcal truth.

A self-contained generator built on abTEM 1.0 (multislice, potentials, probe) and ASE
(atoms). It writes ``(ny, nx, sy, sx)`` ``.npy`` datasets that ``stemcal fit`` reads, and a
truth JSON in stemcal's conventions. It is independent of stemcal's own geometric
simulator (``stemcal.twin.simulate``), which shares its model with the fit.

It lives with the test helpers (``tests/multislice/``, imported by name through
pytest's ``pythonpath``); ``benchmarks/validation`` puts ``tests/`` on its path. The
stemcal package never imports it: abTEM and ASE are test dependencies only.

Usage::

    from multislice import generate, write
    data, truth = generate("carbon_au", nav_shape=(32, 32), sig_shape=(64, 64),
                           scan_rotation=23.0, flip_y=True, overfocus=500e-9, dose=50)
    write("out/carbon_au", data, truth)      # out/carbon_au.npy + out/carbon_au.json

    PYTHONPATH=tests python -m multislice out/carbon_au --specimen carbon_au --flip-y

Specimens: ``carbon_au`` (amorphous carbon film with a few Au clusters), ``au_crystal``
(a faceted Au nanocrystal in [001] zone axis on a thin carbon film), ``smooth_wpo`` (a
smooth, thin weak-phase object: a band-limited random projected potential in one slice)
and ``vacuum`` (no specimen: a blank dataset). The noise-free frames are cached on disk
(``cache_dir``, keyed by every parameter that changes them); Poisson noise is added after
the cache, so noise realisations are cheap.

Conventions (derived from the physics, checked numerically when it was written: see ``tests/multislice/test_conventions.py``)
------------------------------------------------------------------------------------
*Axes.* abTEM arrays are indexed (x, y). Here array axis 0 is called **y** and axis 1
**x**, in real space and in the far field alike: the far field is the discrete Fourier
transform of the exit wave along the same array axes, so renaming both axes the same
way keeps every relation (including handedness) intact. Detector frame = these far-field
array axes, (y, x). ``CustomScan`` positions are given in abTEM's (x, y) order, which is
our (y, x).

*Focus.* abTEM's ``defocus`` is ``-C10``: the probe is ``exp(-i chi)`` with
``chi = pi C10 alpha^2 / lambda``, and abTEM's Fresnel propagator over ``+z`` (down the
column) is ``exp(-i pi lambda z k^2)``. So ``C10 = +z`` is a focused probe propagated a
distance ``z`` downstream: the crossover lies ``z`` *before* the plane. stemcal's
``overfocus`` d > 0 means exactly that (crossover before the specimen, upright shadow
image), hence ``abTEM defocus = -(d - z_ref)``, where ``z_ref`` is the depth of the
specimen's reference plane below the potential's entrance surface (abTEM's probe
defocus refers to the entrance surface). Checked: ``defocus=-d`` matches a focused probe
propagated by abTEM's own multislice through ``d`` of vacuum (overlap 0.999999; ``+d``:
0.02), and an atom placed at ``+Delta`` from the probe appears at ``+Delta / (d alpha)``
far-field pixels (upright) for ``defocus=-d`` and at ``-Delta / (d alpha)`` for ``+d``.

*Far field and detector.* The far-field pixel of a cell of width ``W`` is ``lambda / W``
(rad). The detector pixel is ``alpha = detector_pixel_size / (camera_length + d)``
(rad): with that choice stemcal's model ``k = d p_det / ((d + L) p_scan)`` equals the
wave-optical magnification ``d alpha / p_scan`` exactly. (A far-field detector at
distance L sees ``alpha = p_det / L``; the difference is ``d / L``, 2.5e-6 here.) The cell is
``W = oversample * lambda / alpha``: every detector pixel integrates ``oversample^2``
far-field pixels (a pixel that integrates, not a point sample; ``oversample=1`` point
samples). The bright-field disk radius is ``semiconv / alpha`` detector px.

*Scan.* LiberTEM's convention: ``rotate_deg(scan_rotation) @ flip_y()`` maps a
detector-frame vector into the scan frame (``rotate_deg(a) = [[cos, sin], [-sin, cos]]``
in (y, x), ``flip_y() = diag(-1, 1)``). Since the detector frame is the lab (array) frame
here, a scan step ``s - s_mid`` (scan px) moves the probe by
``(R F)^-1 (s - s_mid) p_scan = F R^T (s - s_mid) p_scan`` in the lab frame, exact
(``CustomScan``). ``s_mid = (ny // 2, nx // 2)`` sits at the cell centre.

*Beam centre.* The zero beam of the far field (``fftshift`` index ``N // 2``) is placed at
detector pixel ``(cy, cx)`` (pixel centres at integer coordinates) by cropping the
far field at an integer fine-pixel offset and shifting the remaining fraction of a fine
pixel (``|delta| <= 0.5``) with a phase ramp on the exit wave. The ramp is taken relative
to the probe centre, wrapped to ``[-W/2, W/2)``, so its discontinuity lies on the far side
of the cell, away from the probe. A linear ``descan`` (detector px per scan px, stemcal's
matrix) is applied the same way per scan position. This is an exact shift of the
far-field pattern (a tilt of the outgoing wave, i.e. a detector offset).

*Overfocus truth.* The shadow image refers to one plane; a specimen of thickness ``t``
has no single plane. ``z_ref`` is the atomic-number-weighted mean of the entrance planes
of the slices that hold the atoms (each slice's potential acts at its entrance plane in
abTEM's transmit-then-propagate step), and the truth JSON gives
``overfocus_ambiguity`` = half the specimen's thickness (m) as the scale of that
ambiguity (20 A of carbon at 500 nm: +-0.2 %).

*Intensity.* Noise-free frames are scaled so that the vacuum disk interior holds
``intensity`` per detector pixel; with ``dose`` the frames are Poisson counts with
mean ``dose`` per disk pixel (vacuum). Elastic scattering only (no thermal diffuse
scattering, no partial coherence, no Cs): deliberately the cleanest wave optics.
"""
from .frames import generate, simulate_noise_free, stemcal_fit_args, truth_of, write
from .setup import (GENERATOR_VERSION, SPECIMENS, Setup, abtem_configured, flip_matrix,
                    rotation_matrix, wavelength)
from .specimens import Specimen, build_specimen

__all__ = ["generate", "write", "simulate_noise_free", "truth_of", "stemcal_fit_args", "Setup",
           "SPECIMENS", "GENERATOR_VERSION", "wavelength", "rotation_matrix", "flip_matrix",
           "Specimen", "build_specimen", "abtem_configured"]
