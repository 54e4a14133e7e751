"""The specimens: ASE atoms (or a projected potential) and abTEM potentials."""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from .setup import SPECIMENS, Setup, abtem_configured

@dataclasses.dataclass
class Specimen:
    potential: Any           # abTEM potential (built lazily by the caller)
    z_ref: float             # Angstrom below the entrance surface
    thickness: float         # Angstrom (for the ambiguity of the reference plane)
    description: str


def _z_weighted_ref(atoms, slice_thickness: float) -> float:
    z = atoms.positions[:, 2]
    entrance = np.floor(z / slice_thickness) * slice_thickness
    w = atoms.numbers.astype(float)
    return float((entrance * w).sum() / w.sum())


def _carbon_film(rng, W: float, z0: float, t: float, density: float = 2.0):
    """Amorphous-like carbon: a jittered cubic lattice (periodic in x, y), g/cm^3."""
    import ase
    n_per_A3 = density / 12.011 * 6.02214076e23 * 1e-24
    a = n_per_A3 ** (-1 / 3)
    nxy = max(1, int(round(W / a)))
    nz = max(1, int(round(t / a)))
    ax, az = W / nxy, t / nz
    g = np.stack(np.meshgrid(np.arange(nxy), np.arange(nxy), np.arange(nz), indexing="ij"),
                 -1).reshape(-1, 3).astype(float)
    pos = (g + 0.5) * [ax, ax, az] + rng.normal(0, 0.3 * a, g.shape)
    pos[:, :2] %= W
    pos[:, 2] = np.clip(pos[:, 2], 0.0, t - 1e-3) + z0
    return ase.Atoms(numbers=np.full(len(pos), 6), positions=pos)


def _random_rotation(rng) -> np.ndarray:
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def _au_ball(radius: float, rot: np.ndarray | None):
    from ase.build import bulk
    n = int(math.ceil(2 * radius / 4.078)) + 2
    b = bulk("Au", "fcc", a=4.078, cubic=True).repeat((n, n, n))
    p = b.positions - b.positions.mean(axis=0)
    p = p[np.linalg.norm(p, axis=1) <= radius]
    if rot is not None:
        p = p @ rot.T
    return p


def _field_extent(setup: Setup) -> float:
    """Half-width (Angstrom) of the region the probes illuminate, around the cell centre."""
    ny, nx = setup.nav_shape
    scan_half = 0.5 * math.hypot(ny, nx) * setup.scan_pixel_size * 1e10
    probe_r = abs(setup.overfocus) * setup.semiconv * 1e10
    return scan_half + probe_r


def build_specimen(setup: Setup) -> Specimen:
    abtem = abtem_configured()
    import ase
    opts = dict(setup.specimen_options)
    rng = np.random.default_rng(setup.seed)
    W = setup.cell
    N = setup.gpts
    if setup.specimen == "vacuum":
        pot = abtem.PotentialArray(np.zeros((1, N, N), np.float32), slice_thickness=1.0,
                                   extent=W)
        return Specimen(pot, 0.0, 0.0, "vacuum")
    if setup.specimen == "carbon_au":
        t = float(opts.get("film_thickness", 20.0))
        dz = 2.0
        z0 = 1.0
        film = _carbon_film(rng, W, z0, t)
        zmid = z0 + t / 2
        reach = _field_extent(setup)
        n_cl = int(opts.get("clusters", 6))
        keep = np.ones(len(film), bool)
        au = []
        for _ in range(n_cl):
            r = rng.uniform(4.0, 7.0)
            # within the illuminated region, uniformly
            while True:
                c = rng.uniform(-reach, reach, 2)
                if np.hypot(*c) < 0.85 * reach:
                    break
            c = np.array([W / 2 + c[0], W / 2 + c[1], zmid])
            p = _au_ball(r, _random_rotation(rng)) + c
            au.append(p)
            d = film.positions - c
            d[:, :2] = (d[:, :2] + W / 2) % W - W / 2
            keep &= np.linalg.norm(d, axis=1) > r + 1.5
        film = film[keep]
        aup = np.concatenate(au) if au else np.zeros((0, 3))
        aup[:, :2] %= W
        atoms = film + ase.Atoms(numbers=np.full(len(aup), 79), positions=aup)
        atoms.cell = [W, W, z0 + t + 1.0]
        atoms.pbc = True
        pot = abtem.Potential(atoms, gpts=N, slice_thickness=dz, projection="infinite",
                              parametrization="lobato")
        return Specimen(pot, _z_weighted_ref(atoms, dz), t,
                        f"amorphous carbon {t:.0f} A, 2.0 g/cm3, {n_cl} Au clusters r 4-7 A, "
                        f"{len(atoms)} atoms")
    if setup.specimen == "au_crystal":
        from ase.cluster import FaceCenteredCubic
        layers = opts.get("layers", (6, 7, 6))
        cl = FaceCenteredCubic("Au", [(1, 0, 0), (1, 1, 0), (1, 1, 1)], list(layers),
                               latticeconstant=4.078)
        p = cl.positions - cl.positions.mean(axis=0)
        a2 = 4.078 / 2
        # atom planes at mid-slice: slice thickness a/2, planes at (j + 1/2) a/2
        zc = p[:, 2] - p[:, 2].min()
        t_film = float(opts.get("film_thickness", 10.0))
        z_au0 = 1.0 + t_film + a2 / 2
        p[:, 2] = zc + z_au0
        p[:, :2] += W / 2
        film = _carbon_film(rng, W, 1.0, t_film)
        atoms = film + ase.Atoms(numbers=np.full(len(p), 79), positions=p)
        top = float(p[:, 2].max()) + 1.0
        n_sl = int(math.ceil(top / a2)) + 1
        atoms.cell = [W, W, n_sl * a2]
        atoms.pbc = True
        pot = abtem.Potential(atoms, gpts=N, slice_thickness=a2, projection="infinite",
                              parametrization="lobato")
        thick = float(atoms.positions[:, 2].max() - atoms.positions[:, 2].min())
        return Specimen(pot, _z_weighted_ref(atoms, a2), thick,
                        f"Au fcc nanocrystal [001], {len(p)} atoms, "
                        f"{zc.max() + a2:.1f} A thick, on {t_film:.0f} A carbon")
    if setup.specimen == "smooth_wpo":
        from abtem.core.energy import energy2sigma
        corr = float(opts.get("correlation", 5.0))       # Angstrom, Gaussian sigma
        phase_rms = float(opts.get("phase_rms", 0.15))   # rad
        noise = rng.standard_normal((N, N))
        k = np.fft.fftfreq(N, d=W / N)
        k2 = k[:, None] ** 2 + k[None, :] ** 2
        f = np.real(np.fft.ifft2(np.fft.fft2(noise) * np.exp(-2 * (math.pi * corr) ** 2 * k2)))
        f *= phase_rms / f.std()
        V = f / energy2sigma(setup.energy)   # projected potential, eV A
        pot = abtem.PotentialArray(V[None].astype(np.float32), slice_thickness=1.0, extent=W)
        return Specimen(pot, 0.0, 0.0,
                        f"smooth weak phase object: Gaussian random phase, sigma {corr} A, "
                        f"rms {phase_rms} rad, one slice")
    raise ValueError(f"unknown specimen {setup.specimen!r}; choose from {SPECIMENS}")


# -- the simulation -------------------------------------------------------------------------
