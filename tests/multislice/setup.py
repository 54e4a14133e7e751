"""What fixes a dataset (:class:`Setup`), the abTEM configuration and the shared geometry."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math

import numpy as np

#: Bump when the generated frames change for the same parameters (invalidates the cache).
GENERATOR_VERSION = 3
SPECIMENS = ("carbon_au", "au_crystal", "smooth_wpo", "vacuum")


def abtem_configured():
    """abTEM, set to the CPU, FFTW on two threads, no progress bars, eager arrays."""
    import abtem
    abtem.config.set({"device": "cpu", "fft": "fftw", "fftw.threads": 2,
                      "fftw.planning_effort": "FFTW_ESTIMATE",
                      "diagnostics.progress_bar": False, "dask.lazy": False})
    return abtem


def wavelength(energy: float) -> float:
    """Relativistic electron wavelength, metres."""
    from abtem.core.energy import energy2wavelength
    return energy2wavelength(energy) * 1e-10


def rotation_matrix(deg: float) -> np.ndarray:
    """LiberTEM's ``rotate_deg``: ``[[cos, sin], [-sin, cos]]`` in (y, x)."""
    a = math.radians(deg)
    return np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])


def flip_matrix(flip: bool) -> np.ndarray:
    return np.diag([-1.0, 1.0]) if flip else np.eye(2)


@dataclasses.dataclass(frozen=True)
class Setup:
    """Everything that fixes a dataset (SI units, stemcal's conventions: see the package doc).

    ``specimen`` (one of :data:`SPECIMENS`), scan and detector shapes, the geometry
    stemcal fits (``scan_rotation`` deg, ``flip_y``, ``overfocus`` m, ``cy``/``cx``
    detector px at the scan middle, ``descan`` detector px per scan px), the optics
    (``semiconv`` rad, ``energy`` eV, sizes in m), the sampling (``oversample`` far-field
    px per detector px, ``max_sampling`` A), the specimen layout (``seed``,
    ``specimen_options``) and ``intensity`` (counts per vacuum disk px, noise-free).
    """

    specimen: str = "carbon_au"
    nav_shape: tuple[int, int] = (32, 32)
    sig_shape: tuple[int, int] = (64, 64)
    scan_rotation: float = 23.0
    flip_y: bool = False
    overfocus: float = 500e-9
    semiconv: float = 6e-3
    scan_pixel_size: float = 0.25e-9
    camera_length: float = 0.2
    detector_pixel_size: float = 55e-6
    cy: float | None = None      # default: sy / 2 + 1.3
    cx: float | None = None      # default: sx / 2 - 2.6
    descan: tuple[tuple[float, float], tuple[float, float]] = ((0.0, 0.0), (0.0, 0.0))
    energy: float = 200e3
    oversample: int = 2
    max_sampling: float | None = None   # Angstrom; default per specimen
    seed: int = 0                       # specimen layout
    specimen_options: tuple = ()        # extra (key, value) pairs for the specimen builder
    intensity: float = 100.0

    def resolved(self) -> "Setup":
        sy, sx = self.sig_shape
        ch = {}
        if self.cy is None:
            ch["cy"] = sy / 2 + 1.3
        if self.cx is None:
            ch["cx"] = sx / 2 - 2.6
        if self.max_sampling is None:
            ch["max_sampling"] = {"au_crystal": 0.5}.get(self.specimen, 0.8)
        ch["nav_shape"] = tuple(int(v) for v in self.nav_shape)
        ch["sig_shape"] = tuple(int(v) for v in self.sig_shape)
        ch["descan"] = tuple(tuple(float(v) for v in row) for row in self.descan)
        ch["specimen_options"] = tuple(sorted(dict(self.specimen_options).items()))
        return dataclasses.replace(self, **ch)

    # -- derived geometry --------------------------------------------------------------
    @property
    def alpha(self) -> float:
        """Detector pixel, rad: ``p_det / (L + d)`` (stemcal's model exactly)."""
        return self.detector_pixel_size / (self.camera_length + self.overfocus)

    @property
    def cell(self) -> float:
        """Cell width, Angstrom: ``oversample * lambda / alpha``."""
        return self.oversample * wavelength(self.energy) / self.alpha * 1e10

    @property
    def gpts(self) -> int:
        from scipy.fft import next_fast_len
        lam = wavelength(self.energy) * 1e10
        # antialias cutoff (2/3 of Nyquist) at least 1.3 semiconv, and max_sampling
        dx = min(self.max_sampling, (2 / 3) * lam / (2 * 1.3 * self.semiconv))
        n = max(int(math.ceil(self.cell / dx)), self.oversample * max(self.sig_shape) + 4)
        n = next_fast_len(n)
        while n % 2:
            n = next_fast_len(n + 1)
        return n  # even, FFT-friendly

    @property
    def disk_radius_px(self) -> float:
        return self.semiconv / self.alpha

    @property
    def magnification_ratio(self) -> float:
        """stemcal's k: specimen (scan) px per detector px."""
        return (self.overfocus * self.detector_pixel_size
                / ((self.overfocus + self.camera_length) * self.scan_pixel_size))

    def probe_positions(self) -> np.ndarray:
        """Lab (array) positions of the probe, Angstrom, (ny * nx, 2) in (y, x) = abTEM (x, y)."""
        ny, nx = self.nav_shape
        iy, ix = np.mgrid[0:ny, 0:nx]
        s = np.stack([iy.ravel(), ix.ravel()], -1).astype(float) - [ny // 2, nx // 2]
        T = flip_matrix(self.flip_y) @ rotation_matrix(self.scan_rotation).T  # (R F)^-1
        return self.cell / 2 + (s @ T.T) * self.scan_pixel_size * 1e10

    def key(self) -> str:
        d = dataclasses.asdict(self)
        d["version"] = GENERATOR_VERSION
        d.pop("intensity")
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=list).encode()).hexdigest()[:20]


# -- specimens ------------------------------------------------------------------------------
