"""The optimiser of the blur loss: a sampled start, bounded Nelder-Mead, a quadratic polish.

Pure functions of a loss callable; they know nothing of the data or the model.
The Nelder-Mead is written here (:func:`nelder_mead`) rather than taken from
``scipy.optimize``: importing that package costs about 0.16 s of every fitting
process's start-up (its linear-programming and global optimisers load with it),
for one routine of 60 lines; SciPy is imported only for ``method="shgo"``.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

__all__ = ["Minimum", "minimise", "nelder_mead", "quadratic_polish", "uncertainty_from",
           "start_sample"]


@dataclasses.dataclass
class Minimum:
    """What a minimisation found: the point ``x``, its loss ``fun``, whether it stopped on
    its tolerances (``success``) and why it stopped (``message``); ``nfev`` loss
    evaluations (0 where nothing was evaluated)."""

    x: np.ndarray
    fun: float
    success: bool
    message: str
    nfev: int = 0


#: Nelder-Mead's coefficients: reflection, expansion, contraction, shrink (the standard ones).
_REFLECT, _EXPAND, _CONTRACT, _SHRINK = 1.0, 2.0, 0.5, 0.5


def nelder_mead(loss: Callable[[np.ndarray], float], simplex: np.ndarray,
                lo: np.ndarray, hi: np.ndarray, *, xatol: float = 1e-4, fatol: float = 1e-4,
                maxfev: int = 300) -> Minimum:
    """The Nelder-Mead simplex method within the box ``[lo, hi]``.

    ``simplex`` (n + 1, n): the starting vertices. Every trial point is clipped to the
    box. Each step reflects the worst vertex through the centroid of the others;
    expands where the reflection is the best point yet; contracts (outside the simplex
    where the reflection beats the worst vertex, inside otherwise) where it would be
    the worst but one; shrinks towards the best vertex where the contraction fails too.
    Stops when every vertex lies within ``xatol`` of the best one (each coordinate) and
    their losses within ``fatol`` of its loss (``fatol=inf``: on ``xatol`` alone), or
    after ``maxfev`` evaluations (``success`` False).
    """
    lo = np.asarray(lo, dtype=float)
    hi = np.asarray(hi, dtype=float)
    sim = np.clip(np.array(simplex, dtype=float), lo, hi)
    n = sim.shape[1]
    fsim = np.array([float(loss(v)) for v in sim])
    nfev = len(sim)

    def at(x: np.ndarray) -> tuple[np.ndarray, float]:
        nonlocal nfev
        x = np.clip(x, lo, hi)
        nfev += 1
        return x, float(loss(x))

    order = np.argsort(fsim, kind="stable")
    sim, fsim = sim[order], fsim[order]
    message, success = "", False
    while True:
        if (np.max(np.abs(sim[1:] - sim[0])) <= xatol
                and np.max(np.abs(fsim[0] - fsim[1:])) <= fatol):
            message, success = "converged: the simplex is within the tolerances", True
            break
        if nfev >= maxfev:
            message = f"stopped after {nfev} evaluations without converging"
            break
        centroid = sim[:-1].sum(axis=0) / n
        worst = sim[-1]
        # the trial points as affine combinations of the centroid and the worst vertex
        xr, fr = at((1 + _REFLECT) * centroid - _REFLECT * worst)
        shrink = False
        if fr < fsim[0]:
            xe, fe = at((1 + _REFLECT * _EXPAND) * centroid - _REFLECT * _EXPAND * worst)
            sim[-1], fsim[-1] = (xe, fe) if fe < fr else (xr, fr)
        elif fr < fsim[-2]:
            sim[-1], fsim[-1] = xr, fr
        elif fr < fsim[-1]:
            xc, fc = at((1 + _CONTRACT * _REFLECT) * centroid - _CONTRACT * _REFLECT * worst)
            if fc <= fr:
                sim[-1], fsim[-1] = xc, fc
            else:
                shrink = True
        else:
            xc, fc = at((1 - _CONTRACT) * centroid + _CONTRACT * worst)
            if fc < fsim[-1]:
                sim[-1], fsim[-1] = xc, fc
            else:
                shrink = True
        if shrink:
            for j in range(1, n + 1):
                sim[j], fsim[j] = at(sim[0] + _SHRINK * (sim[j] - sim[0]))
        order = np.argsort(fsim, kind="stable")
        sim, fsim = sim[order], fsim[order]
    return Minimum(x=sim[0].copy(), fun=float(fsim[0]), success=success, message=message,
                   nfev=nfev)

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
             fatol: float = 1e-12, seed: int = 0) -> Minimum:
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
    maxfev = 300
    if method == "shgo":
        from scipy import optimize   # only here: see the module docstring

        res = optimize.shgo(loss, list(zip(lo, hi)), n=n_samples, iters=1,
                            sampling_method="sobol",
                            minimizer_kwargs={"method": "Nelder-Mead",
                                              "options": {"xatol": xatol, "fatol": fatol,
                                                          "maxfev": maxfev}},
                            options={"local_iter": 1})
        return Minimum(x=np.asarray(res.x, dtype=float), fun=float(res.fun),
                       success=bool(res.success), message=str(res.message),
                       nfev=int(getattr(res, "nfev", 0)))
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
    return nelder_mead(loss, simplex, lo, hi, xatol=xatol, fatol=fatol, maxfev=maxfev)


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

