"""The optimiser of the blur loss: a sampled start, bounded Nelder-Mead, a quadratic polish.

Pure functions of a loss callable; they know nothing of the data or the model.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import optimize

__all__ = ["minimise", "quadratic_polish", "uncertainty_from", "start_sample"]

#: Bases of the Halton sequence, one per dimension (the first primes).
_HALTON_BASES = (2, 3, 5, 7, 11, 13, 17, 19)


def start_sample(n: int, dims: int, *, seed: int = 0) -> np.ndarray:
    """``n`` points of a low-discrepancy sample of the unit cube, (n, dims) in [0, 1).

    The Halton sequence (radical inverses of 1..n in the bases :data:`_HALTON_BASES`)
    with one random shift per dimension, modulo 1 (seeded: the same points every
    call). Written here rather than taken from ``scipy.stats.qmc``: importing
    ``scipy.stats`` costs 0.4 s of every fitting process's start-up.
    """
    if dims > len(_HALTON_BASES):
        raise ValueError(f"start_sample supports up to {len(_HALTON_BASES)} dimensions, got {dims}")
    out = np.empty((n, dims))
    for d in range(dims):
        base = _HALTON_BASES[d]
        for i in range(n):
            k, f, value = i + 1, 1.0, 0.0
            while k:
                f /= base
                value += f * (k % base)
                k //= base
            out[i, d] = value
    shift = np.random.default_rng(seed).random(dims)
    return (out + shift) % 1.0


def minimise(loss, bounds: Sequence[tuple[float, float]], *, method: str = "sobol-nm",
             x0: np.ndarray | None = None, n_samples: int = 16, xatol: float = 3e-3,
             fatol: float = 1e-12, seed: int = 0) -> optimize.OptimizeResult:
    """Minimise ``loss`` within ``bounds`` (optimiser units, all of order 1).

    ``'sobol-nm'`` (default; the name kept from when the sample was Sobol's): evaluate a
    shifted Halton sample of ``n_samples`` points in the box (:func:`start_sample`) plus
    ``x0``, then a bounded Nelder-Mead from the best one with a simplex of 1/8 of the
    box. ``'shgo'``: SciPy's shgo with Nelder-Mead as the local method (the published
    method's choice; several times more evaluations). ``'nelder-mead'``: the local
    stage alone from ``x0``. ``xatol``/``fatol``: Nelder-Mead's stopping
    tolerances (both must hold; ``fatol=inf`` stops on ``xatol`` alone).
    """
    lo = np.array([b[0] for b in bounds], dtype=float)
    hi = np.array([b[1] for b in bounds], dtype=float)
    if x0 is None:
        x0 = (lo + hi) / 2
    local_opts = {"xatol": xatol, "fatol": fatol, "maxfev": 300}
    if method == "shgo":
        return optimize.shgo(loss, list(zip(lo, hi)), n=n_samples, iters=1, sampling_method="sobol",
                             minimizer_kwargs={"method": "Nelder-Mead", "options": local_opts},
                             options={"local_iter": 1})
    if method not in ("sobol-nm", "nelder-mead"):
        raise ValueError(f"unknown method {method!r}; choose 'sobol-nm', 'shgo' or 'nelder-mead'")
    best_x, best_f = np.asarray(x0, dtype=float), loss(x0)
    if method == "sobol-nm":
        pts = lo + (hi - lo) * start_sample(n_samples, len(lo), seed=seed)
        for x in pts:
            f = loss(x)
            if f < best_f:
                best_x, best_f = x, f
    step = (hi - lo) / 8
    simplex = np.vstack([best_x] + [best_x + step * e for e in np.eye(len(lo))])
    simplex = np.clip(simplex, lo, hi)
    return optimize.minimize(loss, best_x, method="Nelder-Mead", bounds=list(zip(lo, hi)),
                             options={**local_opts, "initial_simplex": simplex})


def quadratic_polish(loss, x: np.ndarray, steps: np.ndarray, bounds, *, rounds: int = 4) -> tuple[np.ndarray, float]:
    """Fit a quadratic to the loss on a 3^n stencil around ``x`` and jump to its vertex.

    The loss near the optimum is smooth but slightly rough at the scale of
    noise; a least-squares quadratic over a stencil of half-width ``steps``
    averages that roughness out. The vertex is accepted only where the model
    is convex and the vertex lies within two steps (otherwise the best stencil
    point is taken); repeated ``rounds`` times with the stencil re-centred.
    Returns the point, its loss and a dict with the last stencil's Hessian
    ``H`` (in stencil units) and ``roughness`` (RMS misfit of the quadratic).
    """
    lo = np.array([b[0] for b in bounds])
    hi = np.array([b[1] for b in bounds])
    n = len(x)
    offsets = np.array(np.meshgrid(*([[-1.0, 0.0, 1.0]] * n), indexing="ij")).reshape(n, -1).T
    best_x = np.asarray(x, dtype=float)
    best_f = float("inf")
    info: dict = {}
    for _ in range(rounds):
        pts = np.clip(best_x + offsets * steps, lo, hi)
        vals = np.array([loss(p) for p in pts])
        u = (pts - best_x) / steps
        cols = [np.ones(len(u))] + [u[:, i] for i in range(n)]
        pairs = [(i, j) for i in range(n) for j in range(i, n)]
        cols += [u[:, i] * u[:, j] for i, j in pairs]
        coef, *_ = np.linalg.lstsq(np.stack(cols, axis=1), vals, rcond=None)
        g = coef[1:1 + n]
        H = np.zeros((n, n))
        for c, (i, j) in zip(coef[1 + n:], pairs):
            H[i, j] += c if i != j else 2 * c
            H[j, i] = H[i, j]
        i_min = int(np.argmin(vals))
        cand_x, cand_f = pts[i_min], float(vals[i_min])
        if np.all(np.linalg.eigvalsh(H) > 0):
            du = -np.linalg.solve(H, g)
            if np.all(np.abs(du) <= 2.0):
                vx = np.clip(best_x + du * steps, lo, hi)
                vf = loss(vx)
                if vf <= cand_f + 0.05 * (vals.max() - vals.min()):
                    cand_x, cand_f = vx, vf
        resid = vals - np.stack(cols, axis=1) @ coef
        info = {"H": H, "roughness": float(np.sqrt(np.mean(resid ** 2))), "steps": steps}
        moved = np.abs(cand_x - best_x) / steps
        best_x, best_f = cand_x, cand_f
        if np.all(moved < 0.34):
            break
    return best_x, best_f, info


def uncertainty_from(info: dict) -> np.ndarray:
    """Half-width, per parameter, over which the loss rises by its roughness.

    ``step * sqrt(2 roughness / H_ii)`` from :func:`quadratic_polish`'s last
    stencil: within it the loss cannot tell points apart. A deliberately
    simple estimate (no correlations); NaN where the model is not convex.
    """
    H = info.get("H")
    if H is None:
        return np.full(0, np.nan)
    d = np.diag(H)
    rough = max(info["roughness"], 1e-12 * float(np.abs(d).max() or 1.0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(d > 0, info["steps"] * np.sqrt(2 * rough / d), np.nan)

