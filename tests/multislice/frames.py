"""The multislice simulation: exit waves to detector frames, the truth, the cache."""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from .setup import GENERATOR_VERSION, Setup, abtem_configured, wavelength
from .specimens import build_specimen

log = logging.getLogger(__name__)

#: The on-disk cache of noise-free frames: ``$STEMCAL_WAVE_CACHE``, else none (tests pass
#: their session's directory).
DEFAULT_CACHE = os.environ.get("STEMCAL_WAVE_CACHE") or None

def _window(setup: Setup) -> tuple[int, int, float, float]:
    """(i0, j0, delta_y, delta_x): crop start (fine px) and the residual fine-px shift."""
    n, N = setup.oversample, setup.gpts
    out = []
    for c in (setup.cy, setup.cx):
        u = N // 2 - (n - 1) / 2 - n * c
        i0 = int(round(u))
        out.append((i0, i0 - u))
    (i0, dy), (j0, dx) = out
    sy, sx = setup.sig_shape
    if i0 < 0 or j0 < 0 or i0 + n * sy > N or j0 + n * sx > N:
        raise ValueError("the detector window does not fit the far field: the centre is too "
                         "far off or the detector too large for the sampling")
    return i0, j0, dy, dx


def _frames_from_exit_waves(ew: np.ndarray, setup: Setup, pos: np.ndarray,
                            shifts: np.ndarray) -> np.ndarray:
    """Exit waves (m, N, N) -> detector frames (m, sy, sx) float64.

    ``shifts`` (m, 2): far-field shift of each frame, fine px (centre fraction + descan).
    """
    from scipy import fft as sfft
    N, W, n = setup.gpts, setup.cell, setup.oversample
    i0, j0, _, _ = _window(setup)
    sy, sx = setup.sig_shape
    x = np.arange(N) * (W / N)
    out = np.empty((len(ew), sy, sx))
    for m in range(len(ew)):
        ry = (x - pos[m, 0] + W / 2) % W - W / 2
        rx = (x - pos[m, 1] + W / 2) % W - W / 2
        ramp = (np.exp(2j * np.pi * shifts[m, 0] * ry / W)[:, None]
                * np.exp(2j * np.pi * shifts[m, 1] * rx / W)[None, :])
        F = sfft.fft2(ew[m] * ramp, workers=2)
        I = sfft.fftshift(np.abs(F) ** 2)
        win = I[i0:i0 + n * sy, j0:j0 + n * sx]
        out[m] = win.reshape(sy, n, sx, n).sum(axis=(1, 3))
    return out


def _shifts(setup: Setup) -> np.ndarray:
    _, _, dy, dx = _window(setup)
    ny, nx = setup.nav_shape
    iy, ix = np.mgrid[0:ny, 0:nx]
    s = np.stack([iy.ravel(), ix.ravel()], -1).astype(float) - [ny // 2, nx // 2]
    D = np.array(setup.descan)
    return np.array([dy, dx]) + setup.oversample * (s @ D.T)


def simulate_noise_free(setup: Setup, *, chunk: int = 32, verbose: bool = False) -> tuple[np.ndarray, dict]:
    """Noise-free frames (ny, nx, sy, sx) float32 at ``setup.intensity`` per vacuum disk px."""
    abtem = abtem_configured()
    t0 = time.perf_counter()
    spec = build_specimen(setup)
    pot = spec.potential
    if not isinstance(pot, abtem.PotentialArray):
        pot = pot.build(lazy=False)
    t_pot = time.perf_counter() - t0
    W, N = setup.cell, setup.gpts
    defocus_A = -(setup.overfocus * 1e10 - spec.z_ref)
    probe = abtem.Probe(semiangle_cutoff=setup.semiconv * 1e3, energy=setup.energy,
                        extent=W, gpts=N, defocus=defocus_A)
    pos = setup.probe_positions()
    shifts = _shifts(setup)
    # vacuum reference for the intensity scale (no specimen, no descan)
    centre = np.array([[W / 2, W / 2]])
    vac_ew = probe.build(scan=abtem.CustomScan(centre), lazy=False).array.reshape(1, N, N)
    _, _, dy, dx = _window(setup)
    vac = _frames_from_exit_waves(np.asarray(vac_ew), setup, centre, np.array([[dy, dx]]))[0]
    yy, xx = np.mgrid[0:setup.sig_shape[0], 0:setup.sig_shape[1]]
    inner = np.hypot(yy - setup.cy, xx - setup.cx) < 0.8 * setup.disk_radius_px
    scale = setup.intensity / float(vac[inner].mean())
    out = np.empty((len(pos),) + setup.sig_shape, np.float32)
    for start in range(0, len(pos), chunk):
        sl = slice(start, min(start + chunk, len(pos)))
        ew = probe.multislice(pot, scan=abtem.CustomScan(pos[sl]), lazy=False).array
        ew = np.asarray(ew).reshape(-1, N, N)
        out[sl] = _frames_from_exit_waves(ew, setup, pos[sl], shifts[sl]) * scale
        log.log(logging.INFO if verbose else logging.DEBUG, "%d/%d frames, %.1f s", sl.stop,
                len(pos), time.perf_counter() - t0)
    info = {"description": spec.description, "z_ref_A": spec.z_ref,
            "specimen_thickness_A": spec.thickness, "abtem_defocus_A": defocus_A,
            "seconds_potential": t_pot, "seconds": time.perf_counter() - t0,
            "vacuum_frame_sum": float(vac.sum() * scale)}
    return out.reshape(setup.nav_shape + setup.sig_shape), info


def truth_of(setup: Setup, info: dict) -> dict:
    """The truth in stemcal's conventions (JSON-ready) plus the simulation's facts."""
    import abtem
    lam = wavelength(setup.energy)
    return {
        "scan_rotation": setup.scan_rotation, "flip_y": setup.flip_y,
        "overfocus": setup.overfocus, "cy": setup.cy, "cx": setup.cx,
        "scan_pixel_size": setup.scan_pixel_size, "camera_length": setup.camera_length,
        "detector_pixel_size": setup.detector_pixel_size, "semiconv": setup.semiconv,
        "descan": [list(r) for r in setup.descan],
        "nav_shape": list(setup.nav_shape), "sig_shape": list(setup.sig_shape),
        "disk_radius_px": setup.disk_radius_px, "magnification_ratio": setup.magnification_ratio,
        "overfocus_ambiguity": info["specimen_thickness_A"] / 2 * 1e-10,
        "specimen": setup.specimen, "specimen_options": dict(setup.specimen_options),
        "seed": setup.seed, "energy": setup.energy, "wavelength": lam,
        "detector_pixel_angle": setup.alpha, "oversample": setup.oversample,
        "cell_A": setup.cell, "gpts": setup.gpts, "sampling_A": setup.cell / setup.gpts,
        "antialias_cutoff_rad": (2 / 3) * lam * 1e10 / (2 * setup.cell / setup.gpts),
        "abtem_version": abtem.__version__, "generator_version": GENERATOR_VERSION,
        "key": setup.key(), **info,
    }


def generate(specimen: str = "carbon_au", *, dose: float | None = None, noise_seed: int = 1,
             cache_dir: str | Path | None = DEFAULT_CACHE, verbose: bool = False,
             dtype: str | None = None, **kwargs) -> tuple[np.ndarray, dict]:
    """Generate a dataset; returns ``(data (ny, nx, sy, sx), truth dict)``.

    ``kwargs`` are :class:`Setup` fields. Without ``dose``: noise-free float32 frames at
    ``intensity`` per vacuum disk pixel. With ``dose``: Poisson counts (uint16, or uint32
    where needed), mean ``dose`` per vacuum disk pixel, seeded by ``noise_seed``.
    """
    setup = Setup(specimen=specimen, **kwargs).resolved()
    key = setup.key()
    data = info = None
    if cache_dir is not None:
        cache = Path(cache_dir)
        f_npy, f_json = cache / f"{key}.npy", cache / f"{key}.json"
        if f_npy.exists() and f_json.exists():
            data = np.load(f_npy)
            info = json.loads(f_json.read_text())
            info["cached"] = True
    if data is None:
        data, info = simulate_noise_free(setup, verbose=verbose)
        if cache_dir is not None:
            cache.mkdir(parents=True, exist_ok=True)
            tmp = cache / f"{key}.tmp.npy"
            np.save(tmp, data)
            os.replace(tmp, f_npy)
            f_json.write_text(json.dumps(info))
        info["cached"] = False
    data = data * np.float32(setup.intensity / 100.0) if setup.intensity != 100.0 else data
    truth = truth_of(setup, info)
    truth["intensity"] = setup.intensity
    if dose is not None:
        rng = np.random.default_rng(noise_seed)
        lam_ = data.astype(np.float64) * (dose / setup.intensity)
        counts = rng.poisson(lam_)
        dt = dtype or ("uint16" if counts.max() < 65535 else "uint32")
        data = counts.astype(dt)
        truth.update(dose=dose, noise_seed=noise_seed)
    elif dtype is not None:
        data = data.astype(dtype)
    return data, truth


def write(stem: str | Path, data: np.ndarray, truth: dict) -> tuple[Path, Path]:
    """Write ``STEM.npy`` (4D) and ``STEM.json`` (truth); returns both paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    p_npy, p_json = stem.with_suffix(".npy"), stem.with_suffix(".json")
    np.save(p_npy, data)
    p_json.write_text(json.dumps(truth, indent=1))
    return p_npy, p_json


def stemcal_fit_args(truth: dict, *, overfocus_guess: float | None = None) -> list[str]:
    """Command-line options of ``stemcal fit`` for this truth (cold start)."""
    g = truth["overfocus"] * 1.2 if overfocus_guess is None else overfocus_guess
    return [f"--scan-pixel-size={truth['scan_pixel_size']!r}",
            f"--camera-length={truth['camera_length']!r}",
            f"--detector-pixel-size={truth['detector_pixel_size']!r}", f"--overfocus={g!r}"]
