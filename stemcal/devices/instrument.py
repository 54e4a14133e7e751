"""Wire a complete simulated instrument: twin, scan generator, optics and detector."""
from __future__ import annotations

import os
from typing import Any, NamedTuple

from .arina import ARINA_PIXEL_SIZE, ARINA_SIG_SHAPE, ArinaDetector
from .merlin import MerlinDetector
from .optics import MicroscopeOptics
from .scan import ScanGenerator
from .sim import MicroscopeTruth, SimBackend, SimulatedMicroscope

__all__ = ["SimInstrument", "make_sim_instrument", "DETECTOR_KINDS"]

#: Detector kinds a simulated instrument can have, and their device classes.
DETECTOR_KINDS: dict[str, type[MerlinDetector]] = {"merlin": MerlinDetector,
                                                   "arina": ArinaDetector}


class SimInstrument(NamedTuple):
    """The devices of a simulated instrument and the twin they share."""

    microscope: SimulatedMicroscope
    scan: ScanGenerator
    optics: MicroscopeOptics
    detector: MerlinDetector


def make_sim_instrument(write_dir: str | os.PathLike, *,
                        microscope: SimulatedMicroscope | None = None,
                        names: tuple[str, str, str | None] = ("scan", "optics", None),
                        detector: str = "merlin", **microscope_kw: Any) -> SimInstrument:
    """Build a :class:`SimulatedMicroscope` (unless given) and its three devices.

    Parameters
    ----------
    write_dir : path
        Where the detector writes its HDF5 files.
    microscope : SimulatedMicroscope, optional
        An existing twin; otherwise one is built from ``microscope_kw``
        (``truth``, ``sig_shape``, ``seed``, ``dose``, ``clock``, ``sleep``...).
    names : (str, str, str or None)
        Device names of the scan generator, optics and detector (``None``:
        the detector kind, ``"merlin"`` or ``"arina"``).
    detector : {'merlin', 'arina'}
        Detector device class. For ``"arina"`` a twin built here gets ARINA's
        192 x 192 pixels and, unless ``truth`` is given, its 100 um pixels.

    Returns
    -------
    SimInstrument
        ``(microscope, scan, optics, detector)``, the scan generator and optics
        attached to the twin.
    """
    if detector not in DETECTOR_KINDS:
        raise ValueError(f"detector must be one of {sorted(DETECTOR_KINDS)}, got {detector!r}")
    if microscope is None:
        if detector == "arina":
            microscope_kw.setdefault("sig_shape", ARINA_SIG_SHAPE)
            microscope_kw.setdefault("truth", MicroscopeTruth(detector_pixel_size=ARINA_PIXEL_SIZE))
        microscope = SimulatedMicroscope(**microscope_kw)
    elif microscope_kw:
        raise ValueError(f"give a microscope or its arguments, not both: {sorted(microscope_kw)}")
    scan = ScanGenerator(name=names[0])
    optics = MicroscopeOptics(name=names[1])
    microscope.attach(scan=scan, optics=optics)
    device = DETECTOR_KINDS[detector](names[2] or detector, backend=SimBackend(microscope),
                                      write_dir=write_dir)
    return SimInstrument(microscope, scan, optics, device)
