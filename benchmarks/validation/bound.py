"""Cramer-Rao bound of the scan rotation and overfocus: geometric set and multislice cases.

How close can any unbiased estimator come on ``make validate``'s geometric
set (64x64 scan of 128x128 frames, 3 counts/px in the disk, Poisson noise)?
For Poisson counts with expectation ``mu(theta)`` the Fisher information is
``I_ij = sum (d mu / d theta_i)(d mu / d theta_j) / mu`` over every pixel of
every frame; the bound on a parameter's standard deviation is
``sqrt((I^-1)_ii)``. ``mu`` is the geometric model as the simulator renders it
(:func:`stemcal.twin.simulator.render_shadow_frames`: ``dose * edge * t``, with
``t`` the specimen image sampled bilinearly at ``A (p - c) + s``), its
derivatives those of the bilinear sampling. The parameters: rotation (degree)
and overfocus (percent), each bound with the other unknown (the centre is left
out: the model's hard disk edge gives it an information no real aperture has,
and it is not correlated with these two).

Two bounds per part of the disk:

* ``known``: the specimen image known exactly (only the geometry estimated);
* ``unknown``: every pixel of the specimen image (2 per scan px, as the
  simulator samples it) a further unknown, as for any real fit, which must
  learn the specimen from the same frames. The bound is the Schur complement
  of the Fisher information over those ~40,000 pixels (a sparse 9-band system:
  a pixel shares observations with its neighbours only), solved with a ridge
  of 1e-5 of its mean diagonal (the bound did not move between 1e-3 and 1e-7).

Each bound is computed for the whole disk and for the pixels the fit's parts
use (within 0.95 and 0.7 of the disk radius: the ``disk95`` and ``disk70``
parts of :mod:`stemcal.fit.rings`, without their weights' taper).

The multislice cases (``cases.MULTISLICE``) have no specimen image of the
geometric model: their frames are wave-optical. For them the bound is taken
with the image the noise-free frames themselves show under the model at the
truth (:func:`shown_specimen`): what a fit with the geometric model could
learn from them at a given dose, within the pixels of ``disk95``, the centre
and descan known. Checked on the geometric set, where the simulator's image is
known, that image gives a bound 1.03x as wide (seeds 0 and 5); ``make
validate`` prints it beside the scatter of each case's fits over noise seeds
(section 5).

Run from the repository root (a few seconds per seed or case)::

    .venv/bin/python benchmarks/validation/bound.py            # seeds 0-7
    .venv/bin/python benchmarks/validation/bound.py 22 25      # chosen seeds
    .venv/bin/python benchmarks/validation/bound.py --multislice [CASE ...]

It prints one row per seed (or case and dose); compare with the RMS of the
fits' errors in ``make validate``'s geometric section and the scatter in its
section 5 (docs/accuracy.md).
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numba
import numpy as np
import scipy.sparse as sparse
import scipy.sparse.linalg as sparse_linalg

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))  # the multislice generator
import cases  # noqa: E402
import multislice  # noqa: E402

from stemcal.processing.geometry import nav_coordinates  # noqa: E402
from stemcal.processing.kernels import splat_frames  # noqa: E402
from stemcal.twin.model import beam_centres, specimen_matrix  # noqa: E402
from stemcal.twin.params import OverfocusParams  # noqa: E402
from stemcal.twin.simulator import default_specimen, specimen_cell  # noqa: E402

#: Parts of the disk the bound is computed for: name -> largest radius (fraction of the disk's).
PARTS = {"whole disk": np.inf, "disk95": 0.95, "disk70": 0.7}
#: Ridge added to the specimen block's diagonal, as a share of its mean (pixels seen too
#: little to be fixed by the data would make the block singular).
RIDGE = 1e-5
#: :func:`shown_specimen` back-projects the frames onto a grid this many times finer than
#: the fit's (2 px per scan px) and keeps every FINE-th pixel: on the geometric set the
#: bound with that image is 1.03x the one with the simulator's own image, against 1.12x
#: when projected straight onto the fit's grid (seeds 0 and 5, disk95; 1.06x with 2, 1.04x
#: with 3).
FINE = 4


@numba.njit(cache=True)
def fisher_sums(T, origin_y, origin_x, per_scan_px, A, dA, scan_yx, centres, radius, dose,
                limit, sig_h, sig_w, I_tt, I_gt, I_gg):
    """Add every pixel's Fisher information to ``I_gg`` (geometry x geometry, (P, P)),
    ``I_gt`` (geometry x specimen pixel, (P, N)) and ``I_tt`` (specimen pixel x its 3x3
    neighbours, (N, 9); neighbour ``(dy + 1) * 3 + dx + 1``). ``dA`` (P, 2, 2) is the
    derivative of the specimen matrix ``A`` by each geometry parameter; pixels at or
    beyond ``limit`` times the disk radius are left out."""
    n = scan_yx.shape[0]
    sh, sw = T.shape
    P = dA.shape[0]
    D = np.zeros(P)
    phi = np.zeros(4)
    for i in range(n):
        cy = centres[i, 0]
        cx = centres[i, 1]
        for y in range(sig_h):
            dy = y - cy
            for x in range(sig_w):
                dx = x - cx
                r = math.sqrt(dy * dy + dx * dx)
                edge = min(radius + 0.5 - r, 1.0)
                if r >= limit * radius or edge <= 0.0:
                    continue
                iy, ix, wy, wx = specimen_cell(A, dy, dx, scan_yx[i, 0], scan_yx[i, 1],
                                               origin_y, origin_x, per_scan_px)
                if not (iy >= 1 and ix >= 1 and iy + 2 < sh and ix + 2 < sw):
                    continue
                t00, t01 = T[iy, ix], T[iy, ix + 1]
                t10, t11 = T[iy + 1, ix], T[iy + 1, ix + 1]
                g = dose * edge
                mu = g * ((1 - wy) * ((1 - wx) * t00 + wx * t01) + wy * ((1 - wx) * t10 + wx * t11))
                if mu <= 0.0:
                    continue
                gy = (1 - wx) * (t10 - t00) + wx * (t11 - t01)
                gx = (1 - wy) * (t01 - t00) + wy * (t11 - t10)
                for a in range(P):
                    D[a] = g * per_scan_px * (gy * (dA[a, 0, 0] * dy + dA[a, 0, 1] * dx)
                                              + gx * (dA[a, 1, 0] * dy + dA[a, 1, 1] * dx))
                for a in range(P):
                    for b in range(P):
                        I_gg[a, b] += D[a] * D[b] / mu
                phi[0] = (1 - wy) * (1 - wx)
                phi[1] = (1 - wy) * wx
                phi[2] = wy * (1 - wx)
                phi[3] = wy * wx
                for ca in range(4):
                    ay, ax = ca // 2, ca % 2
                    ja = (iy + ay) * sw + ix + ax
                    for a in range(P):
                        I_gt[a, ja] += D[a] * g * phi[ca] / mu
                    for cb in range(4):
                        by, bx = cb // 2, cb % 2
                        I_tt[ja, (by - ay + 1) * 3 + bx - ax + 1] += g * g * phi[ca] * phi[cb] / mu


def _bound_of(info: np.ndarray) -> tuple[float, float]:
    cov = np.linalg.inv(info)
    return float(math.sqrt(cov[0, 0])), float(math.sqrt(cov[1, 1]))


def specimen_bounds(T: np.ndarray, origin: tuple[float, float], per_scan_px: float,
                    p, scan_yx: np.ndarray, centres: np.ndarray, sig: tuple[int, int],
                    dose: float, limit: float) -> dict[str, tuple[float, float]]:
    """``{"known": (rotation deg, overfocus %), "unknown": (...)}``: the bounds of the
    geometry ``p`` when the frames are Poisson counts of ``dose * edge * T`` (``T`` the
    specimen image, pixel ``(j, i)`` at scan px ``origin + (j, i) / per_scan_px``), from
    the pixels within ``limit`` times the disk radius; with ``T`` known, and with every
    pixel of ``T`` unknown as well (the Schur complement over them)."""
    T = np.ascontiguousarray(T, dtype=np.float64)
    # derivatives of A: per degree of rotation, per percent of overfocus
    h_rot, h_of = 1e-4, 1e-6
    dA = np.stack([
        (specimen_matrix(p.replace(scan_rotation=p.scan_rotation + h_rot))
         - specimen_matrix(p.replace(scan_rotation=p.scan_rotation - h_rot))) / (2 * h_rot),
        (specimen_matrix(p.replace(overfocus=p.overfocus * (1 + h_of)))
         - specimen_matrix(p.replace(overfocus=p.overfocus * (1 - h_of)))) / (2 * h_of * 100)])
    N, sw = T.size, T.shape[1]
    I_tt, I_gt, I_gg = np.zeros((N, 9)), np.zeros((2, N)), np.zeros((2, 2))
    fisher_sums(T, float(origin[0]), float(origin[1]), float(per_scan_px), specimen_matrix(p),
                dA, np.asarray(scan_yx, dtype=float), np.asarray(centres, dtype=float),
                p.disk_radius_px, float(dose), min(limit, 1e9), int(sig[0]), int(sig[1]),
                I_tt, I_gt, I_gg)
    rows, cols, vals = [], [], []
    idx = np.arange(N)
    for k in range(9):
        j = idx + (k // 3 - 1) * sw + (k % 3 - 1)
        ok = (I_tt[:, k] != 0) & (j >= 0) & (j < N)
        rows.append(idx[ok])
        cols.append(j[ok])
        vals.append(I_tt[ok, k])
    M = sparse.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                          shape=(N, N))
    seen = np.flatnonzero(M.diagonal() > 0)
    M = M[seen][:, seen].tocsc()
    M = M + sparse.identity(len(seen), format="csc") * RIDGE * float(M.diagonal().mean())
    B = I_gt[:, seen].T
    schur = I_gg - B.T @ sparse_linalg.spsolve(M, B)
    return {"known": _bound_of(I_gg), "unknown": _bound_of(schur)}


def bounds(seed: int, parts=tuple(PARTS), descan=((0.0, 0.0), (0.0, 0.0)),
           ) -> dict[str, dict[str, tuple[float, float]]]:
    """``{part: {"known": (rotation deg, overfocus %), "unknown": (...)}}`` for ``seed``
    (and ``descan``, as :func:`cases.geometric_truth`): the bounds with the specimen known
    and with every specimen pixel unknown, for each of ``parts`` (names of :data:`PARTS`)."""
    nav, sig, dose = cases.LOW_DOSE["nav"], cases.LOW_DOSE["sig"], cases.LOW_DOSE["dose"]
    p = cases.geometric_truth(seed, descan)
    specimen = default_specimen(p, nav, sig, seed=seed)
    scan_yx = nav_coordinates(np.arange(nav[0] * nav[1]), nav)
    centres = beam_centres(p, scan_yx, nav)
    return {part: specimen_bounds(specimen.image, specimen.origin, specimen.pixels_per_scan_px,
                                  p, scan_yx, centres, sig, dose, PARTS[part])
            for part in parts}


def effective_specimen(frames: np.ndarray, p, per_scan_px: float = 2.0,
                       limit: float = 0.95) -> tuple[np.ndarray, tuple[float, float]]:
    """The specimen image that noise-free ``frames`` (ny, nx, sy, sx; 1 = a vacuum disk
    pixel) show under the geometric model of ``p``: every frame's pixels within ``limit``
    times the disk radius projected at the truth (bilinear splat, :func:`splat_frames`)
    and divided by their coverage; pixels no frame reaches are set to the mean.
    Returns ``(T, origin)`` in :func:`specimen_bounds`'s convention.

    What a fit with the geometric model can learn of a wave-optical specimen. The
    projection blurs it a little (the splat's kernel): on the geometric set the bound
    with this image known is 1.12x the one with the simulator's own image (seed 0,
    disk95: 0.0166 against 0.0149 degree) at 2 px per scan px, so bounds from it are a
    little wide; :func:`shown_specimen` takes it from a finer grid (1.03x).
    """
    ny, nx, sy, sx = frames.shape
    nav = (ny, nx)
    A = specimen_matrix(p)
    r_out = limit * p.disk_radius_px
    margin = int(math.ceil(np.abs(A).sum(axis=1).max() * r_out)) + 3   # scan px
    H, W = int((ny + 2 * margin) * per_scan_px), int((nx + 2 * margin) * per_scan_px)
    scan_yx = nav_coordinates(np.arange(nav[0] * nav[1]), nav)
    centres = beam_centres(p, scan_yx, nav)
    origin = np.array([-margin, -margin], dtype=float)
    # target px of detector px q of frame i: per * (A (q - c_i) + s_i - origin)
    offsets = per_scan_px * (scan_yx - origin - centres @ A.T)
    S, C = np.zeros((H, W)), np.zeros((H, W))
    splat_frames(np.ascontiguousarray(frames.reshape(ny * nx, sy, sx), dtype=np.float64), 0, 0,
                 1.0, 0.0, centres, np.ascontiguousarray(offsets), per_scan_px * A,
                 r_out - 1.0, r_out, S, C)
    seen = C > 1e-6 * C.max()
    T = np.full((H, W), float((S[seen] / C[seen]).mean()))
    T[seen] = S[seen] / C[seen]
    return T, (float(origin[0]), float(origin[1]))


def shown_specimen(frames: np.ndarray, p, limit: float = 0.95,
                   ) -> tuple[np.ndarray, tuple[float, float]]:
    """The image the frames show (:func:`effective_specimen`) on the fit's grid of 2 px per
    scan px, as point samples of the one projected onto a :data:`FINE` times finer grid."""
    T, origin = effective_specimen(frames, p, 2.0 * FINE, limit)
    return T[::FINE, ::FINE], origin


def multislice_bound(name: str, dose: float, limit: float = 0.95) -> dict[str, tuple[float, float]]:
    """:func:`specimen_bounds` of a multislice case of :data:`cases.MULTISLICE` at ``dose``
    counts per vacuum disk pixel, its specimen the noise-free frames' own
    (:func:`shown_specimen`): how well a fit with the geometric model could do on those
    frames, the rest of the geometry (centre, descan) known (a little wide: see there).
    The frames come from the validation cache."""
    kwargs = dict(cases.MULTISLICE[name][0])
    data, truth = multislice.generate(kwargs.pop("specimen"), dose=None, cache_dir=cases.CACHE,
                                      **kwargs)
    p = OverfocusParams.from_dict({k: truth[k] for k in (
        "overfocus", "scan_pixel_size", "camera_length", "detector_pixel_size", "semiconv",
        "cy", "cx", "scan_rotation", "flip_y")} | {"descan": tuple(map(tuple, truth["descan"]))})
    T, origin = shown_specimen(data / np.float32(truth["intensity"]), p, limit)
    nav, sig = tuple(truth["nav_shape"]), tuple(truth["sig_shape"])
    scan_yx = nav_coordinates(np.arange(nav[0] * nav[1]), nav)
    return specimen_bounds(T, origin, 2.0, p, scan_yx, beam_centres(p, scan_yx, nav), sig,
                           dose, limit)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--multislice"]:
        return main_multislice(argv[1:])
    seeds = [int(s) for s in argv] or list(range(8))
    nav, sig, dose = cases.LOW_DOSE["nav"], cases.LOW_DOSE["sig"], cases.LOW_DOSE["dose"]
    print(f"Cramer-Rao bounds, geometric set: {nav[0]}x{nav[1]} scan of {sig[0]}x{sig[1]} frames, "
          f"{dose:g} counts/px, Poisson (rotation deg / overfocus %), specimen known | unknown")
    head = "seed " + "".join(f"{part:>32}" for part in PARTS)
    print(head)
    print("-" * len(head))
    rows = []

    def cells(get) -> str:
        return "".join(f"{get(p, 'known', 0):>8.4f}/{get(p, 'known', 1):.4f} |"
                       f"{get(p, 'unknown', 0):>8.4f}/{get(p, 'unknown', 1):.4f}" for p in PARTS)

    for seed in seeds:
        b = bounds(seed)
        rows.append(b)
        print(f"{seed:4d} " + cells(lambda p, k, i: b[p][k][i]), flush=True)
    print("-" * len(head))
    print("RMS  " + cells(lambda p, k, i: float(np.sqrt(np.mean([b[p][k][i] ** 2 for b in rows])))))
    return 0


def main_multislice(names: list[str]) -> int:
    names = names or list(cases.MULTISLICE)
    unknown = [n for n in names if n not in cases.MULTISLICE]
    if unknown:
        print(f"bound.py: unknown case(s) {', '.join(unknown)}; the cases: "
              f"{', '.join(cases.MULTISLICE)}", file=sys.stderr)
        return 2
    print("Cramer-Rao bounds, multislice cases, disk95, the specimen the noise-free frames show "
          "(rotation deg / overfocus %), specimen known | unknown")
    head = f"{'case':<22}{'dose':>6}{'known':>18}{'unknown':>18}"
    print(head)
    print("-" * len(head))
    for name in names:
        for dose in (d for d in cases.MULTISLICE[name][2] if d is not None):
            b = multislice_bound(name, dose)
            print(f"{name:<22}{dose:>6g}" + "".join(
                f"{b[k][0]:>10.4f}/{b[k][1]:.4f}" for k in ("known", "unknown")), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
