"""Parts of the bright-field disk, all projected at once for one trial geometry.

The parts are rings between nested disks (radii :data:`RADII`, fractions of
the disk radius): shifted sums and coverages are linear in the disk weight, so
a ring is the difference of two disks' projections. One kernel
(:func:`~stemcal.processing.ring_kernel.splat_rings`) projects every frame
pixel once into the ring(s) it belongs to: the cost of the outer disk alone
(the nested projections read the inner pixels up to three times; on a 64x64
scan of 128x128 frames, 3 counts/px, 2 shared cores: 0.17 s against 0.28 s per
trial at 2 target px per scan px, 0.13 s against 0.22 s at 1.25). For every part the
cross-contrast of each pair of the interleaved groups of frames is
kept (:func:`~stemcal.fit.metrics.pair_contrasts`; four groups): the loss of a part is
minus their mean, and leaving one group out gives the jackknife replicas of
any estimate made from it, at no extra projection.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

from ..twin.params import OverfocusParams
from .cache import ReducedCache
from ..processing.ring_kernel import splat_rings
from .loss import BlurLoss, loss_pool
from .metrics import pair_contrasts

__all__ = ["RADII", "PARTS", "RingLoss", "part_losses", "jackknife_sigma"]

#: Radii of the nested disks, fractions of the disk radius.
RADII = (0.45, 0.7, 0.95)
#: The parts: name -> (inner, outer) radius, fractions of the disk radius.
PARTS = {"inner": (0.0, 0.45), "middle": (0.45, 0.7), "rim": (0.7, 0.95),
         "disk70": (0.0, 0.7), "disk95": (0.0, 0.95)}


@dataclasses.dataclass
class RingLoss:
    """Pair contrasts of every part of the disk for trial geometries on one target grid.

    Attributes
    ----------
    cache : ReducedCache
    start : OverfocusParams
        Fixes the target grid (as in :class:`~stemcal.fit.loss.BlurLoss`).
    upsample : float
        Target px per scan px.
    groups : int
        Interleaved groups of frames (4: a 2x2 sub-lattice of the scan). With 9 (3x3)
        each group's coverage at 2 target px per scan px has holes whose pattern turns
        with the geometry: the rotation came out 0.06 deg off on noise-free multislice
        data (4 groups: 0.006 deg).
    """

    cache: ReducedCache
    start: OverfocusParams
    upsample: float = 2.0
    groups: int = 4
    nfev: int = 0

    def __post_init__(self) -> None:
        self.disks = [BlurLoss(self.cache, self.start, upsample=self.upsample, groups=self.groups,
                               disk_fraction=r) for r in RADII]
        self._buffers: tuple[np.ndarray, np.ndarray] | None = None   # project_sectors' reuse

    def loss_of(self, part: str) -> BlurLoss:
        """A :class:`BlurLoss` of a whole disk part (``disk70``, ``disk95``)."""
        return self.disks[RADII.index(PARTS[part][1])]

    def project(self, params: OverfocusParams, grid_shift: float = 0.0):
        """Shifted sums and coverages of the rings between :data:`RADII`, each
        (rings, groups, H, W), all rings in one sweep over the frames
        (:func:`~stemcal.processing.ring_kernel.splat_rings`; the same as the
        differences of the nested disks' projections, :meth:`project_by_disks`)."""
        S, C = self._sweep(params, grid_shift, 1)
        return S.transpose(1, 0, 2, 3), C.transpose(1, 0, 2, 3)

    def project_sectors(self, params: OverfocusParams, grid_shift: float = 0.0, *,
                        reuse: bool = False):
        """Shifted sums and coverages of each ring split into the octants of the angle
        of a pixel's offset from its frame's beam centre, each (groups, rings, 8, H, W);
        one sweep over the frames (:func:`~stemcal.processing.ring_kernel.splat_rings`
        with ``sectors=8``). Summed over the octants: :meth:`project`'s.

        With ``reuse`` the two arrays are this loss's own, zeroed and filled again at
        every such call (the caller must be done with the last ones): at 2 target px
        per scan px they hold 34 MB each on a 64x64 scan, and memory that large is
        mapped fresh at every allocation (glibc's malloc), its pages faulted in anew
        (0.1 s a projection on this project's VM, half of it before the sweep starts).
        """
        S, C = self._sweep(params, grid_shift, 8, reuse=reuse)
        shape = (self.groups, len(RADII), 8) + S.shape[2:]
        return S.reshape(shape), C.reshape(shape)

    def _sweep(self, params: OverfocusParams, grid_shift: float, sectors: int, *,
               reuse: bool = False):
        """(groups, rings * sectors, H, W) shifted sums and coverages, one sweep per group
        on the loss's two threads (the kernel releases the GIL); in the loss's own
        buffers, zeroed, with ``reuse``."""
        outer = self.disks[-1]
        geo = outer._shifted(outer.geometry, grid_shift).with_params(params)
        A = np.ascontiguousarray(geo.A)
        r_out = np.array([d.geometry.r_out for d in self.disks])
        r_in = np.array([d.geometry.r_in for d in self.disks])
        shape = (self.groups, len(RADII) * sectors) + geo.shape
        if reuse:
            if self._buffers is None or self._buffers[0].shape != shape:
                self._buffers = (np.zeros(shape), np.zeros(shape))
            S, C = self._buffers
            S.fill(0.0)
            C.fill(0.0)
        else:
            S, C = np.zeros(shape), np.zeros(shape)
        c = self.cache

        def group(k: int) -> None:
            rows, scan_yx = outer._groups[k]
            centres = geo.centres(scan_yx)
            splat_rings(c.frames, rows, c.pix_scale, c.pix_offset, centres,
                        geo.offsets(scan_yx, centres), A, r_in, r_out, S[k], C[k], sectors)

        list(loss_pool().map(group, range(self.groups)))
        return S, C

    def project_by_disks(self, params: OverfocusParams, grid_shift: float = 0.0):
        """:meth:`project` as differences of the nested disks' projections (three passes
        over the inner pixels; the reference the one-sweep kernel is tested against)."""
        disks = [d.project(params, grid_shift) for d in self.disks]
        S = np.stack([disks[0][0]] + [b[0] - a[0] for a, b in zip(disks, disks[1:])])
        C = np.stack([disks[0][1]] + [b[1] - a[1] for a, b in zip(disks, disks[1:])])
        empty = C <= 1e-9 * float(C.max())   # rounding left where only an inner disk projected
        S[empty] = 0.0
        C[empty] = 0.0
        return S, C

    def pairs(self, params: OverfocusParams, grid_shift: float = 0.0) -> dict[str, np.ndarray]:
        """Part name -> (groups, groups) pair contrasts at ``params``."""
        self.nfev += 1
        S, C = self.project(params, grid_shift)
        parts = {"inner": (S[0], C[0]), "middle": (S[1], C[1]), "rim": (S[2], C[2]),
                 "disk70": (S[0] + S[1], C[0] + C[1]), "disk95": (S.sum(axis=0), C.sum(axis=0))}
        return {name: pair_contrasts(s, c) for name, (s, c) in parts.items()}


def part_losses(pairs: np.ndarray, leave_out: Sequence[int | None] = (None,)) -> np.ndarray:
    """Minus the mean pair contrast, with all groups (``None``) or one group left out.

    ``pairs`` is (K, K) (:func:`~stemcal.fit.metrics.pair_contrasts`); returns one loss
    per entry of ``leave_out``.
    """
    K = len(pairs)
    iu = np.triu_indices(K, 1)
    out = []
    for g in leave_out:
        keep = np.ones(len(iu[0]), dtype=bool) if g is None else (iu[0] != g) & (iu[1] != g)
        vals = pairs[iu][keep]
        vals = vals[np.isfinite(vals)]
        out.append(-float(vals.mean()) if vals.size else np.nan)
    return np.asarray(out)


def jackknife_sigma(replicas: np.ndarray) -> float:
    """Jackknife 1-sigma of an estimate from its leave-one-group-out ``replicas`` (their
    finite ones; NaN where fewer than two are)."""
    r = np.asarray(replicas, dtype=float)
    r = r[np.isfinite(r)]
    if len(r) < 2:
        return math.nan
    return math.sqrt((len(r) - 1) / len(r) * float(((r - r.mean()) ** 2).sum()))
