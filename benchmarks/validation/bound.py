"""Cramer-Rao bound of the scan rotation and overfocus on the geometric low-dose set.

How close can any unbiased estimator come on ``make validate``'s geometric
set (64x64 scan of 128x128 frames, 3 counts/px in the disk, Poisson noise)?
For Poisson counts with expectation ``mu(theta)`` the Fisher information is
``I_ij = sum (d mu / d theta_i)(d mu / d theta_j) / mu`` over every pixel of
every frame; the bound on a parameter's standard deviation is
``sqrt((I^-1)_ii)``. ``mu`` is the noise-free simulation of each seed's
geometry and specimen (the geometric model, :func:`stemcal.twin.simulate`),
its derivatives central differences (rotation +- 0.02 deg, overfocus +-
0.1 %). The parameters: rotation (degree) and overfocus (percent), each
bound with the other unknown (the centre is left out: the model's hard disk
edge gives it an information no real aperture has, and it is not correlated
with these two). Each bound is computed for the whole disk and for the
pixels the fit's parts use (within 0.95 and 0.7 of the disk radius: the
``disk95`` and ``disk70`` parts of :mod:`stemcal.fit.rings`, without their
weights' taper).

Run from the repository root (about 15 s per seed)::

    .venv/bin/python benchmarks/validation/bound.py            # seeds 0-7
    .venv/bin/python benchmarks/validation/bound.py 22 25      # chosen seeds

It prints one row per seed; compare with the RMS of the fits' errors in
``make validate``'s geometric section (docs/accuracy.md).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cases  # noqa: E402

from stemcal.twin import OverfocusParams, simulate  # noqa: E402
from stemcal.twin.simulator import default_specimen  # noqa: E402

#: Parts of the disk the bound is computed for: name -> largest radius (fraction of the disk's).
PARTS = {"whole disk": np.inf, "disk95": 0.95, "disk70": 0.7}


def bounds(seed: int) -> dict[str, tuple[float, float]]:
    """``{part: (rotation bound in degree, overfocus bound in percent)}`` for ``seed``."""
    nav, sig, dose = cases.LOW_DOSE["nav"], cases.LOW_DOSE["sig"], cases.LOW_DOSE["dose"]
    p = cases.geometric_truth(seed)
    specimen = default_specimen(p, nav, sig, seed=seed)

    def mu(q: OverfocusParams) -> np.ndarray:
        return simulate(q, nav, sig, specimen=specimen, intensity=dose,
                        dtype="float64").reshape(-1)

    m0 = mu(p)
    # (name, step, scale to the unit reported): degree; percent of the overfocus
    steps = (("scan_rotation", 0.02, 1.0), ("overfocus", 1e-3 * p.overfocus, p.overfocus / 100))
    D = np.array([(mu(p.replace(**{n: getattr(p, n) + h})) - mu(p.replace(**{n: getattr(p, n) - h})))
                  / (2 * h) * scale for n, h, scale in steps])
    yy, xx = np.mgrid[0:sig[0], 0:sig[1]]
    r = np.broadcast_to(np.hypot(yy - p.cy, xx - p.cx) / p.disk_radius_px,
                        (nav[0] * nav[1],) + tuple(sig)).reshape(-1)
    out = {}
    for part, limit in PARTS.items():
        ok = (m0 > 0) & (r < limit)
        info = (D[:, ok] / m0[ok]) @ D[:, ok].T
        cov = np.linalg.inv(info)
        out[part] = (float(np.sqrt(cov[0, 0])), float(np.sqrt(cov[1, 1])))
    return out


def main(argv: list[str]) -> int:
    seeds = [int(s) for s in argv] or list(range(8))
    nav, sig, dose = cases.LOW_DOSE["nav"], cases.LOW_DOSE["sig"], cases.LOW_DOSE["dose"]
    print(f"Cramer-Rao bounds, geometric set: {nav[0]}x{nav[1]} scan of {sig[0]}x{sig[1]} frames, "
          f"{dose:g} counts/px, Poisson (rotation deg / overfocus %)")
    head = "seed " + "".join(f"{part:>22}" for part in PARTS)
    print(head)
    print("-" * len(head))
    rows = []
    for seed in seeds:
        b = bounds(seed)
        rows.append(b)
        print(f"{seed:4d} " + "".join(f"{b[p][0]:>12.4f} /{b[p][1]:>7.4f}" for p in PARTS),
              flush=True)
    print("-" * len(head))
    print("RMS  " + "".join(
        f"{np.sqrt(np.mean([b[p][0] ** 2 for b in rows])):>12.4f} /"
        f"{np.sqrt(np.mean([b[p][1] ** 2 for b in rows])):>7.4f}" for p in PARTS))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
