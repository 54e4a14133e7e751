"""Wire a complete simulated instrument: twin, scan generator, optics and detector."""
from __future__ import annotations

import os
from typing import Any, NamedTuple

from .merlin import MerlinDetector
from .optics import MicroscopeOptics
from .scan import ScanGenerator
from .sim import SimBackend, SimulatedMicroscope

__all__ = ["SimInstrument", "make_sim_instrument"]


class SimInstrument(NamedTuple):
    """The devices of a simulated instrument and the twin they share."""

    microscope: SimulatedMicroscope
    scan: ScanGenerator
    optics: MicroscopeOptics
    detector: MerlinDetector


def make_sim_instrument(write_dir: str | os.PathLike, *,
                        microscope: SimulatedMicroscope | None = None,
                        names: tuple[str, str, str] = ("scan", "optics", "merlin"),
                        **microscope_kw: Any) -> SimInstrument:
    """Build a :class:`SimulatedMicroscope` (unless given) and its three devices.

    Parameters
    ----------
    write_dir : path
        Where the detector writes its HDF5 files.
    microscope : SimulatedMicroscope, optional
        An existing twin; otherwise one is built from ``microscope_kw``
        (``truth``, ``sig_shape``, ``seed``, ``dose``, ``clock``, ``sleep``...).
    names : (str, str, str)
        Device names of the scan generator, optics and detector.

    Returns
    -------
    SimInstrument
        ``(microscope, scan, optics, detector)``, the scan generator and optics
        attached to the twin.
    """
    if microscope is None:
        microscope = SimulatedMicroscope(**microscope_kw)
    elif microscope_kw:
        raise ValueError(f"give a microscope or its arguments, not both: {sorted(microscope_kw)}")
    scan = ScanGenerator(name=names[0])
    optics = MicroscopeOptics(name=names[1])
    microscope.attach(scan=scan, optics=optics)
    detector = MerlinDetector(names[2], backend=SimBackend(microscope), write_dir=write_dir)
    return SimInstrument(microscope, scan, optics, detector)
