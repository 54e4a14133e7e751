"""Where projected frames land: the target (specimen) image grid.

The target image samples the specimen plane in units of scan pixels divided
by ``upsample``. Target pixel ``(0, 0)`` sits at specimen position
``origin`` (scan px). The grid covers every scan position plus the projected
radius of the used part of the bright-field disk.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from ..twin.model import beam_centres, specimen_matrix
from ..twin.params import OverfocusParams

#: Largest target image side accepted, pixels (guards against absurd geometry).
MAX_TARGET_SIDE = 8192


@dataclasses.dataclass(frozen=True)
class ProjectionGeometry:
    """Target grid and per-frame offsets for the splatting kernels.

    Attributes
    ----------
    params : OverfocusParams
    nav_shape, sig_shape : (int, int)
        Scan and detector shape.
    upsample : float
        Target pixels per scan pixel.
    disk_fraction : float
        Fraction of the bright-field disk radius that is used.
    taper : float
        Width of the linear fall-off of the disk weight, detector px.
    fixed_margin, fixed_r_out : float, optional
        Pin the target margin (scan px) and used disk radius (detector px)
        instead of deriving them from ``params``; see :meth:`with_params`.
    """

    params: OverfocusParams
    nav_shape: tuple[int, int]
    sig_shape: tuple[int, int]
    upsample: float = 1.0
    disk_fraction: float = 0.95
    taper: float = 2.0
    fixed_margin: float | None = None
    fixed_r_out: float | None = None

    def __post_init__(self) -> None:
        if len(self.nav_shape) != 2 or min(self.nav_shape) < 1:
            raise ValueError(f"nav_shape must be 2D and positive, got {self.nav_shape}")
        if len(self.sig_shape) != 2 or min(self.sig_shape) < 2:
            raise ValueError(f"sig_shape must be 2D with at least 2 px per side, got {self.sig_shape}")
        if not (self.upsample > 0 and math.isfinite(self.upsample)):
            raise ValueError(f"upsample must be > 0, got {self.upsample}")
        if not 0 < self.disk_fraction <= 2:
            raise ValueError(f"disk_fraction must be in (0, 2], got {self.disk_fraction}")
        H, W = self.shape
        if H > MAX_TARGET_SIDE or W > MAX_TARGET_SIDE:
            raise ValueError(
                f"target image would be {H}x{W} px (limit {MAX_TARGET_SIDE}): check overfocus, "
                "pixel sizes and semiconv")

    @property
    def r_out(self) -> float:
        """Outer radius of the used disk, detector px (capped at the detector diagonal)."""
        if self.fixed_r_out is not None:
            return self.fixed_r_out
        diag = math.hypot(*self.sig_shape)
        return min(self.disk_fraction * self.params.disk_radius_px, diag)

    @property
    def r_in(self) -> float:
        """Radius inside which detector pixels have full weight, detector px."""
        return max(self.r_out - self.taper, 0.0)

    @property
    def margin(self) -> float:
        """Projected radius of the used disk in the specimen plane, scan px."""
        if self.fixed_margin is not None:
            return self.fixed_margin
        return abs(self.params.magnification_ratio) * self.r_out + 1.0

    @property
    def origin(self) -> np.ndarray:
        """Specimen position (scan px) of target pixel (0, 0)."""
        m = self.margin
        return np.array([-m, -m])

    @property
    def shape(self) -> tuple[int, int]:
        m = self.margin
        ny, nx = self.nav_shape
        return (int(math.ceil((ny - 1 + 2 * m) * self.upsample)) + 2,
                int(math.ceil((nx - 1 + 2 * m) * self.upsample)) + 2)

    @property
    def A(self) -> np.ndarray:
        """Target px per detector px, (2, 2)."""
        return specimen_matrix(self.params) * self.upsample

    def with_params(self, params: OverfocusParams) -> "ProjectionGeometry":
        """Same target grid and disk radii, new geometry parameters (for fitting:
        a grid that changes with the trial parameters would make the loss jump)."""
        return dataclasses.replace(self, params=params, fixed_margin=self.margin,
                                   fixed_r_out=self.r_out)

    def centres(self, scan_yx: np.ndarray) -> np.ndarray:
        """Beam centre on the detector for scan positions (n, 2), detector px."""
        return beam_centres(self.params, scan_yx, self.nav_shape)

    def offsets(self, scan_yx: np.ndarray, centres: np.ndarray | None = None) -> np.ndarray:
        """Per-frame offsets: a detector px ``p`` lands at target px ``A @ p + offset``."""
        scan_yx = np.asarray(scan_yx, dtype=float).reshape(-1, 2)
        if centres is None:
            centres = self.centres(scan_yx)
        Ak = specimen_matrix(self.params)
        return (scan_yx - centres @ Ak.T - self.origin) * self.upsample

    def specimen_to_target(self, spec_yx: np.ndarray) -> np.ndarray:
        """Target pixel coordinates of specimen positions (scan px)."""
        return (np.asarray(spec_yx, dtype=float) - self.origin) * self.upsample


def nav_coordinates(flat_indices: np.ndarray, nav_shape: tuple[int, int]) -> np.ndarray:
    """(n, 2) float scan positions (y, x) of flat scan indices."""
    iy, ix = np.unravel_index(np.asarray(flat_indices, dtype=np.int64), nav_shape)
    return np.stack([iy, ix], axis=-1).astype(float)
